"""Model outputs → logits, and maps → image size: helpers every part of the CAM code shares.

Classifiers return logits in several wrappers: a plain ``Tensor [B, C]``; a tuple whose first
item is the logits (Hugging Face ``return_dict=False``, auxiliary-head nets); an object with a
``.logits`` attribute (Hugging Face ``ImageClassifierOutput``) or a mapping with a ``"logits"``
key. :func:`logits_of` unwraps all of them; the CAM engine, the interventions, the
faithfulness curves and the sanity check use it, so a Hugging Face model runs everywhere.

:func:`upsample_cams` is the one bilinear upsampling of maps (the engine's fused layers and
outputs, Score-CAM's masks in :mod:`auditor.cam.perturbation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

__all__ = ["logits_of", "upsample_cams"]


def logits_of(output: Any) -> Tensor:
    """The logits ``Tensor`` inside a model's output (see the module docstring).

    Raises:
        TypeError: no logits tensor can be found; the message names the output's type.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"the model must return a logits Tensor [B, C] (or a tuple whose first item is one, or "
        f"an output with .logits), got {type(output).__name__}"
    )


def upsample_cams(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly upsample maps ``[B, h, w]`` (or ``[B, T, h, w]``) to ``size = (H, W)``.

    Batched ``F.interpolate(mode="bilinear", align_corners=False)`` on the maps' device; the
    result is clamped at 0 (bilinear interpolation of non-negative values is non-negative, the
    clamp only removes rounding noise) and keeps the leading dimensions.
    """
    if not isinstance(cams, Tensor) or cams.dim() not in (3, 4):
        shape = tuple(cams.shape) if isinstance(cams, Tensor) else type(cams).__name__
        raise ValueError(f"`cams` must have shape [B, h, w] or [B, T, h, w], got {shape}")
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"`size` must be (H, W) with positive ints, got {size!r}")
    lead = cams.shape[:-2]
    flat = cams.reshape(-1, 1, *cams.shape[-2:])
    if tuple(flat.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return flat.clamp_min(0).reshape(*lead, *size)
