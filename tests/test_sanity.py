"""Tests of the model-parameter randomisation sanity check (Adebayo et al. 2018)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditor.metrics.sanity import (
    SanityResult,
    find_head,
    randomisation_sanity_check,
    randomised_copy,
    spearman_per_image,
    ssim_global_per_image,
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 8, 3, padding=1)),
                ("bn1", nn.BatchNorm2d(8)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(8, 16, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(16, 5)),
            ]
        )
    )


def ref_compute(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str] = ("gradcam",),
    layer: str | nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Independent minimal Grad-CAM (Selvaraju et al. 2017) and Eigen-CAM (Muhammad and
    Yeasin 2020) used to exercise the check without the engine."""
    module = dict(model.named_modules())[layer] if isinstance(layer, str) else layer
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
        logits.gather(1, targets[:, None]).sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    a, g = store["a"].detach(), store["a"].grad
    out: dict[str, torch.Tensor] = {}
    for m in methods:
        if m == "gradcam":
            cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
        elif m == "eigencam":
            b, k, h, w = a.shape
            flat = a.permute(0, 2, 3, 1).reshape(b, h * w, k)
            _, _, vh = torch.linalg.svd(flat, full_matrices=False)
            cam = (flat @ vh[:, 0, :, None]).reshape(b, h, w).abs()
        else:
            raise ValueError(m)
        out[m] = F.interpolate(cam[:, None], size=images.shape[2:], mode="bilinear")[:, 0]
    return out


def test_spearman_hand_computed() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 2.0], [4.0, 4.0, 4.0]])
    b = torch.tensor([[10.0, 20.0, 30.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    rho = spearman_per_image(a, b)
    assert rho[0].item() == pytest.approx(1.0)
    assert rho[1].item() == pytest.approx(-1.0)
    # average ranks [0.5, 0.5, 2] vs [0, 1, 2]: cov 1.5, var 1.5 and 2 -> 1.5 / sqrt(3)
    assert rho[2].item() == pytest.approx(1.5 / math.sqrt(3.0), abs=1e-6)
    assert math.isnan(rho[3].item())  # constant map: undefined


def test_spearman_uses_absolute_values_and_nan() -> None:
    a = torch.tensor([[[-3.0, 1.0], [2.0, 0.0]], [[math.nan, 1.0], [2.0, 0.0]]])
    b = torch.tensor([[[3.0, 1.0], [2.0, 0.0]], [[3.0, 1.0], [2.0, 0.0]]])
    rho = spearman_per_image(a, b)
    assert rho[0].item() == pytest.approx(1.0)
    assert math.isnan(rho[1].item())
    with pytest.raises(ValueError, match="same shape"):
        spearman_per_image(a, b[:, :1])


def test_ssim_global() -> None:
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert ssim_global_per_image(a, 2 * a + 5).item() == pytest.approx(1.0)  # same after min-max
    low = ssim_global_per_image(a, a.flip(1)).item()
    # min-max maps [0,1/3,2/3,1] and reversed: mu 0.5 each, var 5/36 each, cov -5/36
    c1, c2 = 1e-4, 9e-4
    expected = ((0.5 + c1) * (-10 / 36 + c2)) / ((0.5 + c1) * (10 / 36 + c2))
    assert low == pytest.approx(expected, abs=1e-6)
    assert math.isnan(ssim_global_per_image(torch.ones(1, 4), a).item())


def test_find_head() -> None:
    assert find_head(small_cnn()) == ("fc",)
    mlp_head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 4), nn.Linear(4, 2))
    assert find_head(mlp_head) == ("2", "3")
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_randomised_copy_leaves_model_untouched() -> None:
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone, names = randomised_copy(model, seed=3)
    assert names == ("fc",)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(clone.fc.weight, model.fc.weight)
    assert torch.equal(clone.conv2.weight, model.conv2.weight)
    again, _ = randomised_copy(model, seed=3)
    assert torch.equal(again.fc.weight, clone.fc.weight)  # deterministic for a seed
    other, _ = randomised_copy(model, seed=4)
    assert not torch.equal(other.fc.weight, clone.fc.weight)
    cascade, names = randomised_copy(model, seed=3, randomise="cascade", cascade_blocks=2)
    assert names == ("fc", "bn1", "conv2")
    assert not torch.equal(cascade.conv2.weight, model.conv2.weight)
    assert torch.equal(cascade.conv1.weight, model.conv1.weight)
    with pytest.raises(ValueError, match="randomise"):
        randomised_copy(model, randomise="all")
    with pytest.raises(ValueError, match="head"):
        randomised_copy(model, head=["nope"])


def test_gradcam_passes_eigencam_fails_head_randomisation() -> None:
    model = small_cnn()
    model.train()
    torch.manual_seed(1)
    images = torch.randn(12, 3, 16, 16)
    targets = torch.arange(12) % 5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = randomisation_sanity_check(
        model, images, targets, ("gradcam", "eigencam"), "relu2", compute=ref_compute, seed=0
    )
    assert set(res) == {"gradcam", "eigencam"}
    eig, grad = res["eigencam"], res["gradcam"]
    assert isinstance(eig, SanityResult)
    # Eigen-CAM ignores the head: identical maps, it must be flagged
    assert eig.similarity == pytest.approx(1.0, abs=1e-5)
    assert eig.ssim_like == pytest.approx(1.0, abs=1e-5)
    assert not eig.trustworthy and eig.n == 12
    assert grad.similarity < 0.5 and grad.trustworthy
    assert grad.threshold == 0.5 and grad.randomised == ("fc",)
    # the user's model is unchanged, including its train flag
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    again = randomisation_sanity_check(
        model, images, targets, ("gradcam",), "relu2", compute=ref_compute, seed=0
    )
    assert again["gradcam"] == grad  # deterministic


def test_layer_as_module_is_mapped_to_the_copy() -> None:
    model = small_cnn()
    images = torch.randn(4, 3, 8, 8)
    targets = torch.zeros(4, dtype=torch.long)
    by_name = randomisation_sanity_check(
        model, images, targets, ["gradcam"], "relu2", compute=ref_compute
    )
    by_module = randomisation_sanity_check(
        model, images, targets, ["gradcam"], model.relu2, compute=ref_compute
    )
    assert by_name == by_module
    with pytest.raises(ValueError, match="layer"):
        randomisation_sanity_check(
            model, images, targets, ["gradcam"], nn.ReLU(), compute=ref_compute
        )


def test_threshold_and_undefined_maps() -> None:
    def constant(model, images, targets, methods, layer):  # noqa: ANN001
        return {m: torch.zeros(images.shape[0], 4, 4) for m in methods}

    model = small_cnn()
    res = randomisation_sanity_check(
        model,
        torch.randn(2, 3, 4, 4),
        torch.zeros(2, dtype=torch.long),
        ["x"],
        "relu2",
        compute=constant,
    )["x"]
    assert math.isnan(res.similarity) and res.n == 0 and not res.trustworthy
    assert res.ssim_like is None
    with pytest.raises(ValueError, match="threshold"):
        randomisation_sanity_check(
            model,
            torch.randn(2, 3, 4, 4),
            torch.zeros(2, dtype=torch.long),
            ["x"],
            "relu2",
            compute=constant,
            threshold=2.0,
        )
    with pytest.raises(ValueError, match="methods"):
        randomisation_sanity_check(
            model,
            torch.randn(2, 3, 4, 4),
            torch.zeros(2, dtype=torch.long),
            [],
            "relu2",
            compute=constant,
        )


def test_with_real_engine_if_available() -> None:
    cam = pytest.importorskip("auditor.cam")
    if not hasattr(cam, "compute_cams"):
        pytest.skip("auditor.cam.compute_cams not available yet")
    model = small_cnn()
    torch.manual_seed(1)
    images = torch.randn(8, 3, 16, 16)
    targets = torch.arange(8) % 5
    res = randomisation_sanity_check(model, images, targets, ("gradcam", "eigencam"), "relu2")
    assert not res["eigencam"].trustworthy
    assert res["gradcam"].similarity < res["eigencam"].similarity


# --------------------------------------------------------------------------------------------
# cascading randomisation down to the target layer's block (the auditor's default)


def test_target_block_on_common_architectures() -> None:
    from auditor.demo import build_model
    from auditor.metrics.sanity import target_block

    seq = small_cnn()
    assert target_block(seq, "conv2") == "conv2"
    assert target_block(seq, "relu2") == "conv2"  # no parameters: the module computing its input
    demo = build_model()
    assert target_block(demo, "features") == "features"  # the target is a top-level stack
    assert target_block(demo, "features.6") == "features.6"
    assert target_block(demo, "features.7") == "features.6"
    with pytest.raises(ValueError, match="not a submodule"):
        target_block(demo, "nope")
    with pytest.raises(ValueError, match="no module with parameters"):
        target_block(nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(3, 2)), "0")
    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18()
    assert target_block(resnet, "layer4") == "layer4"
    assert target_block(resnet, "layer4.1.conv2") == "layer4.1"

    class Wrapper(nn.Module):  # e.g. input normalisation around the network
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    # a wrapper is not the block: the network inside it is looked at
    assert target_block(Wrapper(resnet), "model.layer4.1.conv2") == "model.layer4.1"
    assert target_block(nn.DataParallel(resnet), "module.layer4") == "module.layer4"
    assert target_block(Wrapper(demo), "model.features.7") == "model.features.6"
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    assert target_block(vit, "encoder.layers.encoder_layer_1.ln_1") == (
        "encoder.layers.encoder_layer_1"
    )


def test_cascade_randomises_head_and_target_block() -> None:
    model = small_cnn()
    clone, names = randomised_copy(model, seed=3, randomise="cascade", head=("fc",), layer="relu2")
    assert names == ("fc", "conv2")
    assert not torch.equal(clone.conv2.weight, model.conv2.weight)
    assert not torch.equal(clone.fc.weight, model.fc.weight)
    assert torch.equal(clone.conv1.weight, model.conv1.weight)
    assert torch.equal(clone.bn1.weight, model.bn1.weight)
    # modules after the layer inside its block are re-drawn with the block, listed once
    pytest.importorskip("torchvision")
    from torchvision.models import resnet18

    from auditor.metrics.sanity import downstream_of

    resnet = resnet18(num_classes=3)
    head = downstream_of(resnet, "layer4.1.conv1", torch.randn(1, 3, 32, 32))
    assert "layer4.1.bn1" in head  # runs after the layer
    _, names = randomised_copy(resnet, randomise="cascade", head=head, layer="layer4.1.conv1")
    assert names == ("fc", "layer4.1")


def _sobel(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str],
    layer: str | nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """A hand-made 'edge detector' method: the Sobel gradient magnitude of the image. It does
    not read the model at all."""
    grey = images.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(grey, kx, padding=1)
    gy = F.conv2d(grey, kx.transpose(2, 3), padding=1)
    return {m: (gx**2 + gy**2).sqrt()[:, 0] for m in methods}


def _first_layer_energy(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str],
    layer: str | nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """A method that reads only what the cascade leaves trained: the channel-summed input
    gradient of the first block's activations (conv1, bn1, relu1), ignoring the target
    layer, the class and the head."""
    x = images.clone().requires_grad_(True)
    was = model.training
    model.eval()
    try:
        act = model.relu1(model.bn1(model.conv1(x)))
        (grad,) = torch.autograd.grad(act.sum(), x)
    finally:
        model.train(was)
    return {m: grad.abs().sum(1) for m in methods}


def test_cascade_still_fails_methods_that_ignore_the_weights() -> None:
    """The cascade is not a free pass: a map that does not depend on the re-drawn weights
    keeps a similarity of 1 and fails, while Grad-CAM at the same layer passes."""
    model = small_cnn()
    torch.manual_seed(2)
    images = torch.randn(10, 3, 16, 16)
    targets = torch.arange(10) % 5
    kw = {"seed": 0, "randomise": "cascade", "head": ("fc",)}
    edge = randomisation_sanity_check(
        model, images, targets, ("edge",), "relu2", compute=_sobel, **kw
    )["edge"]
    assert edge.similarity == pytest.approx(1.0, abs=1e-6) and not edge.trustworthy
    assert edge.randomised == ("fc", "conv2") and edge.randomise == "cascade"
    low = randomisation_sanity_check(
        model, images, targets, ("grad1",), "relu2", compute=_first_layer_energy, **kw
    )["grad1"]
    assert low.similarity == pytest.approx(1.0, abs=1e-6) and not low.trustworthy
    grad = randomisation_sanity_check(
        model, images, targets, ("gradcam",), "relu2", compute=ref_compute, **kw
    )["gradcam"]
    assert grad.trustworthy and grad.similarity < 0.5


def _demo_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the demo audit's evaluation set (``write_dataset``: seed
    1234, class-interleaved), normalised like its config."""
    from auditor.demo.shortcut import MEAN, STD, generate_arrays

    images, _, labels = generate_arrays(n // 4, 1234, "shortcut")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.from_numpy(labels)


def test_demo_fixed_model_passes_the_cascade_and_failed_head_only() -> None:
    """The case that made the cascade the default: the clean, well-trained demo model's
    Grad-CAM kept a similarity of 0.54 when only its head was randomised ('not interpretable',
    exit 1). With its target block re-drawn too the maps change (measured 0.10), and the
    edge detector still fails on the same images."""
    from auditor.cam import compute_cams
    from auditor.demo.shortcut import DemoNet, weights_path
    from auditor.metrics.sanity import downstream_of

    model = DemoNet()
    model.load_state_dict(torch.load(weights_path("fixed"), weights_only=True))
    model.eval()
    images, labels = _demo_batch()
    head = downstream_of(model, "features", images[:2])
    assert head == ("fc",)
    results = {
        mode: randomisation_sanity_check(
            model, images, labels, ("gradcam", "edge"), "features", seed=0, head=head,
            randomise=mode,
            compute=lambda m, x, t, methods, layer: {
                **compute_cams(m, x, t, methods=["gradcam"], layer=layer),
                **_sobel(m, x, t, ["edge"]),
            },
        )
        for mode in ("head", "cascade")
    }  # fmt: skip
    head_only, cascade = results["head"]["gradcam"], results["cascade"]["gradcam"]
    assert head_only.randomised == ("fc",) and not head_only.trustworthy
    assert head_only.similarity >= 0.5
    assert cascade.randomised == ("fc", "features") and cascade.trustworthy
    assert cascade.similarity < 0.3
    assert not results["cascade"]["edge"].trustworthy


def test_finding_says_what_was_randomised() -> None:
    """The sanity_check finding names the variant the stored result records (`randomise`,
    additive); results written before it (no key) were head-only."""
    import pyarrow as pa

    from auditor.analysis.aggregate import PrimaryColumns
    from auditor.analysis.findings import FindingRules, RuleContext
    from auditor.analysis.findings.sanity import sanity_check_rule
    from auditor.results import ClassResult
    from auditor.results import SanityResult as StoredSanity

    table = pa.table({
        "id": ["a"], "method": ["gradcam"], "label": [0], "pred": [0], "correct": [True],
        "cam_status": ["ok"], "status": ["ok"],
    })  # fmt: skip
    record = {"similarity": 0.6, "threshold": 0.5, "trustworthy": False, "n": 8,
              "randomised": ["fc", "features"], "randomise": "cascade"}  # fmt: skip
    old = {k: v for k, v in record.items() if k != "randomise"}
    ctx = RuleContext(
        classes={"a": ClassResult("a", index=0)}, primary="gradcam", methods=("gradcam", "cam"),
        samples=PrimaryColumns.of(table, "gradcam"), rules=FindingRules(), confidence=0.95,
        clusters={}, sanity={"gradcam": StoredSanity.from_json(record),
                             "cam": StoredSanity.from_json(old)},
    )  # fmt: skip
    got = {f.evidence.get("randomise", "head"): f for f in sanity_check_rule(ctx)}
    assert "the head and the target layer's block are randomised" in got["cascade"].title
    assert "image's structure" in got["cascade"].message
    assert got["cascade"].evidence["randomise"] == "cascade"  # kept through the codec
    assert "the classifier head is randomised" in got["head"].title
