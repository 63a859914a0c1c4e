"""Bootstrap intervals of means and paired differences (BCa with a percentile fallback;
:mod:`auditor.stats` gives the formulas)."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
from scipy import stats as _sps

from auditor.stats.intervals import (
    Interval,
    as_1d,
    check_boot,
    check_confidence,
    empty_interval,
    finite_pairs,
)

_CHUNK_ELEMENTS = 2_000_000  # counts-matrix elements generated per chunk (memory bound)


def _boot_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Replicate means ``[G, n_boot]`` for the rows of ``x`` (``[G, m]``, all of size ``m``).

    The indices come from ``default_rng(seed)`` in chunks of ``rows x m`` (a function of
    ``m`` only), so they depend on ``(seed, m, n_boot)`` alone. One row: gather and sum. Several
    rows: turn the indices into counts once and take ``counts @ x`` for all rows (``einsum``,
    single-threaded on purpose: BLAS thread start-up dominates at these sizes).
    """
    g, m = x.shape
    rng = np.random.default_rng(seed)
    rows = max(1, min(n_boot, _CHUNK_ELEMENTS // m))
    out = np.empty((g, n_boot), dtype=np.float64)
    offsets = (np.arange(rows, dtype=np.int64) * m)[:, None]
    for start in range(0, n_boot, rows):
        r = min(rows, n_boot - start)
        idx = rng.integers(0, m, size=(r, m))
        if g == 1:
            out[0, start : start + r] = x[0][idx].sum(axis=1)
        else:
            flat = (idx + offsets[:r]).ravel()
            counts = np.bincount(flat, minlength=r * m).reshape(r, m).astype(np.float64)
            out[:, start : start + r] = np.einsum("gm,rm->gr", x, counts)
    out /= m
    return out


def row_quantiles(sorted_rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row quantiles with per-row levels ``q [G, k]`` (numpy's default 'linear' rule)."""
    n = sorted_rows.shape[1]
    pos = np.clip(q, 0.0, 1.0) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    a = np.take_along_axis(sorted_rows, lo, axis=1)
    b = np.take_along_axis(sorted_rows, hi, axis=1)
    return a + (b - a) * frac


def _intervals_same_size(
    x: np.ndarray, confidence: float, n_boot: int, seed: int, method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high, used_bca) for each row of ``x`` ``[G, m]``, ``m >= 1``."""
    g, m = x.shape
    est = x.mean(axis=1)
    constant = (x == x[:, :1]).all(axis=1)
    alpha = 1.0 - confidence
    levels = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
    low = np.where(constant, x[:, 0], np.nan)
    high = low.copy()
    used_bca = np.zeros(g, dtype=bool)
    todo = ~constant
    if not todo.any():
        return np.where(constant, x[:, 0], est), low, high, used_bca
    xs = x[todo]
    theta = est[todo]
    boots = np.sort(_boot_means(xs, n_boot, seed), axis=1)
    q = np.broadcast_to(levels, (xs.shape[0], 2)).copy()
    if method == "bca":
        below = (boots < theta[:, None]).sum(axis=1) + 0.5 * (boots == theta[:, None]).sum(axis=1)
        prop = below / n_boot
        dev = xs - theta[:, None]
        s2 = (dev**2).sum(axis=1)
        s3 = (dev**3).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = _sps.norm.ppf(prop)
            acc = s3 / (6.0 * s2**1.5)
            zk = _sps.norm.ppf(levels)[None, :]
            num = z0[:, None] + zk
            den = 1.0 - acc[:, None] * num
            adj = _sps.norm.cdf(z0[:, None] + num / den)
        ok = np.isfinite(z0) & np.isfinite(acc) & (s2 > 0) & (den > 0).all(axis=1)
        ok &= np.isfinite(adj).all(axis=1)
        q[ok] = adj[ok]
        sub = np.zeros(xs.shape[0], dtype=bool)
        sub[ok] = True
        used_bca[todo] = sub
    lh = row_quantiles(boots, q)
    low[todo] = lh[:, 0]
    high[todo] = lh[:, 1]
    est = np.where(constant, x[:, 0], est)
    return est, low, high, used_bca


def bootstrap_mean_ci(
    values: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    method: str = "bca",
) -> Interval:
    """Bootstrap confidence interval of the mean, NaN-aware.

    Non-finite values are dropped and counted in ``n_nan``. ``n == 0``: all NaN
    (``method="none"``); ``n == 1`` or constant values: ``low == high == value`` (no
    resampling noise, no warning). ``method="bca"`` (default; Efron 1987) falls back to the
    percentile interval where BCa is undefined (see the module docstring); the returned
    ``method`` names the one used. Resampling is vectorised (count matrices times values, no
    Python loop over replicates) and deterministic given ``seed``.
    """
    confidence = check_confidence(confidence)
    check_boot(n_boot, method)
    arr = as_1d("values", values)
    finite = np.isfinite(arr)
    x = arr[finite]
    n_nan = int(arr.size - x.size)
    if x.size == 0:
        return empty_interval(n_nan)
    est, low, high, bca = _intervals_same_size(x[None, :], confidence, int(n_boot), seed, method)
    used = "bca" if bca[0] else "percentile"
    return Interval(float(est[0]), float(low[0]), float(high[0]), int(x.size), n_nan, used)


def grouped_bootstrap_mean_ci(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    method: str = "bca",
) -> dict[Hashable, Interval]:
    """:func:`bootstrap_mean_ci` for every group at once: ``{group: Interval}``.

    ``groups`` holds one label per value (ints or strings); keys are the unique labels as
    Python scalars, in sorted order. Each group's interval equals
    ``bootstrap_mean_ci(values[groups == g], seed=seed, ...)`` (module docstring: the
    resampling counts depend only on the seed and the sample size), up to floating-point
    summation order. Groups whose values are all non-finite get an all-NaN interval. Groups
    of the same (finite) size are resampled together with one matrix product, so 1,000
    classes over 50,000 samples take well under a second per metric.
    """
    confidence = check_confidence(confidence)
    check_boot(n_boot, method)
    arr = as_1d("values", values)
    grp = np.asarray(groups)
    if grp.shape != arr.shape:
        raise ValueError(
            f"`groups` must have the same shape as `values` {arr.shape}, got {grp.shape}"
        )
    if arr.size == 0:
        return {}
    labels, inverse = np.unique(grp, return_inverse=True)
    inverse = inverse.reshape(-1)
    finite = np.isfinite(arr)
    n_total = np.bincount(inverse, minlength=labels.size)
    n_ok = np.bincount(inverse[finite], minlength=labels.size)
    # values of each group, contiguous: sort the finite values by group
    fin_inv = inverse[finite]
    order = np.argsort(fin_inv, kind="stable")
    xs = arr[finite][order]
    starts = np.concatenate([[0], np.cumsum(n_ok)[:-1]])
    results: dict[Hashable, Interval] = {}
    for m in np.unique(n_ok):
        gidx = np.flatnonzero(n_ok == m)
        if m == 0:
            for gi in gidx:
                results[_key(labels[gi])] = empty_interval(int(n_total[gi]))
            continue
        block = xs[starts[gidx][:, None] + np.arange(m)[None, :]]
        est, low, high, bca = _intervals_same_size(block, confidence, int(n_boot), seed, method)
        for j, gi in enumerate(gidx):
            results[_key(labels[gi])] = Interval(
                float(est[j]),
                float(low[j]),
                float(high[j]),
                int(m),
                int(n_total[gi] - m),
                "bca" if bca[j] else "percentile",
            )
    return {k: results[k] for k in (_key(lab) for lab in labels)}


def _key(label: Any) -> Hashable:
    return label.item() if isinstance(label, np.generic) else label


def paired_bootstrap_diff_ci(
    a: np.ndarray,
    b: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    method: str = "bca",
) -> Interval:
    """Bootstrap interval of ``mean(b - a)`` over the pairs where both are finite.

    Pairs are resampled together (the same indices for ``a`` and ``b``, i.e. the differences
    are resampled), Efron & Tibshirani 1993. ``n_nan`` counts the dropped pairs. Same rules as
    :func:`bootstrap_mean_ci` (the same seed gives the same resampling as
    ``bootstrap_mean_ci(b - a)`` on the kept pairs).
    """
    d, dropped = finite_pairs(a, b)
    res = bootstrap_mean_ci(d, confidence=confidence, n_boot=n_boot, seed=seed, method=method)
    return Interval(res.estimate, res.low, res.high, res.n, dropped, res.method)


def bootstrap_diff_ci(
    a: Any,
    b: Any,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    r"""Percentile bootstrap interval of :math:`\bar a - \bar b` for two independent samples.

    Each replicate resamples ``a`` and ``b`` separately, with replacement and at their own
    sizes (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 8.3, two-sample
    problem); the interval is the ``alpha/2, 1 - alpha/2`` quantiles (linear interpolation) of
    the replicate differences :math:`\bar a^* - \bar b^*`. Non-finite values are dropped and
    counted in ``n_nan``; ``n`` is the number of values used (both samples). Either sample
    empty: all NaN (``method="none"``). Deterministic for a ``seed``.
    """
    x = as_1d("a", a)
    y = as_1d("b", b)
    confidence = check_confidence(confidence)
    check_boot(n_boot, "percentile")
    fx, fy = x[np.isfinite(x)], y[np.isfinite(y)]
    n_nan = int(x.size - fx.size + y.size - fy.size)
    if not fx.size or not fy.size:
        return Interval(math.nan, math.nan, math.nan, int(fx.size + fy.size), n_nan, "none")
    est = float(fx.mean() - fy.mean())
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(fx.size, fy.size))
    reps = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        r = min(rows, n_boot - start)
        ma = fx[rng.integers(0, fx.size, (r, fx.size))].mean(1)
        mb = fy[rng.integers(0, fy.size, (r, fy.size))].mean(1)
        reps[start : start + r] = ma - mb
    alpha = 1.0 - confidence
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(est, float(lo), float(hi), int(fx.size + fy.size), n_nan, "percentile")
