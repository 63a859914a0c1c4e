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

from types import SimpleNamespace

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


def _outcome(model: torch.nn.Module, size: tuple[int, int], method: str) -> str:
    """"ok", or "refused: <message>"; raises on anything that is not bad input."""
    from auditor.audit.runner import _build_engine

    channels = _channels(model)
    dataset = SimpleNamespace(
        config=SimpleNamespace(input_size=size, channels=channels), classes=["a", "b", "c"]
    )
    settings = AuditSettings(methods=(method,), max_forwards_per_image=MAX_FORWARDS)
    try:
        engine, _grid = _build_engine(model, dataset, None, None, settings, torch.device("cpu"))
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
