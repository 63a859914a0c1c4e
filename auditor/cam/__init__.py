"""CAM engine: class activation maps for image classifiers, batched, on the model's device.

Public API::

    from auditor.cam import compute_cams
    cams = compute_cams(model, images, labels, methods=("gradcam", "layercam"), layer="layer4")
    # {"gradcam": Tensor[B, H, W], ...}: float32, >= 0, NOT min-max normalised

Every gradient method comes from ONE forward + ONE partial backward per batch
(:class:`CamEngine`); methods live in a registry (:data:`METHODS`).

``import auditor.cam`` (and :mod:`auditor.cam.registry`) does not import torch: the names below
are served on first use, from the module that defines them. :data:`METHODS` and
:data:`GRADIENT_METHODS` come from :mod:`auditor.cam.methods`, so reading them registers the
built-in methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.lazy import lazy_attribute

if TYPE_CHECKING:
    from .engine import STATUSES, CamBatch, CamEngine, compute_cams, upsample_cams
    from .layers import (
        find_target_layer,
        resolve_layer,
        spatial_layer_candidates,
        swin_reshape,
        vit_reshape,
    )
    from .methods import GRADIENT_METHODS, METHODS, CamContext, CamMethod, register

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "STATUSES",
    "CamBatch",
    "CamContext",
    "CamEngine",
    "CamMethod",
    "compute_cams",
    "find_target_layer",
    "register",
    "resolve_layer",
    "spatial_layer_candidates",
    "swin_reshape",
    "upsample_cams",
    "vit_reshape",
]

#: Names served lazily (their modules import torch): name -> module.
_LAZY = {
    **dict.fromkeys(
        ("STATUSES", "CamBatch", "CamEngine", "compute_cams", "upsample_cams"),
        "auditor.cam.engine",
    ),
    **dict.fromkeys(
        (
            "find_target_layer",
            "resolve_layer",
            "spatial_layer_candidates",
            "swin_reshape",
            "vit_reshape",
        ),
        "auditor.cam.layers",
    ),
    **dict.fromkeys(
        ("GRADIENT_METHODS", "METHODS", "CamContext", "CamMethod", "register"),
        "auditor.cam.methods",
    ),
}


def __getattr__(name: str) -> Any:
    """The engine, layer helpers and method registry, imported on first use."""
    return lazy_attribute(globals(), _LAZY, __name__, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
