"""The only-background image a model was shown, rebuilt for display (issue 25), torch-free.

The background-sufficiency evidence (Xiao et al. 2021, "Noise or Signal: The Role of Image
Backgrounds in Object Recognition", ICLR: ONLY-BG) is the prediction on an edited image: the
object region ``M`` replaced by a fill ``f``, the background kept,

.. math:: x'_p = f_p \\text{ if } p \\in M \\text{ else } x_p .

The report must show THAT image, not the original. The audit loop edits normalised tensors
with :func:`auditor.metrics.interventions.only_background`; rendering runs without torch, so
this module applies the same edit to the display image in numpy, in the same normalised space
``x = (v / 255 - mean_c) / std_c``, and maps the result back to pixels
``v = 255 (x std_c + mean_c)``. The fills are those of :mod:`auditor.metrics.interventions`:

``"mean"``
    ``f = 0`` (the dataset mean colour);
``"black"``
    ``f = -mean / std`` (pixel value 0);
``"blur"``
    normalised convolution of the background only (Knutsson & Westin 1993),
    ``f = G_sigma * (x s) / G_sigma * s`` with ``s = 1 - M``, separable, zero padding, kernel
    cut at ``3 sigma``, ``sigma = max(1, min(H, W) / 10)``; 0 where ``G_sigma * s < 1e-6``;
``"image_mean"``
    the image's own per-channel mean over the background;
``"noise"``
    ``mu_c + sigma_c z`` with the background's own per-channel mean and standard deviation;
    ``z`` is drawn here from a seeded numpy generator, so the noise has the model's
    distribution but not its exact draw (the audit draws it per batch with torch).

Grey models (one ``mean``/``std`` value) see the luma ``(299 R + 587 G + 114 B) / 1000``
(:func:`auditor.data.transforms.normalise`); the result is then drawn as a grey image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["BACKGROUND_ONLY_FILLS", "background_only_display", "only_background_normalised"]

#: the fills :func:`only_background_normalised` rebuilds (those of the audit loop)
BACKGROUND_ONLY_FILLS: tuple[str, ...] = ("mean", "blur", "black", "image_mean", "noise")


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]``: 1-D Gaussian convolution (``3 sigma`` cut, zero padding) as a matrix."""
    radius = max(1, math.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / sigma) ** 2)
    k /= k.sum()
    idx = np.arange(n)
    offset = idx[None, :] - idx[:, None]  # column j contributes to row i with k[j - i + r]
    inside = np.abs(offset) <= radius
    return np.where(inside, k[np.clip(offset + radius, 0, 2 * radius)], 0.0)


def _fill(x: np.ndarray, source: np.ndarray, fill: str, fill_value: np.ndarray | None,
          seed: int) -> np.ndarray:  # fmt: skip
    """The replacement ``[C, H, W]`` (or broadcastable) from the ``source`` pixels."""
    c, h, w = x.shape
    if fill == "mean":
        return np.zeros((1, 1, 1))
    if fill == "black":
        if fill_value is None:
            raise ValueError('`fill_value` is required with fill="black", got None')
        return np.asarray(fill_value, dtype=np.float64).reshape(c, 1, 1)
    s = source.astype(np.float64)[None]  # [1, H, W]
    if fill == "blur":
        sigma = max(1.0, min(h, w) / 10.0)
        gh, gw = _blur_matrix(h, sigma), _blur_matrix(w, sigma)
        num = np.einsum("ij,cjk,lk->cil", gh, x * s, gw)
        den = np.einsum("ij,cjk,lk->cil", gh, s, gw)
        return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)
    count = max(float(s.sum()), 1.0)
    mean = (x * s).sum((1, 2), keepdims=True) / count
    if fill == "image_mean":
        return mean
    std = np.sqrt((((x - mean) ** 2) * s).sum((1, 2), keepdims=True) / count)
    z = np.random.default_rng(int(seed)).standard_normal(x.shape)
    return mean + std * z


def only_background_normalised(
    x: np.ndarray,
    mask: np.ndarray,
    fill: str = "mean",
    *,
    fill_value: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The ONLY-BG edit of one normalised image ``x [C, H, W]`` with object ``mask [H, W]``
    (module docstring): the object's pixels replaced by ``fill``, the rest unchanged."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"`x` must have shape [C, H, W], got {tuple(x.shape)}")
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != x.shape[1:]:
        raise ValueError(
            f"`mask` must be bool [H, W] = {tuple(x.shape[1:])}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    if fill not in BACKGROUND_ONLY_FILLS:
        raise ValueError(f"`fill` must be one of {BACKGROUND_ONLY_FILLS}, got {fill!r}")
    f = _fill(x, ~mask, fill, fill_value, seed)
    return np.where(mask[None], np.broadcast_to(f, x.shape), x)


def background_only_display(
    image: np.ndarray,
    mask: np.ndarray,
    fill: str,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    seed: int = 0,
) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the display ``image`` as the model saw it in the only-background
    intervention (the ``mask`` region filled with ``fill``; module docstring).

    ``mean``/``std``: the dataset's normalisation (3 values, or 1 for a grey model).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"`image` must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(f"`mean`/`std` must have 3 (or 1) values each, got {mean!r}, {std!r}")
    m = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    sd = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
    rgb = image.astype(np.float64).transpose(2, 0, 1)
    if len(mean) == 1:
        rgb = ((rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000.0)[None]
    x = (rgb / 255.0 - m) / sd
    edited = only_background_normalised(
        x, mask, fill, fill_value=(-m / sd).ravel() if fill == "black" else None, seed=seed
    )
    v = np.clip(np.round(255.0 * (edited * sd + m)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(v, (3, *v.shape[1:])).transpose(1, 2, 0))
