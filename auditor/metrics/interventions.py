"""Background interventions: batched tensor transforms that use the object masks.

Xiao, Engstrom, Ilyas & Madry 2021, "Noise or Signal: The Role of Image Backgrounds in Object
Recognition" (ICLR) measure how much a classifier depends on the background by re-testing it
on edited images:

* ``only_foreground`` (their ONLY-FG): the object kept, the background removed;
* ``only_background`` (their ONLY-BG-B / ONLY-BG-T): the object removed, the background kept;
* ``mixed_random`` (their MIXED-RAND): each object pasted onto the background of another
  image (with that image's own object removed).

The accuracy drop between the clean and the edited images is the "background gap". Xiao et al.
use bounding boxes; here the *mask* region is edited (optionally dilated by ``dilate`` pixels,
to also remove the object's halo and soft edges).

All functions take normalised images ``[B, C, H, W]`` (floating, normally ``C = 3``) and
boolean masks ``[B, H, W]`` on the same device, return new tensors (the inputs are never
modified) and run on the whole batch at once.

Fills (what replaces the removed region)
----------------------------------------
``"mean"``
    zeros in normalised space, i.e. the dataset mean colour (Xiao et al. use black; on a
    normalised input the mean colour is the least out-of-distribution constant).
``"black"``
    a constant given as ``fill_value`` (``Tensor[C]``, e.g. ``-mean / std`` for black).
``"blur"``
    a strong Gaussian blur of the **kept background pixels only** (normalised convolution,
    Knutsson & Westin 1993, "Normalized and differential convolution"):
    ``fill = G * (x * s) / G * s`` with ``s`` the indicator of the source (background)
    pixels, so the object's colours never leak into the fill. Pixels too far from any
    source pixel (``G * s < 1e-6``) fall back to the mean (0).
``"image_mean"``
    each image's own mean colour over the kept pixels, per channel (one grey value for
    ``C = 1``): :math:`f_c = \\sum_p s_p x_{c,p} / \\sum_p s_p` (0 where nothing is kept).
``"noise"``
    Gaussian noise with each image's own per-channel mean and standard deviation of the kept
    pixels, :math:`f_{c,p} = \\mu_c + \\sigma_c z_{c,p}`, :math:`z \\sim N(0, 1)` drawn from
    a generator seeded with ``seed`` (deterministic).

A fill can be the signal instead of the model: when the edited images of every class collapse
to one prediction (:mod:`auditor.analysis.fill_collapse`), the audit tries the
``ALTERNATIVE_FILLS`` in order (:mod:`auditor.analysis.fill_choice`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auditor.metrics.localisation import dilate_masks

__all__ = [
    "ALTERNATIVE_FILLS",
    "FILLS",
    "derangement",
    "masked_gaussian_blur",
    "mixed_random",
    "only_background",
    "only_foreground",
]

#: Accepted values of the ``fill`` argument.
FILLS: tuple[str, ...] = ("mean", "blur", "black", "image_mean", "noise")
#: the fills tried, in this order, when the configured one collapses (issue 22)
ALTERNATIVE_FILLS: tuple[str, ...] = ("blur", "noise", "image_mean")


def _check_inputs(images: object, masks: object) -> tuple[Tensor, Tensor]:
    if not isinstance(images, Tensor):
        raise TypeError(f"`images` must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"`images` must have shape [B, C, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"`images` must be a floating tensor, got dtype {images.dtype}")
    if not isinstance(masks, Tensor):
        raise TypeError(f"`masks` must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"`masks` must have dtype torch.bool, got {masks.dtype}")
    b, _, h, w = images.shape
    if tuple(masks.shape) != (b, h, w):
        raise ValueError(
            f"`masks` must have shape [B, H, W] = {(b, h, w)} to match `images`, "
            f"got {tuple(masks.shape)}"
        )
    return images, masks.to(images.device)


def _check_fill(fill: str, fill_value: Tensor | None, channels: int) -> None:
    if fill not in FILLS:
        raise ValueError(f"`fill` must be one of {FILLS}, got {fill!r}")
    if fill == "black":
        if fill_value is None:
            raise ValueError(
                '`fill_value` (Tensor[C], e.g. -mean / std) is required with fill="black", got None'
            )
        if not isinstance(fill_value, Tensor) or tuple(fill_value.shape) != (channels,):
            shape = tuple(fill_value.shape) if isinstance(fill_value, Tensor) else fill_value
            raise ValueError(f"`fill_value` must have shape [{channels}], got {shape}")
    elif fill_value is not None:
        raise ValueError(f'`fill_value` is only used with fill="black", got fill={fill!r}')


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _default_sigma(h: int, w: int) -> float:
    return max(1.0, min(h, w) / 10.0)


def masked_gaussian_blur(images: Tensor, source: Tensor, sigma: float | None = None) -> Tensor:
    r"""Gaussian blur that only averages the ``source`` pixels (normalised convolution).

    .. math:: \tilde x = \frac{G_\sigma * (x \cdot s)}{G_\sigma * s}

    with ``s`` the source indicator ``[B, H, W]`` (Knutsson & Westin 1993). Separable: one
    horizontal and one vertical 1-D convolution, zero padding (outside the image counts as
    "no source", so borders are not darkened). Where :math:`G_\sigma * s < 10^{-6}` (no source
    pixel nearby, or no source at all) the result is 0 (the mean colour in normalised space).
    ``sigma`` defaults to ``max(1, min(H, W) / 10)`` px; the kernel is cut at ``3 sigma``.
    """
    images, source = _check_inputs(images, source)
    b, c, h, w = images.shape
    if sigma is None:
        sigma = _default_sigma(h, w)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"`blur_sigma` must be a positive number, got {sigma!r}")
    k = _gaussian_kernel(float(sigma), images.device, images.dtype)
    r = (k.numel() - 1) // 2
    s = source[:, None].to(images.dtype)  # [B, 1, H, W]
    stack = torch.cat([images * s, s], dim=1).reshape(b * (c + 1), 1, h, w)
    out = torch.nn.functional.conv2d(stack, k.view(1, 1, 1, -1), padding=(0, r))
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1), padding=(r, 0))
    out = out.reshape(b, c + 1, h, w)
    num, den = out[:, :c], out[:, c:]
    ok = den > 1e-6
    return torch.where(ok, num / den.clamp_min(1e-6), torch.zeros_like(num))


def _filler(
    images: Tensor,
    source: Tensor,
    fill: str,
    blur_sigma: float | None,
    fill_value: Tensor | None,
    seed: int = 0,
) -> Tensor:
    """The image that replaces removed pixels ([B, C, H, W] or broadcastable)."""
    if fill == "mean":
        return torch.zeros((), dtype=images.dtype, device=images.device)
    if fill in ("image_mean", "noise"):
        return _own_statistics_fill(images, source, fill, seed)
    if fill == "black":
        if fill_value is None:  # also checked by _check_fill
            raise ValueError('`fill_value` is required with fill="black", got None')
        return fill_value.to(device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return masked_gaussian_blur(images, source, blur_sigma)


def _own_statistics_fill(images: Tensor, source: Tensor, fill: str, seed: int) -> Tensor:
    """``image_mean`` / ``noise`` (module docstring) from each image's kept pixels."""
    s = source[:, None].to(images.dtype)  # [B, 1, H, W]
    count = s.sum((2, 3), keepdim=True).clamp_min(1.0)
    mean = (images * s).sum((2, 3), keepdim=True) / count  # [B, C, 1, 1]
    if fill == "image_mean":
        return mean
    std = (((images - mean) ** 2 * s).sum((2, 3), keepdim=True) / count).sqrt()
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(images.shape, generator=gen, dtype=torch.float32)
    return mean + std * z.to(device=images.device, dtype=images.dtype)


def only_foreground(
    images: Tensor,
    masks: Tensor,
    fill: str = "mean",
    *,
    blur_sigma: float | None = None,
    fill_value: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    r"""Keep the object, replace the background (Xiao et al. 2021, ONLY-FG).

    .. math:: x'_p = x_p \text{ if } p \in M \text{ else } f_p

    with ``f`` the fill (module docstring): ``"mean"`` (0), ``"black"`` (``fill_value``) or
    ``"blur"`` (the background blurred with itself only, so the object does not bleed out).
    An all-False mask gives a pure fill image, an all-True mask the image unchanged.
    """
    images, masks = _check_inputs(images, masks)
    _check_fill(fill, fill_value, images.shape[1])
    f = _filler(images, ~masks, fill, blur_sigma, fill_value, seed)
    return torch.where(masks[:, None], images, f.expand_as(images))


def only_background(
    images: Tensor,
    masks: Tensor,
    fill: str = "mean",
    *,
    dilate: int = 0,
    blur_sigma: float | None = None,
    fill_value: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    r"""Remove the object, keep the background (Xiao et al. 2021, ONLY-BG).

    .. math:: x'_p = f_p \text{ if } p \in D_r(M) \text{ else } x_p

    Xiao et al. fill the object's bounding box; with a mask the (optionally dilated by
    ``dilate`` px, Euclidean disk) mask region is filled instead, which keeps more background
    but can leave the silhouette. ``"blur"`` in-paints the region from the surrounding
    background (normalised convolution of the background only). An all-False mask returns the
    image unchanged; an all-True mask gives a pure fill image ("blur" then falls back to 0).
    """
    images, masks = _check_inputs(images, masks)
    _check_fill(fill, fill_value, images.shape[1])
    region = dilate_masks(masks, dilate)
    f = _filler(images, ~region, fill, blur_sigma, fill_value, seed)
    return torch.where(region[:, None], f.expand_as(images), images)


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A uniformly random permutation of ``0..n-1`` with no fixed point (``n >= 2``).

    Rejection sampling of ``torch.randperm`` (acceptance probability about ``1/e``), so the
    result is uniform over derangements and fully determined by the generator's state.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an int >= 2 for a derangement, got {n!r}")
    ident = torch.arange(n, device=generator.device)
    for _ in range(200):
        perm = torch.randperm(n, generator=generator, device=generator.device)
        if not bool((perm == ident).any()):
            return perm
    # (1 - 1/e)^200 ~ 1e-40: practically unreachable. A conjugated cyclic shift is a
    # derangement (not uniform, but valid).
    p = torch.randperm(n, generator=generator, device=generator.device)
    perm = torch.empty_like(p)
    perm[p] = p.roll(-1)
    return perm


def mixed_random(
    images: Tensor,
    masks: Tensor,
    generator: torch.Generator,
    fill: str = "mean",
    *,
    dilate: int = 0,
    blur_sigma: float | None = None,
    fill_value: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Paste each object onto another image's background (Xiao et al. 2021, MIXED-RAND).

    With ``pi`` a random derangement of the batch drawn from ``generator``:

    .. math:: x'_i = x_i \text{ on } M_i, \qquad
              x'_i = \mathrm{only\_background}(x_{\pi(i)}) \text{ elsewhere}

    The background image's own object is filled first (as :func:`only_background`, with the
    same ``fill``/``dilate``) so it cannot leak into the result. No image keeps its own
    background. Returns ``(mixed, perm)`` with ``perm[i] = pi(i)`` (``LongTensor[B]`` on the
    images' device).

    ``B == 1`` cannot be mixed: the images are returned unchanged (a copy) with
    ``perm = tensor([-1])``; callers treat ``perm == -1`` as "not mixed". ``B == 0`` returns an
    empty copy and an empty ``perm``.
    """
    images, masks = _check_inputs(images, masks)
    _check_fill(fill, fill_value, images.shape[1])
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
    b = images.shape[0]
    if b < 2:
        return images.clone(), torch.full((b,), -1, dtype=torch.long, device=images.device)
    perm = derangement(b, generator).to(images.device)
    backgrounds = only_background(
        images, masks, fill, dilate=dilate, blur_sigma=blur_sigma, fill_value=fill_value
    )
    return torch.where(masks[:, None], images, backgrounds[perm]), perm
