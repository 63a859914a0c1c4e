"""Every method on every family of the zoo list: never exit 4 (issue 23).

The zoo list is :data:`tests.test_model_families.FAMILIES` (torchvision, timm and Hugging Face
families: CNNs, ViTs with class/register/distillation tokens, Swin, MaxViT, Mixer, ConvNeXt,
a grey-scale ResNet; tiny random-weight instances at 24-64 px). For each family x method the
audit's own engine set-up runs (``auditor.audit.runner._build_engine``: target layer detection,
reshape, the applicability probe of :mod:`auditor.cam.applicability` before the first batch),
then one batch of 2 images the way an audit's batch computes its maps. The outcome must be

* maps: one finite map per image (the engine's ``[B, h, w]`` at most the input size), or
* a refusal before the first batch: an :class:`~auditor.errors.AuditorInputError` (exit 2)
  naming the method or the setting, with what applies instead;

anything else (an exception at the first batch, or one the CLI maps to exit 4) fails. The
audit's ``max_forwards_per_image`` is set to 300 here so that the perturbation methods run on
the families with few channels and are refused (exit 2, the documented cost check) on the
wide ones, keeping the matrix within seconds per family.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from auditor.cam.methods import METHODS
from auditor.cli import EXIT_BAD_INPUT, exit_code_for
from auditor.config import AuditSettings
from auditor.errors import AuditorInputError

pytest.importorskip("timm")
pytest.importorskip("transformers")

from tests.test_model_families import FAMILIES, _channels  # noqa: E402

MAX_FORWARDS = 300


def _build(model: torch.nn.Module, size: tuple[int, int], method: str) -> object:
    """The audit's engine set-up for ``model`` on a 3-class dataset of ``size`` images."""
    from auditor.audit.runner import _build_engine

    dataset = SimpleNamespace(
        config=SimpleNamespace(input_size=size, channels=_channels(model)),
        classes=["a", "b", "c"],
    )
    settings = AuditSettings(methods=(method,), max_forwards_per_image=MAX_FORWARDS)
    engine, _grid = _build_engine(model, dataset, None, None, settings, torch.device("cpu"))
    return engine


def _outcome(model: torch.nn.Module, size: tuple[int, int], method: str) -> str:
    """``"ok"``, or ``"refused: <message>"``; raises on anything that is not bad input."""
    channels = _channels(model)
    try:
        engine: Any = _build(model, size, method)
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless exit 2
        if exit_code_for(exc) != EXIT_BAD_INPUT or not isinstance(exc, AuditorInputError):
            raise
        return f"refused: {exc}"
    images = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(3))
    with engine:  # as auditor.audit.batch computes a batch's maps (no exception allowed here)
        out = engine.run(images, torch.tensor([0, 2]))
    cam = out.cams[method]  # the stored low-resolution map [B, h, w] (upsampled later)
    assert cam.dim() == 3 and cam.shape[0] == 2, (method, tuple(cam.shape))
    assert cam.shape[1] <= size[0] and cam.shape[2] <= size[1], (method, tuple(cam.shape))
    assert bool(torch.isfinite(cam).all()), method
    return "ok"


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_on_the_family_maps_or_is_refused_before_the_first_batch(
    family: str,
) -> None:
    build, size, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    outcomes: dict[str, str] = {}
    for method in METHODS:
        try:
            outcomes[method] = _outcome(model, size, method)
        except Exception as exc:  # noqa: BLE001 - the pair is named in the failure
            code = exit_code_for(exc)
            pytest.fail(
                f"{family} x {method}: {type(exc).__name__} (CLI exit {code}) instead of maps "
                f"or a refusal before the first batch: {str(exc)[:300]}"
            )
    refused = {m: o for m, o in outcomes.items() if o != "ok"}
    for method, text in refused.items():
        assert method in text or "max_forwards_per_image" in text, (family, method, text)
    # the refusals are the exception: the gradient family runs on every model of the zoo
    assert outcomes["gradcam"] == "ok" and outcomes["layercam"] == "ok", refused


class _OneRow(torch.nn.Module):
    """A forward that returns [1, C] whatever the batch (a pooled-over-batch head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((0, 2, 3), keepdim=False)[None])


def _zero_head_vit() -> torch.nn.Module:
    """torchvision's ViT as ``random_weights`` builds it: the head is zero-initialised."""
    import torchvision

    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    )  # fmt: skip


def _one_output() -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=1)


@pytest.mark.parametrize(
    ("build", "method", "needle"),
    [
        (_OneRow, "gradcam", "returns logits of shape [1, 3] for a probe batch of 2"),
        (_one_output, "gradcam", "returns 1 logits per image but the dataset has 3 classes"),
        (_zero_head_vit, "gradcam", "its head is dead"),
        (lambda: FAMILIES["tv_mobilenet_v3"][0](), "cam", "'cam' does not apply to MobileNetV3"),
    ],
    ids=["batch_shape", "one_output_for_3_classes", "dead_head", "cam_on_a_non_gap_head"],
)
def test_models_that_cannot_be_audited_are_refused_before_the_first_batch(
    build, method: str, needle: str
) -> None:
    """The hostile models of issue 23 (exit 4 at the first batch, or a vacuous PASSED, before):
    refused by the engine set-up with exit 2 and a message saying what to change."""
    torch.manual_seed(0)
    with pytest.raises(AuditorInputError, match=re.escape(needle)) as info:
        _build(build().eval(), (32, 32), method)
    assert exit_code_for(info.value) == EXIT_BAD_INPUT
