"""SS-CAM and IS-CAM channel scores: the noisy / integrated masked forwards, batched.

Both methods score each channel ``k`` of the target layer by the target logit ``y_c`` of masked
copies of the input, with the masks ``m_k = up(norm(A_k))`` (per-channel min-max with ``1e-8`` in
the denominator, ``up`` bilinear upsampling; torch-cam's definitions):

* SS-CAM (Wang et al. 2020): ``s_k = (1/S) sum_s y_c(X * (m_k + eps_s))``, ``eps_s ~ N(0, std^2)``
  per pixel;
* IS-CAM (Naidu et al. 2020): ``s_k = (1/S) sum_{i=1..S} y_c(c_i X * m_k)``,
  ``c_i = sum_{j<=i} j / S``.

Each costs ``S x K`` masked forwards per image, so its speed is the forward's. This module only
decides *which* inputs are forwarded and in which batches; the forward itself (the engine's
validated inference copy, :mod:`auditor.cam.replica`) is a callable passed in. What is done to
spend fewer, fuller forwards, exactly (no approximation):

1. The (image, channel, sample) inputs of the whole batch form one flat job list, cut into
   chunks of ``chunk`` inputs (``score_batch_size``): images and channels share forwards and at
   most one chunk per call is partial (the traced tier of the copy runs full chunks).
2. Upsampled masks are computed once per (image, channel), not once per sample: IS-CAM's jobs are
   ordered channel-major (the samples of one mask are consecutive); SS-CAM's, whose noise is drawn
   sample-major, keep every mask of the batch when they fit in :data:`MASK_CACHE_BYTES`.
3. IS-CAM's inputs are deterministic, so channels of one image with the same normalised map share
   their forwards, and constant channels (``m_k = 0``: the all-zero input for every ``c_i``) share
   one forward for the whole batch (Score-CAM does the same, :meth:`CamEngine._masked_scores`).
   SS-CAM's inputs differ by their noise, so nothing is shared.

The chunk size never changes the noise: it is drawn from a CPU generator seeded with ``seed`` in
(sample, image, channel, pixel) order, in blocks of :data:`NOISE_BLOCK` masks that never cross a
sample. That stream is the same as one ``[B, K, H, W]`` draw per sample (what torch-cam draws
from its global generator), except where the last block of a sample holds fewer than 16 values.
Maps computed with different chunk sizes therefore agree within float rounding (a chunk's
composition only decides whether it takes the copy's traced tier).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MASK_CACHE_BYTES", "NOISE_BLOCK", "integrated_scores", "smoothed_scores"]

MASK_CACHE_BYTES = 128 << 20
"""SS-CAM keeps the batch's upsampled masks when they take at most this many bytes (else each
chunk upsamples its own)."""
NOISE_BLOCK = 16
"""SS-CAM's noise is drawn ``NOISE_BLOCK`` masks at a time (a multiple of 16 values per draw, so
that blocks concatenate to the same stream as one large draw)."""

Forward = Callable[[Tensor, bool], Tensor]
"""``(inputs [n, C, H, W], full_chunk) -> float logits [n, classes]`` without capture."""


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


def _chunks(total: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, total)) for start in range(0, total, chunk)]


def smoothed_scores(
    images: Tensor,
    acts: Tensor,
    targets_bt: Tensor,
    samples: int,
    std: float,
    *,
    forward: Forward,
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
        forward: logits of a batch of masked inputs (see :data:`Forward`).
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
        for part in _chunks(total, chunk):
            row = torch.arange(part.start, part.stop, device=acts.device) % rows
            masks = cached[row] if cached is not None else _upsample(norm[row], grid, size)
            eps = noise.take(part.stop - part.start).to(masks.device, masks.dtype)
            inputs = images[b_all[row]] * (masks + eps).to(images.dtype)
            logits = forward(inputs, inputs.shape[0] == chunk)
            # one row appears at most once per sample, so this adds in sample order
            sums.index_add_(0, row, logits.gather(1, t_all[row]))
    return (sums / samples).reshape(batch, channels, -1)


def integrated_scores(
    images: Tensor,
    acts: Tensor,
    targets_bt: Tensor,
    samples: int,
    *,
    forward: Forward,
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
            for part in _chunks(total, chunk):
                jobs = torch.arange(part.start, part.stop, device=acts.device)
                rep, steps = jobs // samples, jobs % samples
                lo, hi = int(rep[0]), int(rep[-1]) + 1
                masks = _upsample(norm[reps[lo:hi, 0], reps[lo:hi, 1]], grid, size)[rep - lo]
                b_idx = reps[rep, 0]
                inputs = images[b_idx] * (coeff_t[steps, None, None, None] * masks).to(images.dtype)
                logits = forward(inputs, inputs.shape[0] == chunk)
                per_step[rep, steps] = logits.gather(1, targets_bt[b_idx])
            sums = per_step[:, 0].clone()
            for step in range(1, samples):  # sequential, as a running sum over the steps
                sums += per_step[:, step]
            scores[pairs[:, 0], pairs[:, 1]] = (sums / samples)[inverse]
        if not bool(varying.all()):
            zero = forward(torch.zeros_like(images[:1]), False)[0]  # y(c_i X * 0) = y(0)
            const = (~varying).nonzero()
            scores[const[:, 0], const[:, 1]] = zero[targets_bt[const[:, 0]]]
    return scores
