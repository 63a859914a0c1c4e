"""Faithfulness metrics: does the model's output actually depend on the highlighted pixels?

Two families, both batched on the model's device and run under :func:`torch.inference_mode`:

* **Deletion / insertion** (Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", BMVC). Pixels are ranked by CAM value (descending) and
  removed from the image (deletion) or revealed on a blurred canvas (insertion), ``H*W/steps``
  pixels per step; the target-class softmax probability is recorded after every step and the
  area under that curve (trapezoid rule, x in [0, 1]) summarises it. A faithful map gives a
  *low* deletion AUC (the probability collapses quickly) and a *high* insertion AUC.
* **Average drop / increase in confidence** (Chattopadhay, Sarkar, Howlader, Balasubramanian
  2018, "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep Convolutional
  Networks", WACV). The image is multiplied by its min-max normalised CAM and the target
  probability on this "explanation map" is compared with the one on the full image.

Every function restores the model's train/eval flags on exit, also on error, and never
changes its parameters.

Example::

    res = faithfulness(model, images, cams["gradcam"], labels, steps=20)
    res.deletion_auc.mean(), res.insertion_auc.mean()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auditor.audit.modelstate import preserved_training_flags

__all__ = [
    "FAITHFULNESS_METRICS",
    "FaithfulnessResult",
    "MetricInfo",
    "average_drop_increase",
    "deletion_insertion",
    "faithfulness",
    "faithfulness_metrics",
]

_BASELINES = ("blur", "zero")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata a report can print next to a metric (Quantus-style)."""

    name: str
    higher_is_better: bool
    category: str
    reference: str
    description: str


FAITHFULNESS_METRICS: dict[str, MetricInfo] = {
    "deletion_auc": MetricInfo(
        "deletion_auc",
        higher_is_better=False,
        category="faithfulness",
        reference="Petsiuk, Das, Saenko 2018, RISE",
        description="Area under the target probability while the most salient pixels are "
        "removed first (set to 0, the mean colour in normalised space).",
    ),
    "insertion_auc": MetricInfo(
        "insertion_auc",
        higher_is_better=True,
        category="faithfulness",
        reference="Petsiuk, Das, Saenko 2018, RISE",
        description="Area under the target probability while the most salient pixels are "
        "revealed first on a blurred canvas.",
    ),
    "average_drop": MetricInfo(
        "average_drop",
        higher_is_better=False,
        category="faithfulness",
        reference="Chattopadhay et al. 2018, Grad-CAM++",
        description="Relative drop of the target probability when only the explanation "
        "(image x normalised CAM) is shown; a fraction in [0, 1] (the paper reports x100).",
    ),
    "increase_in_confidence": MetricInfo(
        "increase_in_confidence",
        higher_is_better=True,
        category="faithfulness",
        reference="Chattopadhay et al. 2018, Grad-CAM++",
        description="1 when the target probability is higher on the explanation map than on "
        "the image; its mean is the paper's 'increase in confidence' rate (as a fraction).",
    ),
}


@dataclass(frozen=True)
class FaithfulnessResult:
    """Per-sample faithfulness of one CAM method on one batch.

    Attributes:
        deletion_auc: ``[B]`` area under the deletion curve (lower is better).
        insertion_auc: ``[B]`` area under the insertion curve (higher is better).
        deletion_curve: ``[B, S+1]`` target probability after ``s`` deletion steps.
        insertion_curve: ``[B, S+1]`` target probability after ``s`` insertion steps.
        average_drop: ``[B]`` ``max(0, Y - O) / Y`` as a fraction (NaN where undefined).
        increase_in_confidence: ``[B]`` ``1[O > Y]`` as float (NaN where undefined).
    """

    deletion_auc: Tensor
    insertion_auc: Tensor
    deletion_curve: Tensor
    insertion_curve: Tensor
    average_drop: Tensor
    increase_in_confidence: Tensor


# --------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each module's own flag afterwards."""
    with preserved_training_flags(model, eval=True):
        yield


def _check_inputs(
    model: nn.Module, images: Tensor, cams: Tensor, targets: Tensor, forward_batch_size: int
) -> Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a tensor of shape [B, C, H, W], got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"`images` must be a float tensor, got dtype {images.dtype}")
    b, _, h, w = images.shape
    if not isinstance(cams, Tensor) or tuple(cams.shape) != (b, h, w):
        shape = tuple(cams.shape) if isinstance(cams, Tensor) else type(cams).__name__
        raise ValueError(f"`cams` must have shape [B, H, W] = {(b, h, w)}, got {shape}")
    targets = torch.as_tensor(targets, device=images.device)
    if targets.dim() != 1 or targets.shape[0] != b:
        raise ValueError(f"`targets` must have shape [B] = [{b}], got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"`targets` must be an integer tensor, got dtype {targets.dtype}")
    if isinstance(forward_batch_size, bool) or not isinstance(forward_batch_size, int):
        raise TypeError(
            f"`forward_batch_size` must be an int, got {type(forward_batch_size).__name__}"
        )
    if forward_batch_size < 1:
        raise ValueError(f"`forward_batch_size` must be >= 1, got {forward_batch_size}")
    return targets.long()


def _target_probability(output: Any, targets: Tensor) -> Tensor:
    from auditor.cam.outputs import logits_of  # the one unwrapping helper (HF outputs)

    logits = logits_of(output)
    if logits.dim() != 2:
        raise ValueError(
            f"the model must return logits of shape [N, num_classes], got {tuple(logits.shape)}"
        )
    n_classes = logits.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        raise ValueError(
            f"`targets` must lie in [0, {n_classes - 1}], got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    probs = torch.softmax(logits.float(), dim=1)
    return probs.gather(1, targets[:, None]).squeeze(1)


def _gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur with replicate padding (works for any image size).

    RISE uses a Gaussian kernel of size 11 and sigma 5 as the insertion canvas.
    """
    radius = kernel_size // 2
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    kh = kernel.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size)
    kv = kernel.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1)
    out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kh, groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kv, groups=c)


def _pixel_ranks(cams: Tensor) -> Tensor:
    """Rank of every pixel in the descending CAM order: ``[B, H*W]`` long, 0 = most salient.

    Ties are broken by pixel index (row-major, lower index first) through a stable sort;
    NaN values are ranked last.
    """
    flat = cams.detach().flatten(1).float()
    flat = torch.nan_to_num(flat, nan=-math.inf)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks


def _trapezoid_auc(curve: Tensor) -> Tensor:
    """Trapezoid-rule area of ``curve[..., 0..S]`` over x = s/S in [0, 1]."""
    s = curve.shape[-1] - 1
    return (curve.sum(-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / s


# --------------------------------------------------------------------------------------------
# deletion / insertion


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    cams: Tensor,
    targets: Tensor,
    *,
    steps: int = 20,
    baseline: str = "blur",
    forward_batch_size: int = 256,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    r"""Deletion and insertion curves and their AUCs (Petsiuk, Das, Saenko 2018, RISE).

    Pixels are ordered by CAM value, descending (ties: lower row-major index first; NaN last).
    After step :math:`s \in \{0..S\}` the first :math:`n_s = \lfloor s \cdot HW / S \rfloor`
    pixels of that order (all channels) are

    * deletion: replaced by 0 (the mean colour for mean/std-normalised inputs), starting from
      the image;
    * insertion: copied from the image onto a canvas, which is the image blurred with a
      Gaussian (size 11, sigma 5) when ``baseline="blur"`` (RISE) or zeros for ``"zero"``.

    The curve value is :math:`p_s = \mathrm{softmax}(f(x_s))_{t}` for the target class
    :math:`t` and the AUC is the trapezoid rule over :math:`x = s/S`:
    :math:`\mathrm{AUC} = \frac{1}{S}\left(\sum_{s=0}^{S} p_s - \frac{p_0 + p_S}{2}\right)`.

    All ``2 * B * (S+1)`` perturbed images are built on the fly in chunks of
    ``forward_batch_size`` and sent through the model in as few forwards as possible.

    Args:
        model: classifier returning logits ``[N, num_classes]``; put in eval mode for the
            call, its flags restored afterwards.
        images: ``[B, C, H, W]`` float, as the model expects them (normalised).
        cams: ``[B, H, W]`` saliency at image resolution (only its order matters).
        targets: ``[B]`` integer class explained for each sample.
        steps: ``S``, the number of perturbation steps (>= 1).
        baseline: insertion canvas, ``"blur"`` (default) or ``"zero"``; deletion always uses 0.
        forward_batch_size: maximum number of images per forward.

    Returns:
        ``(deletion_auc [B], insertion_auc [B], (deletion_curve [B, S+1],
        insertion_curve [B, S+1]))``, float32 on the images' device.
    """
    targets = _check_inputs(model, images, cams, targets, forward_batch_size)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"`steps` must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    if baseline not in _BASELINES:
        raise ValueError(f"`baseline` must be one of {_BASELINES}, got {baseline!r}")

    b, c, h, w = images.shape
    device = images.device
    n_pix = h * w
    n_steps = steps + 1
    if b == 0:
        empty = torch.empty(0, device=device)
        curves = torch.empty(0, n_steps, device=device)
        return empty, empty.clone(), (curves, curves.clone())

    with torch.inference_mode(), _eval_mode(model):
        images = images.detach()
        ranks = _pixel_ranks(cams.to(device))  # [B, HW]
        counts = (torch.arange(n_steps, device=device) * n_pix) // steps  # [S+1]
        flat_images = images.reshape(b, c, n_pix)
        if baseline == "blur":
            canvas = _gaussian_blur(images).reshape(b, c, n_pix)
        else:
            canvas = torch.zeros_like(flat_images)

        total = 2 * b * n_steps  # deletion entries first, then insertion entries
        probs = torch.empty(total, device=device, dtype=torch.float32)
        for start in range(0, total, forward_batch_size):
            stop = min(start + forward_batch_size, total)
            idx = torch.arange(start, stop, device=device)
            is_insertion = idx >= b * n_steps
            local = idx % (b * n_steps)
            sample = local // n_steps
            step = local % n_steps
            # pixels among the first n_s of the order: [n, 1, HW]
            chosen = (ranks[sample] < counts[step][:, None])[:, None, :]
            # deletion shows the image where the pixel is NOT chosen (0 elsewhere); insertion
            # shows it where the pixel IS chosen (the canvas elsewhere)
            use_image = chosen == is_insertion[:, None, None]
            other = torch.where(is_insertion[:, None, None], canvas[sample], 0.0)
            batch = torch.where(use_image, flat_images[sample], other)
            logits = model(batch.reshape(-1, c, h, w))
            probs[start:stop] = _target_probability(logits, targets[sample])

        deletion_curve = probs[: b * n_steps].reshape(b, n_steps)
        insertion_curve = probs[b * n_steps :].reshape(b, n_steps)
        deletion_auc = _trapezoid_auc(deletion_curve)
        insertion_auc = _trapezoid_auc(insertion_curve)
    # clone outside inference mode: callers may modify the results in place
    return (
        deletion_auc.clone(),
        insertion_auc.clone(),
        (deletion_curve.clone(), insertion_curve.clone()),
    )


# --------------------------------------------------------------------------------------------
# average drop / increase in confidence


def _minmax(cams: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image min-max normalisation to [0, 1]; second value flags undefined maps.

    A map is undefined when it is constant (max == min, e.g. all-zero) or holds a non-finite
    value.
    """
    flat = cams.detach().flatten(1).float()
    finite = torch.isfinite(flat).all(dim=1)
    safe = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    lo = safe.min(dim=1, keepdim=True).values
    hi = safe.max(dim=1, keepdim=True).values
    span = hi - lo
    valid = finite & (span.squeeze(1) > 0)
    norm = (safe - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return norm.reshape(cams.shape), valid


def average_drop_increase(
    model: nn.Module,
    images: Tensor,
    cams: Tensor,
    targets: Tensor,
    *,
    forward_batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    r"""Average drop and increase in confidence (Chattopadhay et al. 2018, Grad-CAM++).

    With :math:`\hat{L} = (L - \min L) / (\max L - \min L)` the per-image min-max normalised
    CAM, the explanation map is :math:`E = x \odot \hat{L}` (broadcast over channels; 0 is the
    mean colour for normalised inputs). With :math:`Y = \mathrm{softmax}(f(x))_t` and
    :math:`O = \mathrm{softmax}(f(E))_t`:

    * :math:`\mathrm{drop} = \max(0, Y - O) / Y` (a fraction in [0, 1]; the paper averages it
      over the dataset and reports it x100 as a percentage);
    * :math:`\mathrm{increase} = \mathbb{1}[O > Y]` (its mean is the paper's rate, x100).

    Both are NaN for samples whose CAM is constant (including all-zero) or non-finite, and the
    drop is NaN when :math:`Y = 0`. Aggregation (mean over samples, excluding NaN) is left to
    the caller.

    Returns:
        ``(average_drop [B], increase_in_confidence [B])`` float32.
    """
    targets = _check_inputs(model, images, cams, targets, forward_batch_size)
    b = images.shape[0]
    if b == 0:
        empty = torch.empty(0, device=images.device)
        return empty, empty.clone()
    with torch.inference_mode(), _eval_mode(model):
        images = images.detach()
        norm, valid = _minmax(cams.to(images.device))
        explanation = images * norm[:, None].to(images.dtype)
        stacked = torch.cat([images, explanation], dim=0)
        stacked_targets = torch.cat([targets, targets], dim=0)
        probs = torch.empty(2 * b, device=images.device, dtype=torch.float32)
        for start in range(0, 2 * b, forward_batch_size):
            stop = min(start + forward_batch_size, 2 * b)
            probs[start:stop] = _target_probability(
                model(stacked[start:stop]), stacked_targets[start:stop]
            )
        y, o = probs[:b], probs[b:]
        nan = torch.full_like(y, math.nan)
        drop = torch.clamp(y - o, min=0) / torch.where(y > 0, y, torch.ones_like(y))
        drop = torch.where(valid & (y > 0), drop, nan)
        increase = torch.where(valid, (o > y).float(), nan)
    return drop.clone(), increase.clone()


# --------------------------------------------------------------------------------------------
# combined


def faithfulness(
    model: nn.Module,
    images: Tensor,
    cams: Tensor,
    targets: Tensor,
    *,
    steps: int = 20,
    baseline: str = "blur",
    forward_batch_size: int = 256,
) -> FaithfulnessResult:
    """All faithfulness metrics of one method: :func:`deletion_insertion` (Petsiuk et al.
    2018) and :func:`average_drop_increase` (Chattopadhay et al. 2018), as a
    :class:`FaithfulnessResult`."""
    del_auc, ins_auc, (del_curve, ins_curve) = deletion_insertion(
        model,
        images,
        cams,
        targets,
        steps=steps,
        baseline=baseline,
        forward_batch_size=forward_batch_size,
    )
    drop, increase = average_drop_increase(
        model, images, cams, targets, forward_batch_size=forward_batch_size
    )
    return FaithfulnessResult(
        deletion_auc=del_auc,
        insertion_auc=ins_auc,
        deletion_curve=del_curve,
        insertion_curve=ins_curve,
        average_drop=drop,
        increase_in_confidence=increase,
    )


def _subset_index(subset: Tensor | Sequence[int] | None, b: int, device: torch.device) -> Tensor:
    if subset is None:
        return torch.arange(b, device=device)
    idx = torch.as_tensor(subset, device=device)
    if idx.dtype == torch.bool:
        if idx.shape != (b,):
            raise ValueError(f"boolean `subset` must have shape [{b}], got {tuple(idx.shape)}")
        return idx.nonzero().squeeze(1)
    if idx.is_floating_point() or idx.dim() != 1:
        raise ValueError(f"`subset` must be 1-D integer indices or a [B] bool mask, got {idx}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= b):
        raise ValueError(f"`subset` indices must lie in [0, {b - 1}], got {idx.tolist()}")
    return idx.long()


def faithfulness_metrics(
    model: nn.Module,
    images: Tensor,
    cams_by_method: Mapping[str, Tensor],
    targets: Tensor,
    *,
    steps: int = 20,
    baseline: str = "blur",
    forward_batch_size: int = 256,
    subset: Tensor | Sequence[int] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Per-sample faithfulness metrics for several CAM methods at once.

    The images of every method are stacked so that all perturbed images of all methods go
    through the model in shared chunks of ``forward_batch_size``. See
    :func:`deletion_insertion` (Petsiuk, Das, Saenko 2018, RISE) and
    :func:`average_drop_increase` (Chattopadhay et al. 2018, Grad-CAM++) for the formulas.

    Args:
        cams_by_method: ``{method: cams [B, H, W]}``, e.g. the output of ``compute_cams``.
        subset: optional sample indices (or a ``[B]`` bool mask) to evaluate, as these
            metrics cost ``2 * (steps + 1) + 2`` forwards per sample and method; rows outside
            the subset are NaN so that the result stays aligned with the batch.

    Returns:
        ``{method: {"deletion_auc", "insertion_auc", "average_drop",
        "increase_in_confidence"}: Tensor[B]}``.
    """
    if not isinstance(cams_by_method, Mapping):
        raise TypeError(
            f"`cams_by_method` must be a mapping method -> cams, got "
            f"{type(cams_by_method).__name__}"
        )
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a tensor of shape [B, C, H, W], got {shape}")
    b = images.shape[0]
    device = images.device
    idx = _subset_index(subset, b, device)
    targets_t = torch.as_tensor(targets, device=device)
    if targets_t.dim() != 1 or targets_t.shape[0] != b:
        raise ValueError(f"`targets` must have shape [B] = [{b}], got {tuple(targets_t.shape)}")
    methods = list(cams_by_method)
    names = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
    out: dict[str, dict[str, Tensor]] = {
        m: {k: torch.full((b,), math.nan, device=device) for k in names} for m in methods
    }
    if not methods or idx.numel() == 0:
        return out
    for m in methods:
        cam = cams_by_method[m]
        if not isinstance(cam, Tensor) or tuple(cam.shape) != (b, *images.shape[2:]):
            shape = tuple(cam.shape) if isinstance(cam, Tensor) else type(cam).__name__
            raise ValueError(
                f"`cams_by_method[{m!r}]` must have shape [B, H, W] = "
                f"{(b, *images.shape[2:])}, got {shape}"
            )
    n = idx.numel()
    sub_images = images[idx].repeat(len(methods), 1, 1, 1)
    sub_targets = targets_t[idx].repeat(len(methods))
    sub_cams = torch.cat([cams_by_method[m].to(device)[idx] for m in methods], dim=0)
    res = faithfulness(
        model,
        sub_images,
        sub_cams,
        sub_targets,
        steps=steps,
        baseline=baseline,
        forward_batch_size=forward_batch_size,
    )
    for i, m in enumerate(methods):
        part = slice(i * n, (i + 1) * n)
        out[m]["deletion_auc"][idx] = res.deletion_auc[part]
        out[m]["insertion_auc"][idx] = res.insertion_auc[part]
        out[m]["average_drop"][idx] = res.average_drop[part]
        out[m]["increase_in_confidence"][idx] = res.increase_in_confidence[part]
    return out
