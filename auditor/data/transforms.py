"""Geometry and normalisation that keep image and mask aligned.

Both resize modes are expressed as ONE source rectangle ``box`` in the original image that is
resampled to the output size, so image (bilinear, antialiased by PIL) and mask (nearest
neighbour) go through exactly the same coordinate transform (pixel centres, PIL convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # imported where tensors are made: finalize never loads torch
    from torch import Tensor

__all__ = [
    "RESIZE_MODES",
    "normalise",
    "rasterise_boxes",
    "resize_image",
    "resize_mask",
    "source_box",
]

RESIZE_MODES: tuple[str, ...] = ("direct", "shorter_center_crop")

Box = tuple[float, float, float, float]


def source_box(
    width: int, height: int, size: tuple[int, int], mode: str
) -> tuple[float, float, float, float]:
    """Rectangle ``(left, top, right, bottom)`` of the original image mapped onto ``size``.

    * ``"direct"``: the whole image, ``(0, 0, W, H)``; the aspect ratio is not kept.
    * ``"shorter_center_crop"``: scale ``s = max(out_h / H, out_w / W)`` (the shorter side
      fills the output), then the centred crop of ``out_h x out_w``: in source coordinates the
      rectangle of size ``(out_w / s, out_h / s)`` centred on the image. For a square output this
      equals torchvision's ``Resize(S)`` + ``CenterCrop(S)`` up to rounding of the crop offset.
    """
    out_h, out_w = size
    if width <= 0 or height <= 0:
        raise ValueError(f"`width`/`height` must be positive, got {width}x{height}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"`size` must be positive (H, W), got {size!r}")
    if mode == "direct":
        return (0.0, 0.0, float(width), float(height))
    if mode == "shorter_center_crop":
        scale = max(out_h / height, out_w / width)
        crop_w, crop_h = out_w / scale, out_h / scale
        left, top = (width - crop_w) / 2.0, (height - crop_h) / 2.0
        # the side that fills the output gives crop == side up to rounding (97 px at a scale
        # of 224/97 gives 97.00000000000001): keep the box inside the image, as PIL requires
        return (
            max(left, 0.0),
            max(top, 0.0),
            min(left + crop_w, float(width)),
            min(top + crop_h, float(height)),
        )
    raise ValueError(f"`mode` must be one of {list(RESIZE_MODES)}, got {mode!r}")


def resize_image(image: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize an RGB PIL image; returns uint8 ``[H, W, 3]`` (bilinear, antialiased)."""
    if image.mode != "RGB":
        raise ValueError(f"`image` must be an RGB PIL image, got mode {image.mode!r}")
    box = source_box(image.width, image.height, size, mode)
    out = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8).copy()


def resize_mask(mask: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize a bool ``[h, w]`` mask with nearest neighbour over the same ``source_box``."""
    if mask.ndim != 2:
        raise ValueError(f"`mask` must have shape [H, W], got {tuple(mask.shape)}")
    height, width = mask.shape
    box = source_box(width, height, size, mode)
    pil = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    out = pil.resize((size[1], size[0]), Image.Resampling.NEAREST, box=box)
    return np.asarray(out) > 127


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[C, H, W]`` with ``x = (v / 255 - mean_c) / std_c``.

    ``C = len(mean)``: 3, or 1 for grey models (``[data] channels = 1``), where ``v`` is the
    luma ``L = (299 R + 587 G + 114 B) / 1000`` (ITU-R 601, PIL's ``"L"`` conversion; exact
    for grey images, whose three channels are equal).
    """
    import torch

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"`image` must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(
            f"`mean`/`std` must have 3 (or 1) values each, got {list(mean)!r}, {list(std)!r}"
        )
    if len(mean) == 1:
        rgb = image.astype(np.float32)
        luma = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114) / 1000.0
        grey = torch.from_numpy(np.ascontiguousarray(luma))[None]
        return (grey / 255.0 - float(mean[0])) / float(std[0])
    # channel-first uint8 copy first (cheap), then one float conversion and two in-place ops:
    # x = v * (1 / (255 std)) - mean / std, the same affine map with fewer passes over memory
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
    s = torch.tensor(list(std), dtype=torch.float64)
    m = torch.tensor(list(mean), dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(3, 1, 1)
    shift = (m / s).to(torch.float32).view(3, 1, 1)
    return t.mul_(scale).sub_(shift)


def rasterise_boxes(
    boxes: Sequence[Sequence[float]], height: int, width: int
) -> tuple[np.ndarray, tuple[str, ...], int]:
    """Union of boxes ``(x0, y0, x1, y1)`` at the ORIGINAL resolution, ``x1``/``y1`` exclusive.

    Pixel ``(r, c)`` is inside a box when its centre is: ``x0 <= c + 0.5 < x1`` and
    ``y0 <= r + 0.5 < y1`` (for integer coordinates: columns ``x0 .. x1 - 1``).
    A box with a NaN/inf coordinate, or ``x1 <= x0`` / ``y1 <= y0`` (inverted or empty), is
    rejected with a note; a box crossing the image border is clipped with a note; a box
    entirely outside the image or covering no pixel centre is rejected with a note.

    Returns:
        ``(mask bool [height, width], notes, number of boxes accepted)``.
    """
    mask = np.zeros((height, width), dtype=bool)
    notes: list[str] = []
    accepted = 0
    for i, box in enumerate(boxes):
        if len(box) != 4:
            notes.append(f"box {i} rejected: needs 4 coordinates, got {len(box)}")
            continue
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            notes.append(f"box {i} rejected: non-numeric coordinates {list(box)!r}")
            continue
        shown = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            notes.append(f"box {i} {shown} rejected: NaN or infinite coordinate")
            continue
        if x1 <= x0 or y1 <= y0:
            notes.append(f"box {i} {shown} rejected: inverted or empty (needs x0 < x1, y0 < y1)")
            continue
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, float(width)), min(y1, float(height))
        if cx1 <= cx0 or cy1 <= cy0:
            notes.append(f"box {i} {shown} rejected: outside the {width}x{height} image")
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            notes.append(
                f"box {i} {shown} clipped to the {width}x{height} image: "
                f"[{cx0:g}, {cy0:g}, {cx1:g}, {cy1:g}]"
            )
        c0, c1 = math.ceil(cx0 - 0.5), math.ceil(cx1 - 0.5)
        r0, r1 = math.ceil(cy0 - 0.5), math.ceil(cy1 - 0.5)
        if c1 <= c0 or r1 <= r0:
            notes.append(f"box {i} {shown} rejected: covers no pixel centre")
            continue
        mask[r0:r1, c0:c1] = True
        accepted += 1
    return mask, tuple(notes), accepted
