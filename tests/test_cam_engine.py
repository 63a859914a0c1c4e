"""CAM engine: model state restored, degenerate inputs, targets, layers, fx tail, reshape."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from auditor.cam import (
    GRADIENT_METHODS,
    METHODS,
    STATUSES,
    CamEngine,
    compute_cams,
    find_target_layer,
    resolve_layer,
    swin_reshape,
    upsample_cams,
    vit_reshape,
)
from auditor.cam import methods as methods_module
from auditor.cam.tail import build_tail


class SmallNet(nn.Module):
    """conv-bn-relu x2 + GAP + linear (a GAP head, so every method applies)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 6, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class SkipNet(nn.Module):
    """The head also uses an earlier feature (skip connection): no fx tail possible."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.fc((self.block(s) + s).mean(dim=(2, 3)))


def _images(n: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _seeded(model_cls: type[nn.Module], **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return model_cls(**kw)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _snapshot(model: nn.Module) -> tuple[list[bool], list[bool], int]:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        _hook_count(model),
    )


def _prepare_state(model: nn.Module) -> None:
    model.train()
    model.features[1].eval()  # a mix of flags, to check each one is restored
    model.fc.weight.requires_grad_(False)


# ----------------------------------------------------------------------------- model state

# methods that run on this file's CNNs; ViT-only ones (check_model refuses a CNN: legrad) have
# their state tests in tests/test_cam_methods.py
def _applies_to_small_net(spec: methods_module.CamMethod) -> bool:
    """Whether the method's own model check (LeGrad: ViTs only) accepts ``SmallNet``."""
    if spec.check_model is None:
        return True
    try:
        spec.check_model(SmallNet())
    except ValueError:
        return False
    return True


CNN_METHODS = sorted(m for m, spec in METHODS.items() if _applies_to_small_net(spec))


@pytest.mark.parametrize("method", CNN_METHODS)
@pytest.mark.parametrize("grad_enabled", [True, False])
def test_model_state_restored_after_success(method: str, grad_enabled: bool) -> None:
    model = _seeded(SmallNet)
    _prepare_state(model)
    before = _snapshot(model)
    with torch.set_grad_enabled(grad_enabled):
        out = compute_cams(model, _images(), [0, 1, 2], methods=(method,), layer="features.4")
        assert torch.is_grad_enabled() is grad_enabled
    assert _snapshot(model) == before
    assert out[method].shape == (3, 8, 8)
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient computed


@pytest.mark.parametrize("method", CNN_METHODS)
def test_model_state_restored_when_method_raises(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = METHODS[method]

    def boom(ctx: methods_module.CamContext) -> torch.Tensor:
        spec.fn(ctx)  # runs the real computation (extra forwards included) then fails
        raise RuntimeError("boom")

    monkeypatch.setitem(
        methods_module._REGISTRY,
        method,
        dataclasses.replace(spec, fn=boom),  # own_pass, score, ... kept: the real work runs
    )
    model = _seeded(SmallNet)
    _prepare_state(model)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        compute_cams(model, _images(), [0, 1, 2], methods=(method,), layer="features.4")
    assert _snapshot(model) == before
    assert torch.is_grad_enabled()


class ExplodingHead(SmallNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.features(x)
        raise RuntimeError("head failed")  # after the hook switched grad mode on


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_model_state_restored_when_forward_raises_after_hook(grad_enabled: bool) -> None:
    model = _seeded(ExplodingHead)
    _prepare_state(model)
    before = _snapshot(model)
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(RuntimeError, match="head failed"):
            compute_cams(model, _images(), None, methods=GRADIENT_METHODS, layer="features.4")
        assert torch.is_grad_enabled() is grad_enabled
    assert _snapshot(model) == before


def test_engine_inside_inference_mode_still_works() -> None:
    model = _seeded(SmallNet).eval()
    with torch.inference_mode():
        images = _images()
        out = compute_cams(model, images, None, methods=("gradcam",), layer="features.4")
    assert out["gradcam"].shape == (3, 8, 8)
    assert torch.isfinite(out["gradcam"]).all()


@pytest.mark.parametrize("copy", [False, True])
def test_pre_target_part_builds_no_graph(copy: bool) -> None:
    model = _seeded(SmallNet).eval()
    seen: list[bool] = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    compute_cams(
        model, _images(), None, methods=("gradcam",), layer="features.4", capture_copy=copy
    )
    # the capture forward is the last one (a validation forward on a probe may precede it)
    assert seen[-2:] == [False, True] and (copy or seen == [False, True])


def test_run_outside_context_raises() -> None:
    engine = CamEngine(_seeded(SmallNet), "features.4")
    with pytest.raises(RuntimeError, match="with engine"):
        engine.run(_images())


# ----------------------------------------------------------------------------- degenerate cases


def test_nan_input_gives_zero_map_and_nonfinite_status() -> None:
    model = _seeded(SmallNet).eval()
    images = _images()
    images[1, 0, 2, 3] = float("nan")
    methods = (*GRADIENT_METHODS, "cam", "eigencam", "scorecam", "ablationcam")
    with CamEngine(model, "features.4", methods) as engine:
        batch = engine.run(images, torch.tensor([0, 1, 2]))
    for method in methods:
        cam = batch.cams[method]
        assert torch.isfinite(cam).all(), method
        assert float(cam[1].abs().sum()) == 0.0, method
        assert batch.status[method][1] == "nonfinite", method
        assert batch.status[method][0] != "nonfinite", method


def test_zero_gradient_status() -> None:
    model = _seeded(SmallNet).eval()
    with torch.no_grad():
        model.fc.weight[2].zero_()  # class 2 does not depend on the features
    with CamEngine(model, "features.4", (*GRADIENT_METHODS, "cam")) as engine:
        batch = engine.run(_images(), torch.tensor([2, 2, 0]))
    for method in GRADIENT_METHODS:
        if METHODS[method].score is not None:  # Finer-CAM: its score also reads other classes
            assert batch.status[method][:2] == ["ok", "ok"], method
            continue
        assert batch.status[method][:2] == ["zero_gradient", "zero_gradient"], method
        assert float(batch.cams[method][:2].abs().sum()) == 0.0
    assert batch.status["cam"][:2] == ["zero_map", "zero_map"]


def test_constant_activation_status_and_defined_map() -> None:
    model = _seeded(SmallNet).eval()
    images = torch.ones(2, 3, 8, 8)
    # layer features.0 on a constant image: constant inside, but padding breaks constancy at the
    # border; use a 1x1 conv model instead
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    torch.manual_seed(0)
    net = nn.Sequential(*net)
    methods = (*GRADIENT_METHODS, "cam", "eigencam", "scorecam", "ablationcam")
    with CamEngine(net, "1", methods) as engine:
        batch = engine.run(images, torch.tensor([0, 1]))
    for method in methods:
        cam = batch.cams[method]
        assert torch.isfinite(cam).all() and float(cam.min()) >= 0, method
        flat = cam.flatten(1)
        assert bool((flat.amax(1) == flat.amin(1)).all()), method  # constant map
        assert (
            batch.status[method] == ["constant_activation"] * 2
            or batch.status[method] == ["zero_gradient"] * 2
        ), (method, batch.status[method])
    del model


def test_zero_map_status() -> None:
    # GAP head with all-negative weights for class 0 and ReLU activations: CAM <= 0 everywhere
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        net[4].weight[0] = -1.0
    with CamEngine(net, "1", ("cam", "gradcam", "hirescam")) as engine:
        batch = engine.run(_images(2), torch.tensor([0, 0]))
    for method in ("cam", "gradcam", "hirescam"):
        assert batch.status[method] == ["zero_map", "zero_map"]
        assert float(batch.cams[method].abs().sum()) == 0.0


def test_statuses_are_documented() -> None:
    assert set(STATUSES) == {
        "ok",
        "zero_gradient",
        "constant_activation",
        "nonfinite",
        "zero_map",
        "method_failed",
    }


# ----------------------------------------------------------------------------- targets


def test_predicted_targets_and_same_forward_logits() -> None:
    model = _seeded(SmallNet).eval()
    images = _images()
    with CamEngine(model, "features.4", ("gradcam",)) as engine:
        batch = engine.run(images, "predicted")
        batch_none = engine.run(images)
    with torch.no_grad():
        expected_logits = model(images)
    torch.testing.assert_close(batch.logits, expected_logits)
    assert torch.equal(batch.targets, expected_logits.argmax(1))
    torch.testing.assert_close(batch.cams["gradcam"], batch_none.cams["gradcam"])
    assert not batch.logits.requires_grad


def test_multi_target_equals_separate_calls() -> None:
    model = _seeded(SmallNet).eval()
    images = _images()
    targets = torch.tensor([[0, 3], [1, 1], [2, 0]])
    methods = (*GRADIENT_METHODS, "cam", "scorecam", "ablationcam")
    with CamEngine(model, "features.4", methods) as engine:
        multi = engine.run(images, targets)
        singles = [engine.run(images, targets[:, t]) for t in range(2)]
    assert torch.equal(multi.targets, targets)
    for method in methods:
        assert multi.cams[method].shape == (3, 2, 4, 4)
        for t in range(2):
            torch.testing.assert_close(
                multi.cams[method][:, t], singles[t].cams[method], atol=1e-5, rtol=1e-4
            )
        assert len(multi.status[method]) == 6
    up = multi.upsampled((8, 8))
    assert up["gradcam"].shape == (3, 2, 8, 8)


def test_bad_targets_raise() -> None:
    model = _seeded(SmallNet).eval()
    with CamEngine(model, "features.4") as engine:
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            engine.run(_images(), torch.tensor([0, 1, 4]))
        with pytest.raises(ValueError, match="shape"):
            engine.run(_images(), torch.tensor([0, 1]))
        with pytest.raises(TypeError, match="integer"):
            engine.run(_images(), torch.tensor([0.0, 1.0, 2.0]))
        with pytest.raises(ValueError, match="predicted"):
            engine.run(_images(), "label")
        with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
            engine.run(torch.zeros(3, 8, 8))


def test_bad_arguments_raise() -> None:
    model = _seeded(SmallNet)
    with pytest.raises(ValueError, match="nope"):
        CamEngine(model, "features.4", ("nope",))
    with pytest.raises(ValueError, match="score_batch_size"):
        CamEngine(model, "features.4", score_batch_size=0)
    with pytest.raises(ValueError, match="autocast"):
        CamEngine(model, "features.4", autocast=torch.int8)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- layers


def test_find_target_layer_torchvision() -> None:
    assert find_target_layer(torchvision.models.resnet18(weights=None)) == "layer4"
    vgg = torchvision.models.vgg11(weights=None)
    assert find_target_layer(vgg, torch.zeros(1, 3, 64, 64)) == "features.19"


def test_find_target_layer_custom_and_restores_flags() -> None:
    model = _seeded(SmallNet)
    model.train()
    # the container returns the very tensor of its last kept child (the dropout is skipped)
    assert find_target_layer(model, torch.zeros(2, 3, 8, 8)) == "features"
    assert all(m.training for m in model.modules())
    assert _hook_count(model) == 0
    engine = CamEngine(model, None)
    assert engine.layer_names == ("features",)


def test_find_target_layer_without_spatial_layer() -> None:
    with pytest.raises(ValueError, match="layer="):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.zeros(1, 3, 2, 2))


def test_bad_layer_name_lists_candidates() -> None:
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match="layer4") as info:
        resolve_layer(model, "layer5")
    assert "'layer5'" in str(info.value)
    with pytest.raises(ValueError, match="layer4"):
        CamEngine(model, "Layer4")
    assert resolve_layer(model, "layer4.1.conv2") is model.layer4[1].conv2


def test_layer_not_on_forward_path_raises() -> None:
    model = _seeded(SmallNet)
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="did not run"):
        compute_cams(model, _images(), None, layer="unused")


def test_fused_layers_are_upsampled_and_summed() -> None:
    model = _seeded(SmallNet).eval()
    images = _images()
    targets = torch.tensor([0, 1, 2])
    methods = ("gradcam", "layercam", "ablationcam")
    with CamEngine(model, ["features.2", "features.4"], methods) as engine:
        fused = engine.run(images, targets)
    with CamEngine(model, "features.2", methods) as engine:
        low = engine.run(images, targets)
    with CamEngine(model, "features.4", methods) as engine:
        high = engine.run(images, targets)
    for method in methods:
        assert fused.cams[method].shape == (3, 8, 8)
        expected = low.cams[method] + upsample_cams(high.cams[method], (8, 8))
        torch.testing.assert_close(fused.cams[method], expected, atol=1e-5, rtol=1e-4)


def test_upsample_hand_values() -> None:
    # 1x2 -> 1x4, align_corners=False: source x = (i + 0.5) / 2 - 0.5 = -.25, .25, .75, 1.25
    out = upsample_cams(torch.tensor([[[0.0, 4.0]]]), (1, 4))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))
    with pytest.raises(ValueError, match="cams"):
        upsample_cams(torch.zeros(4, 4), (8, 8))


# ----------------------------------------------------------------------------- ablation tail


def test_ablation_tail_equals_fallback_smallnet() -> None:
    model = _seeded(SmallNet).eval()
    images = _images()
    with CamEngine(model, "features.4", ("ablationcam",), score_batch_size=5) as engine:
        with_tail = engine.run(images, torch.tensor([0, 1, 2]))
        assert engine.tail_reasons == {"features.4": ""}
        engine.use_tail = False
        fallback = engine.run(images, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(with_tail.cams["ablationcam"], fallback.cams["ablationcam"])
    assert float(with_tail.cams["ablationcam"].sum()) > 0


def test_ablation_tail_equals_fallback_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    images = _images(1, 48)  # layer4: 2x2; the fallback runs 512 full forwards
    with CamEngine(model, "layer4", ("ablationcam",), score_batch_size=256) as engine:
        with_tail = engine.run(images)
        assert engine.tail_reasons["layer4"] == ""
        engine.use_tail = False
        fallback = engine.run(images)
    torch.testing.assert_close(
        with_tail.cams["ablationcam"], fallback.cams["ablationcam"], atol=1e-4, rtol=1e-3
    )


def test_no_tail_with_skip_connection_falls_back() -> None:
    model = _seeded(SkipNet).eval()
    tail, reason = build_tail(model, "block")
    assert tail is None and "stem" in reason
    images = _images(2)
    with CamEngine(model, "block", ("ablationcam",)) as engine:
        batch = engine.run(images, torch.tensor([0, 1]))
    # reference: ablate each channel by hand with full forwards
    with torch.no_grad():
        s = model.stem(images)
        a = model.block(s)
        y = model.fc((a + s).mean(dim=(2, 3)))
        expected = []
        for b, c in enumerate([0, 1]):
            w = []
            for k in range(4):
                ab = a[b : b + 1].clone()
                ab[:, k] = 0
                yk = model.fc((ab + s[b : b + 1]).mean(dim=(2, 3)))[0, c]
                w.append((y[b, c] - yk) / y[b, c])
            expected.append(torch.relu(torch.einsum("k,khw->hw", torch.stack(w), a[b])))
    torch.testing.assert_close(
        batch.cams["ablationcam"], torch.stack(expected), atol=1e-5, rtol=1e-4
    )


# ----------------------------------------------------------------------------- tokens, autocast


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        num_classes=3,
    ).eval()
    with torch.no_grad():  # torchvision initialises the head to zero: logits would be constant
        model.heads.head.weight.normal_()
    return model


def test_vit_without_reshape_raises_helpful_error() -> None:
    with pytest.raises(ValueError, match="vit_reshape"):
        compute_cams(_tiny_vit(), _images(2, 16), None, layer="encoder.layers.encoder_layer_1.ln_1")


def test_vit_reshape_maps() -> None:
    model = _tiny_vit()
    methods = ("gradcam", "layercam", "scorecam", "ablationcam")
    layer = "encoder.layers.encoder_layer_1.ln_1"
    with CamEngine(model, layer, methods, reshape=vit_reshape(1)) as engine:
        batch = engine.run(_images(2, 16), torch.tensor([0, 2]))
        engine.use_tail = False
        fallback = engine.run(_images(2, 16), torch.tensor([0, 2]))
    for method in methods:
        assert batch.cams[method].shape == (2, 4, 4)
        assert float(batch.cams[method].sum()) > 0, method
    torch.testing.assert_close(
        batch.cams["ablationcam"], fallback.cams["ablationcam"], atol=1e-5, rtol=1e-4
    )


def test_vit_reshape_ablation_zeroes_one_feature_of_patch_tokens_only() -> None:
    model = _tiny_vit()
    engine = CamEngine(model, "encoder.layers.encoder_layer_1.ln_1", reshape=vit_reshape(1))
    raw = torch.randn(2, 17, 8)
    out = engine._ablate(raw, torch.tensor([3, 5]))
    expected = raw.clone()
    expected[0, 1:, 3] = 0
    expected[1, 1:, 5] = 0
    torch.testing.assert_close(out, expected)


def test_reshape_helpers() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    grid = vit_reshape(1)(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert float(grid[0, 1, 0, 1]) == float(tokens[0, 2, 1])  # token 1 + (0*2 + 1), feature 1
    with pytest.raises(ValueError, match="square"):
        vit_reshape(0)(tokens)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        vit_reshape(-1)
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(swin_reshape()(x), x.permute(0, 3, 1, 2))


def test_autocast_bfloat16_cpu_close_to_float32() -> None:
    model = _seeded(SmallNet).eval()
    images = _images()
    ref = compute_cams(
        model, images, [0, 1, 2], methods=("gradcam", "layercam"), layer="features.4"
    )
    low = compute_cams(
        model,
        images,
        [0, 1, 2],
        methods=("gradcam", "layercam"),
        layer="features.4",
        autocast=torch.bfloat16,
    )
    for method in ref:
        assert low[method].dtype == torch.float32
        a, b = ref[method].flatten(), low[method].flatten()
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.95
