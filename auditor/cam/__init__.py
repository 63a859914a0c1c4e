"""CAM engine: class activation maps for image classifiers, batched, on the model's device.

Public API::

    from auditor.cam import compute_cams
    cams = compute_cams(model, images, labels, methods=("gradcam", "layercam"), layer="layer4")
    # {"gradcam": Tensor[B, H, W], ...}: float32, >= 0, NOT min-max normalised

Every gradient method comes from ONE forward + ONE partial backward per batch
(:class:`CamEngine`); methods live in a registry (:data:`METHODS`).
"""

from __future__ import annotations

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
