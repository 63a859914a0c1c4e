"""Every method on every family of the zoo list: never exit 4 (issue 23).

The zoo list is :data:`tests.test_model_families.FAMILIES` (torchvision, timm and Hugging Face
families: CNNs, ViTs with class/register/distillation tokens, Swin, MaxViT, Mixer, ConvNeXt,
a grey-scale ResNet; tiny random-weight instances at 24-64 px). For each family x method the
audit's own engine set-up runs (``auditor.audit.runner._build_engine``: target layer detection,
reshape, the applicability probe of :mod:`auditor.cam.applicability` before the first batch)
with every method, then one batch of 2 images the way an audit's batch computes its maps. Each
method must give

* maps: one finite map per image (the engine's ``[B, h, w]`` at most the input size), or
* a refusal before the first batch: an :class:`~auditor.errors.AuditorInputError` (exit 2)
  naming the method, with what applies instead (the audit is then set up without it);

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


def _build(model: torch.nn.Module, size: tuple[int, int], methods: tuple[str, ...]) -> Any:
    """The audit's engine set-up for ``model`` on a 3-class dataset of ``size`` images."""
    from auditor.audit.runner import _build_engine

    dataset = SimpleNamespace(
        config=SimpleNamespace(input_size=size, channels=_channels(model)),
        classes=["a", "b", "c"],
    )
    settings = AuditSettings(methods=methods, max_forwards_per_image=MAX_FORWARDS)
    engine, _grid = _build_engine(model, dataset, None, None, settings, torch.device("cpu"))
    return engine


def _named(message: str, methods: list[str]) -> str | None:
    """The method a refusal is about: ``m costs the most`` (the cost check lists every method),
    else the first method quoted in it (``'m'`` or ```m```; later ones are suggestions)."""
    costly = re.search(r"(\S+) costs the most", message)
    if costly and costly.group(1).rstrip(",") in methods:
        return costly.group(1).rstrip(",")
    at = {m: min((i for i in (message.find(f"'{m}'"), message.find(f"`{m}`")) if i >= 0),
                 default=-1) for m in methods}  # fmt: skip
    found = sorted((i, m) for m, i in at.items() if i >= 0)
    return found[0][1] if found else None


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_on_the_family_maps_or_is_refused_before_the_first_batch(
    family: str,
) -> None:
    """All methods in one audit; each refusal (exit 2) must name the method it drops, and the
    audit without it is set up again, as a user would; the rest computes a batch's maps."""
    build, size, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    channels = _channels(model)
    remaining = list(METHODS)
    refused: dict[str, str] = {}
    while True:
        try:
            engine = _build(model, size, tuple(remaining))
            break
        except Exception as exc:  # noqa: BLE001 - the pair is named in the failure
            code = exit_code_for(exc)
            culprit = _named(str(exc), remaining) if isinstance(exc, AuditorInputError) else None
            if code != EXIT_BAD_INPUT or culprit is None:
                pytest.fail(
                    f"{family} x {remaining}: {type(exc).__name__} (CLI exit {code}) instead "
                    f"of maps or a refusal naming the method: {str(exc)[:300]}"
                )
            refused[culprit] = str(exc)
            remaining.remove(culprit)
    images = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(3))
    try:
        with engine:  # as auditor.audit.batch computes a batch's maps: nothing may raise here
            out = engine.run(images, torch.tensor([0, 2]))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(
            f"{family} x {remaining}: {type(exc).__name__} (CLI exit {exit_code_for(exc)}) at "
            f"the first batch, after the set-up accepted the methods: {str(exc)[:300]}"
        )
    assert set(out.cams) == set(remaining), (family, sorted(out.cams), remaining)
    for method, cam in out.cams.items():  # the stored low-resolution maps [B, h, w]
        assert cam.dim() == 3 and cam.shape[0] == 2, (family, method, tuple(cam.shape))
        assert cam.shape[1] <= size[0] and cam.shape[2] <= size[1], (method, tuple(cam.shape))
        assert bool(torch.isfinite(cam).all()), (family, method)
    # the refusals are the exception: the gradient family runs on every model of the zoo
    assert {"gradcam", "layercam", "gradcam++"} <= set(remaining), refused


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
        _build(build().eval(), (32, 32), (method,))
    assert exit_code_for(info.value) == EXIT_BAD_INPUT
