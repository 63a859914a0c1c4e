"""Cross-check our maps against pytorch-grad-cam and torch-cam (the ``crosscheck`` extra).

Skipped when the reference libraries are not installed. A seeded torchvision resnet18
(``weights=None``) is explained at ``layer4``; both sides are min-max normalised per image the
same way before comparing (Pearson correlation over pixels, plus a loose ``allclose``).

Known, documented differences (not compared, or compared loosely):
* Eigen-CAM: pytorch-grad-cam leaves the SVD sign arbitrary; we fix it (positive correlation with
  the mean activation), so we accept either sign of the reference.
* Score-CAM: pytorch-grad-cam upsamples the masks with ``align_corners=True``, we use ``False``
  (as every other upsampling here): correlation only.
* torch-cam's Grad-CAM++ uses ``sum_ab A_ab G_ab^3`` in the denominator instead of the paper's
  ``G_ij^3 sum_ab A_ab``; and its Score-CAM scores raw logits, not probabilities: not compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from auditor.cam import CamEngine, compute_cams
from auditor.cam.methods import _first_component

SIZE = 128
TARGETS = [3, 7]


def _minmax(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    lo = flat.min(1).values[:, None]
    hi = flat.max(1).values[:, None]
    return ((flat - lo) / (hi - lo + 1e-7)).reshape(x.shape)


def _corr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [
        float(torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]) for x, y in zip(a, b)
    ]


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return model, images


GRAD_CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "ablationcam": "AblationCAM",
}
PERTURBATION = {"ablationcam", "scorecam"}


def _small(setup: tuple[torch.nn.Module, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Perturbation methods run K=512 forwards per image: one 64x64 image keeps them quick."""
    return F.interpolate(setup[1][:1], size=(64, 64), mode="bilinear"), TARGETS[:1]


@pytest.mark.parametrize("method", sorted(GRAD_CAM_METHODS))
def test_against_pytorch_grad_cam(method: str, setup: tuple[torch.nn.Module, torch.Tensor]) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = setup
    cls = getattr(pgc, GRAD_CAM_METHODS[method])
    with cls(model=model, target_layers=[model.layer4]) as ref_cam:
        ref = torch.from_numpy(
            ref_cam(images, targets=[ClassifierOutputTarget(t) for t in TARGETS])
        )
    ours = compute_cams(model, images, torch.tensor(TARGETS), methods=(method,), layer="layer4")
    ours_n = _minmax(ours[method])
    assert min(_corr(ours_n, ref)) > 0.99, _corr(ours_n, ref)
    torch.testing.assert_close(ours_n, ref.float(), atol=0.05, rtol=0)


def test_scorecam_against_pytorch_grad_cam(setup: tuple[torch.nn.Module, torch.Tensor]) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = setup[0]
    images, targets = _small(setup)
    with pgc.ScoreCAM(model=model, target_layers=[model.layer4]) as ref_cam:
        ref_cam.batch_size = 128
        ref = torch.from_numpy(
            ref_cam(images, targets=[ClassifierOutputSoftmaxTarget(t) for t in targets])
        )
    ours = compute_cams(model, images, torch.tensor(targets), methods=("scorecam",), layer="layer4")
    assert min(_corr(_minmax(ours["scorecam"]), ref)) > 0.99


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_against_pytorch_grad_cam(
    method: str, setup: tuple[torch.nn.Module, torch.Tensor]
) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = setup
    cls = pgc.EigenCAM if method == "eigencam" else pgc.EigenGradCAM
    with cls(model=model, target_layers=[model.layer4]) as ref_cam:
        ref = torch.from_numpy(
            ref_cam(images, targets=[ClassifierOutputTarget(t) for t in TARGETS])
        )
    with CamEngine(model, "layer4", (method, "gradcam")) as engine:
        batch = engine.run(images, torch.tensor(TARGETS))
    ours = _minmax(batch.upsampled((SIZE, SIZE))[method])
    # the reference may have taken the other SVD sign: recompute relu(-projection) from A and G
    captured: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, _i: object, o: torch.Tensor) -> torch.Tensor:
        captured["a"] = o.detach().requires_grad_(True)
        return captured["a"]

    handle = model.layer4.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
            score = logits.gather(1, torch.tensor(TARGETS)[:, None]).sum()
            (grads,) = torch.autograd.grad(score, captured["a"])
    finally:
        handle.remove()
    acts = captured["a"].detach()
    prod = acts if method == "eigencam" else acts * grads
    ref_sign = acts.mean(1) if method == "eigencam" else prod.sum(1)
    flipped = _minmax(
        F.interpolate(
            _first_component(prod, -ref_sign)[:, None], size=(SIZE, SIZE), mode="bilinear"
        )[:, 0]
    )
    for i, (c, c_flip) in enumerate(zip(_corr(ours, ref), _corr(flipped, ref))):
        assert max(c, c_flip) > 0.99, (i, c, c_flip)


TORCHCAM_METHODS = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


@pytest.mark.parametrize("method", sorted(TORCHCAM_METHODS))
def test_against_torchcam(method: str, setup: tuple[torch.nn.Module, torch.Tensor]) -> None:
    methods = pytest.importorskip("torchcam.methods")
    model, images = setup
    cls = getattr(methods, TORCHCAM_METHODS[method])
    with cls(model, target_layer="layer4") as extractor:
        scores = model(images)
        ref = extractor(class_idx=TARGETS, scores=scores)[0].detach()  # [B, h, w] normalised
    with CamEngine(model, "layer4", (method,)) as engine:
        ours = engine.run(images, torch.tensor(TARGETS)).cams[method]
    ours_n = _minmax(ours)
    assert min(_corr(ours_n, ref)) > 0.99
    torch.testing.assert_close(ours_n, ref.float(), atol=1e-3, rtol=0)
    assert np.isfinite(ours_n.numpy()).all()
