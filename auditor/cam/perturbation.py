"""Perturbation scoring: the batched extra forwards of Score-CAM, SS-CAM, IS-CAM, Ablation-CAM.

These methods weight channel ``k`` of the target layer by the model's score on a perturbed
input, so they cost extra forwards rather than a backward. This module builds the perturbed
inputs, shares the forwards that are provably identical (Score-CAM's deduplication) and runs the
rest in chunks; *which* module computes a chunk's logits (the validated inference copy or the
model, :mod:`auditor.cam.copies`) is the caller's ``forward``. No hooks, no autograd here: the
capture and the backward stay in :mod:`auditor.cam.engine`.

- Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPR-W):
  ``s_k = softmax(f(X * H_k))_c`` with ``H_k = norm(up(A_k))`` (:func:`masked_scores`).
- SS-CAM (Wang et al. 2020, "SS-CAM: Smoothed Score-CAM") and IS-CAM (Naidu et al. 2020,
  "IS-CAM: Integrated Score-CAM"): ``s_k`` averaged over noisy / integrated masks
  (:func:`sweep_scores`).
- Ablation-CAM (Desai & Ramaswamy 2020, WACV): ``y_c`` with channel ``k`` zeroed at the layer
  (:func:`ablated_scores`, :func:`ablate`).

Every function returns scores ``[B, K, T]`` (per image, channel and target).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .outputs import upsample_cams

__all__ = [
    "AUTO_SCORE_BATCH",
    "ablate",
    "ablated_scores",
    "chunk_size",
    "chunks",
    "masked_scores",
    "sweep_scores",
]

AUTO_SCORE_BATCH: dict[str, int] = {"cpu": 16}
"""Default perturbed inputs per extra forward by device type (others: 128). On CPU, batches of
16 ran 20-25 % faster per image than 128 (ResNet-18, 224x224, 2 cores: cache effects); GPUs
want large batches."""

PerturbedForward = Callable[..., Tensor]
"""``forward(inputs, fixed=False) -> float logits [n, C]`` in inference mode; ``fixed=True``
marks a chunk of the one repeated full size (eligible for the copy's traced tier)."""


def chunk_size(score_batch_size: int | None, device: torch.device) -> int:
    """Perturbed inputs per extra forward: ``score_batch_size`` or :data:`AUTO_SCORE_BATCH`."""
    return score_batch_size or AUTO_SCORE_BATCH.get(device.type, 128)


def chunks(total: int, size: int) -> Iterator[slice]:
    """``slice``s of ``size`` covering ``range(total)`` (the last one may be shorter)."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def masked_scores(
    images: Tensor, acts: Tensor, targets_bt: Tensor, forward: PerturbedForward, size: int
) -> tuple[Tensor, int]:
    """Score-CAM: softmax prob of each target for ``X * norm(up(A_k))`` -> ``([B, K, T], n)``.

    ``n`` is the number of masked inputs actually forwarded. Exact savings, no approximation:
    ``norm(up(A_k))`` depends on ``A_k`` only through its min-max normalised low-resolution map
    ``q_k`` (bilinear upsampling commutes with positive affine maps), so channels of one image
    with identical ``q_k`` share one forward, and constant channels (``H_k = 0``, the all-zero
    input) share one forward for the whole batch. The other masked images run in chunks of
    ``size``: full chunks with ``fixed=True`` (the copy's traced tier on CPU), the last partial
    chunk with ``fixed=False``.
    """
    batch, channels = acts.shape[:2]
    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    n_targets = targets_bt.shape[1]
    forwards = 0
    with torch.inference_mode():
        flat = acts.flatten(2)
        lo = flat.amin(2, keepdim=True)
        hi = flat.amax(2, keepdim=True)
        varying = (hi > lo).squeeze(2)  # [B, K]; upsampling keeps the range
        norm = (flat - lo) / torch.where(hi > lo, hi - lo, 1.0)  # [B, K, hw] in [0, 1]
        pairs = varying.nonzero()  # host sync: the number of masked forwards
        scores = torch.empty(batch, channels, n_targets, device=acts.device)
        if pairs.shape[0]:
            keys = torch.cat([pairs[:, :1].to(norm.dtype), norm[pairs[:, 0], pairs[:, 1]]], 1)
            unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
            first = torch.full((unique.shape[0],), pairs.shape[0], device=pairs.device)
            first = first.scatter_reduce(
                0, inverse, torch.arange(pairs.shape[0], device=pairs.device), "amin"
            )
            reps = pairs[first]  # one (b, k) per distinct (image, mask)
            rep_scores = torch.empty(reps.shape[0], n_targets, device=acts.device)
            grid = acts.shape[-2:]
            for chunk in chunks(reps.shape[0], size):
                b_idx, k_idx = reps[chunk, 0], reps[chunk, 1]
                up = upsample_cams(norm[b_idx, k_idx].unflatten(1, grid), image_size)  # [n, H, W]
                up_lo = up.flatten(1).amin(1)[:, None, None]
                up_hi = up.flatten(1).amax(1)[:, None, None]
                masks = (up - up_lo) / torch.where(up_hi > up_lo, up_hi - up_lo, 1.0)
                masked = images[b_idx] * masks[:, None].to(images.dtype)
                # full chunks may take the copy's traced tier, a last partial one the eager
                # copy: decided by the chunk's size alone, never by what ran before
                fixed = masked.shape[0] == size
                probs = forward(masked, fixed=fixed).softmax(1)
                rep_scores[chunk] = probs.gather(1, targets_bt[b_idx])
            scores[pairs[:, 0], pairs[:, 1]] = rep_scores[inverse]
            forwards += int(reps.shape[0])
        if not bool(varying.all()):
            zero = forward(torch.zeros_like(images[:1])).softmax(1)[0]
            forwards += 1
            const = (~varying).nonzero()
            scores[const[:, 0], const[:, 1]] = zero[targets_bt[const[:, 0]]]
    return scores, forwards


def sweep_scores(
    images: Tensor,
    acts: Tensor,
    targets_bt: Tensor,
    samples: int,
    std: float,
    integrated: bool,
    *,
    forward: PerturbedForward,
    size: int,
    seed: int,
) -> Tensor:
    """SS-CAM / IS-CAM channel scores ``[B, K, T]``: mean target logit over ``samples``.

    Masks ``m_k = up(norm(A_k))`` (per-channel min-max with ``1e-8`` in the denominator, as
    torch-cam). SS-CAM (``integrated=False``): inputs ``X * (m_k + eps)``, ``eps ~ N(0,
    std^2)`` per pixel, drawn in (sample, image, channel) order from a generator seeded with
    ``seed``. IS-CAM: inputs ``c_i X * m_k`` with ``c_i = sum_{j<=i} j / samples``. Chunks of
    ``size`` inputs per ``forward``.
    """
    batch, channels = acts.shape[:2]
    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    flat = acts.flatten(2)
    lo = flat.amin(2, keepdim=True)
    norm = flat - lo
    norm = (norm / (norm.amax(2, keepdim=True) + 1e-8)).reshape(acts.shape)
    total = batch * channels
    b_all = torch.arange(batch, device=acts.device).repeat_interleave(channels)
    k_all = torch.arange(channels, device=acts.device).repeat(batch)
    sums = torch.zeros(total, targets_bt.shape[1], device=acts.device)
    gen = torch.Generator().manual_seed(seed)
    coeff = 0.0
    with torch.inference_mode():
        for step in range(samples):
            coeff += (step + 1) / samples
            for chunk in chunks(total, size):
                b_idx, k_idx = b_all[chunk], k_all[chunk]
                masks = F.interpolate(
                    norm[b_idx, k_idx][:, None],
                    size=image_size,
                    mode="bilinear",
                    align_corners=False,
                )
                if integrated:
                    inputs = images[b_idx] * (coeff * masks).to(images.dtype)
                else:
                    eps = torch.randn(masks.shape, generator=gen) * std
                    noisy = masks + eps.to(masks.device, masks.dtype)
                    inputs = images[b_idx] * noisy.to(images.dtype)
                logits = forward(inputs, fixed=inputs.shape[0] == size)
                sums[chunk] += logits.gather(1, targets_bt[b_idx])
    return (sums / samples).reshape(batch, channels, -1)


def ablated_scores(
    raw: Tensor,
    channels: int,
    targets_bt: Tensor,
    forward_ablated: Callable[[Tensor, Tensor], Tensor],
    size: int,
    reshape: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """Ablation-CAM: target logits with channel ``k`` zeroed at the layer -> ``[B, K, T]``.

    ``raw`` is the layer's captured output ``[B, ...]`` (``channels`` = K of its reshaped grid);
    ``forward_ablated(ablated_raw, sample_index)`` returns the logits of the network run on from
    the ablated layer output (the fx tail, or a full forward with the layer's output replaced).
    """
    batch = raw.shape[0]
    total = batch * channels
    out = torch.empty(total, targets_bt.shape[1], device=raw.device)
    b_all = torch.arange(batch, device=raw.device).repeat_interleave(channels)
    k_all = torch.arange(channels, device=raw.device).repeat(batch)
    with torch.inference_mode():
        for chunk in chunks(total, size):
            b_idx, k_idx = b_all[chunk], k_all[chunk]
            logits = forward_ablated(ablate(raw[b_idx], k_idx, reshape), b_idx)
            out[chunk] = logits.gather(1, targets_bt[b_idx])
    return out.reshape(batch, channels, -1)


def ablate(raw: Tensor, k_idx: Tensor, reshape: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Zero channel ``k_idx[i]`` of sample ``i`` (in the reshaped grid's channel space)."""
    n = raw.shape[0]
    rows = torch.arange(n, device=raw.device)
    if reshape is None:
        ablated = raw.clone()
        ablated[rows, k_idx] = 0
        return ablated
    # the reshape is a re-indexing r: its adjoint maps the one-hot grid of channel k to the
    # indicator of the raw entries that land in channel k
    with torch.inference_mode(False), torch.enable_grad():
        probe = torch.zeros(raw.shape, device=raw.device, requires_grad=True)
        grid = reshape(probe)
        onehot = torch.zeros(grid.shape, device=raw.device)
        onehot[rows, k_idx] = 1.0
        (indicator,) = torch.autograd.grad(grid, probe, grad_outputs=onehot)
    return raw * (indicator == 0).to(raw.dtype)
