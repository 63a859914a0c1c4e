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
    "MASK_CACHE_BYTES",
    "NOISE_BLOCK",
    "ablate",
    "ablated_scores",
    "chunk_size",
    "chunks",
    "masked_scores",
    "integrated_scores",
    "smoothed_scores",
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

    ``integrated=False``: :func:`smoothed_scores` (SS-CAM, noise ``N(0, std^2)`` from ``seed``);
    ``True``: :func:`integrated_scores` (IS-CAM). Chunks of ``size`` inputs per ``forward``.

    Both cost ``S x K`` masked forwards per image; what is done to spend fewer, fuller forwards,
    exactly (no approximation):

    1. The (image, channel, sample) inputs of the whole batch form one flat job list cut into
       chunks of ``size``: images, channels and samples share forwards, and at most one chunk
       per call is partial (the copy's traced tier runs the full ones).
    2. Upsampled masks are computed once per (image, channel), not once per sample: IS-CAM's
       jobs are ordered channel-major; SS-CAM's, whose noise is drawn sample-major, keep every
       mask of the batch when they fit in :data:`MASK_CACHE_BYTES`.
    3. IS-CAM's inputs are deterministic, so channels of one image with the same normalised map
       share their forwards, and constant channels (``m_k = 0``: the all-zero input for every
       ``c_i``) share one forward for the whole batch. SS-CAM's inputs differ by their noise.

    The chunk size never changes SS-CAM's noise: it is drawn from a CPU generator seeded with
    ``seed`` in (sample, image, channel, pixel) order, in blocks of :data:`NOISE_BLOCK` masks
    that never cross a sample: the same stream as one ``[B, K, H, W]`` draw per sample (what
    torch-cam draws from its global generator) except where a sample's last block holds fewer
    than 16 values, and the same as this function drew before it was batched (chunks of 16).
    Maps for different chunk sizes agree within float rounding (a chunk's composition only
    decides whether it takes the copy's traced tier).
    """
    if integrated:
        return integrated_scores(images, acts, targets_bt, samples, forward=forward, chunk=size)
    return smoothed_scores(
        images, acts, targets_bt, samples, std, forward=forward, chunk=size, seed=seed
    )


MASK_CACHE_BYTES = 128 << 20
"""SS-CAM keeps the batch's upsampled masks when they take at most this many bytes (else each
chunk upsamples its own)."""
NOISE_BLOCK = 16
"""SS-CAM's noise is drawn ``NOISE_BLOCK`` masks at a time (a multiple of 16 values per draw, so
that blocks concatenate to the same stream as one large draw)."""


def _normalised(acts: Tensor) -> Tensor:
    """``(A_k - min A_k) / (max (A_k - min A_k) + 1e-8)`` per map: ``[B, K, hw]``."""
    flat = acts.flatten(2)
    norm = flat - flat.amin(2, keepdim=True)
    return norm / (norm.amax(2, keepdim=True) + 1e-8)


def _upsample(rows: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Bilinear ``[n, hw]`` low-resolution maps -> ``[n, 1, H, W]`` masks."""
    return F.interpolate(
        rows.unflatten(1, grid)[:, None], size=size, mode="bilinear", align_corners=False
    )


class _NoiseStream:
    """SS-CAM's noise, handed out job by job in (sample, row) order, drawn in fixed blocks."""

    def __init__(self, seed: int, rows: int, size: tuple[int, int], std: float) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.rows, self.size, self.std = rows, size, std
        self.row = 0  # next row of the current sample to draw
        self.pending: list[Tensor] = []
        self.available = 0

    def take(self, n: int) -> Tensor:
        """The next ``n`` masks' noise ``[n, 1, H, W]`` (float32, CPU)."""
        while self.available < n:
            block = min(NOISE_BLOCK, self.rows - self.row)
            self.pending.append(torch.randn(block, 1, *self.size, generator=self.gen) * self.std)
            self.available += block
            self.row = (self.row + block) % self.rows
        out = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        head, rest = out[:n], out[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.available = int(rest.shape[0])
        return head


def smoothed_scores(
    images: Tensor,
    acts: Tensor,
    targets_bt: Tensor,
    samples: int,
    std: float,
    *,
    forward: PerturbedForward,
    chunk: int,
    seed: int,
) -> Tensor:
    """SS-CAM's channel scores ``[B, K, T]``: ``(1/S) sum_s y_c(X * (m_k + eps_s))``.

    Args:
        images: ``[B, C, H, W]`` the inputs of the capture.
        acts: ``[B, K, h, w]`` float32 activations of the target layer.
        targets_bt: ``[B, T]`` long, the classes scored.
        samples: ``S``, noisy copies per mask.
        std: the noise's standard deviation.
        forward: logits of a batch of masked inputs (see :data:`PerturbedForward`).
        chunk: masked inputs per forward.
        seed: seed of the noise's CPU generator.
    """
    batch, channels = acts.shape[:2]
    size = (int(images.shape[-2]), int(images.shape[-1]))
    grid = (int(acts.shape[-2]), int(acts.shape[-1]))
    rows = batch * channels
    norm = _normalised(acts).reshape(rows, -1)
    b_all = torch.arange(batch, device=acts.device).repeat_interleave(channels)
    t_all = targets_bt[b_all]  # [rows, T]
    cached = None
    if rows * size[0] * size[1] * 4 <= MASK_CACHE_BYTES:
        cached = _upsample(norm, grid, size)
    noise = _NoiseStream(seed, rows, size, std)
    sums = torch.zeros(rows, targets_bt.shape[1], device=acts.device)
    total = rows * samples  # job j: sample j // rows, row j % rows
    with torch.inference_mode():
        for part in chunks(total, chunk):
            row = torch.arange(part.start, part.stop, device=acts.device) % rows
            masks = cached[row] if cached is not None else _upsample(norm[row], grid, size)
            eps = noise.take(part.stop - part.start).to(masks.device, masks.dtype)
            inputs = images[b_all[row]] * (masks + eps).to(images.dtype)
            logits = forward(inputs, fixed=inputs.shape[0] == chunk)
            # one row appears at most once per sample, so this adds in sample order
            sums.index_add_(0, row, logits.gather(1, t_all[row]))
    return (sums / samples).reshape(batch, channels, -1)


def integrated_scores(
    images: Tensor,
    acts: Tensor,
    targets_bt: Tensor,
    samples: int,
    *,
    forward: PerturbedForward,
    chunk: int,
) -> Tensor:
    """IS-CAM's channel scores ``[B, K, T]``: ``(1/S) sum_{i=1..S} y_c(c_i X * m_k)``.

    ``c_i = sum_{j<=i} j / S``. Arguments as :func:`smoothed_scores` (no noise, no seed).
    Distinct normalised maps of one image are forwarded once per ``c_i``; constant maps take
    the score of the all-zero input (one forward for the whole batch).
    """
    batch, channels = acts.shape[:2]
    size = (int(images.shape[-2]), int(images.shape[-1]))
    grid = (int(acts.shape[-2]), int(acts.shape[-1]))
    n_targets = targets_bt.shape[1]
    coeffs = []
    coeff = 0.0
    for step in range(samples):  # the same float accumulation as torch-cam's loop
        coeff += (step + 1) / samples
        coeffs.append(coeff)
    coeff_t = torch.tensor(coeffs, dtype=images.dtype, device=images.device)
    scores = torch.empty(batch, channels, n_targets, device=acts.device)
    with torch.inference_mode():
        norm = _normalised(acts)  # [B, K, hw]
        varying = norm.amax(2) > 0  # constant maps normalise to exactly 0
        pairs = varying.nonzero()  # [P, 2] (image, channel); host sync
        if pairs.shape[0]:
            keys = torch.cat([pairs[:, :1].to(norm.dtype), norm[pairs[:, 0], pairs[:, 1]]], 1)
            unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
            first = torch.full((unique.shape[0],), pairs.shape[0], device=pairs.device)
            first = first.scatter_reduce(
                0, inverse, torch.arange(pairs.shape[0], device=pairs.device), "amin"
            )
            reps = pairs[first]  # one (image, channel) per distinct (image, map)
            n_reps = reps.shape[0]
            per_step = torch.empty(n_reps, samples, n_targets, device=acts.device)
            total = n_reps * samples  # job j: representative j // S, step j % S
            for part in chunks(total, chunk):
                jobs = torch.arange(part.start, part.stop, device=acts.device)
                rep, steps = jobs // samples, jobs % samples
                lo, hi = int(rep[0]), int(rep[-1]) + 1
                masks = _upsample(norm[reps[lo:hi, 0], reps[lo:hi, 1]], grid, size)[rep - lo]
                b_idx = reps[rep, 0]
                inputs = images[b_idx] * (coeff_t[steps, None, None, None] * masks).to(images.dtype)
                logits = forward(inputs, fixed=inputs.shape[0] == chunk)
                per_step[rep, steps] = logits.gather(1, targets_bt[b_idx])
            sums = per_step[:, 0].clone()
            for step in range(1, samples):  # sequential, as a running sum over the steps
                sums += per_step[:, step]
            scores[pairs[:, 0], pairs[:, 1]] = (sums / samples)[inverse]
        if not bool(varying.all()):
            zero = forward(torch.zeros_like(images[:1]))[0]  # y(c_i X * 0) = y(0)
            const = (~varying).nonzero()
            scores[const[:, 0], const[:, 1]] = zero[targets_bt[const[:, 0]]]
    return scores


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
