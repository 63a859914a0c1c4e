"""Confidence intervals and paired tests for the report (numpy / scipy, NaN-aware).

Every function drops non-finite values (NaN, and +-inf) and counts them in ``n_nan``: a metric
is NaN where it is undefined (empty mask, all-zero CAM...), and an aggregate must say how many
samples it could not use.

Bootstrap of a mean
-------------------
For a sample ``x_1..x_m``, each bootstrap replicate draws ``m`` indices uniformly with
replacement; its mean is ``(1/m) sum_j c_j x_j`` with ``c`` the replicate's index counts. The
count matrix ``C`` (``n_boot x m``) depends only on ``(seed, m, n_boot)`` (drawn from
``numpy.random.default_rng(seed)``), so all samples of the same size share it and their
replicate means come out of one matrix product ``X @ C.T / m``. That makes
:func:`grouped_bootstrap_mean_ci` fast for many classes x many metrics, and it defines the seed
semantics: **the interval of group g equals** ``bootstrap_mean_ci(values[groups == g],
seed=seed)`` (the same counts, up to floating-point summation order). Groups of equal size
therefore reuse the same resampling pattern; this does not bias any interval (each is a valid
bootstrap) but their Monte Carlo errors are correlated.

Intervals: percentile (Efron 1979) or BCa, bias-corrected and accelerated (Efron 1987,
"Better Bootstrap Confidence Intervals", JASA; Efron & Tibshirani 1993, "An Introduction to the
Bootstrap", ch. 14)::

    z0 = Phi^-1( (#{theta* < theta_hat} + #{theta* == theta_hat} / 2) / B )
    a  = sum (x_i - mean)^3 / (6 (sum (x_i - mean)^2)^(3/2))   (jackknife acceleration of a mean)
    alpha_k = Phi( z0 + (z0 + z_k) / (1 - a (z0 + z_k)) ),  z_k = Phi^-1(alpha/2), Phi^-1(1-alpha/2)

and the interval is the ``alpha_1, alpha_2`` quantiles (linear interpolation) of the replicate
means. Where BCa is undefined (constant data: ``a`` is 0/0; ``z0`` infinite; a non-positive
denominator) the percentile interval is used and ``method`` says ``"percentile"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _sps

__all__ = [
    "Interval",
    "bootstrap_diff_ci",
    "bootstrap_mean_ci",
    "grouped_bootstrap_mean_ci",
    "paired_bootstrap_diff_ci",
    "paired_test",
    "two_proportion_diff_ci",
    "wilson_interval",
]

_METHODS = ("bca", "percentile")
_CHUNK_ELEMENTS = 2_000_000  # counts-matrix elements generated per chunk (memory bound)


def _json_float(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    ``n``: values used; ``n_nan``: values dropped as non-finite; ``method``: how the interval
    was made (``"bca"``, ``"percentile"``, ``"wilson"``, ``"newcombe"``, or ``"none"`` when
    there was no data).
    """

    estimate: float
    low: float
    high: float
    n: int
    n_nan: int
    method: str

    def to_dict(self) -> dict[str, float | int | None]:
        """``{"mean", "ci_low", "ci_high", "n", "n_nan"}`` with NaN as ``None`` (JSON)."""
        return {
            "mean": _json_float(self.estimate),
            "ci_low": _json_float(self.low),
            "ci_high": _json_float(self.high),
            "n": int(self.n),
            "n_nan": int(self.n_nan),
        }


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise TypeError(f"`confidence` must be a float, got {type(confidence).__name__}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
    return float(confidence)


def _check_boot(n_boot: int, method: str) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"`n_boot` must be an int >= 2, got {n_boot!r}")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}")


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------
# bootstrap core
# --------------------------------------------------------------------------------------------
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


def _row_quantiles(sorted_rows: np.ndarray, q: np.ndarray) -> np.ndarray:
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
    lh = _row_quantiles(boots, q)
    low[todo] = lh[:, 0]
    high[todo] = lh[:, 1]
    est = np.where(constant, x[:, 0], est)
    return est, low, high, used_bca


def _empty_interval(n_nan: int) -> Interval:
    return Interval(math.nan, math.nan, math.nan, 0, n_nan, "none")


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
    confidence = _check_confidence(confidence)
    _check_boot(n_boot, method)
    arr = _as_1d("values", values)
    finite = np.isfinite(arr)
    x = arr[finite]
    n_nan = int(arr.size - x.size)
    if x.size == 0:
        return _empty_interval(n_nan)
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
    confidence = _check_confidence(confidence)
    _check_boot(n_boot, method)
    arr = _as_1d("values", values)
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
                results[_key(labels[gi])] = _empty_interval(int(n_total[gi]))
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


# --------------------------------------------------------------------------------------------
# proportions
# --------------------------------------------------------------------------------------------
def _wilson_bounds(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends (no rounding)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    r"""Wilson score interval for a binomial proportion (Wilson 1927, "Probable inference, the
    law of succession, and statistical inference", JASA).

    .. math:: \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n}
              + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}},\qquad z = \Phi^{-1}(1 - \alpha/2)

    E.g. 8/10 at 95 %: (0.4902, 0.9433). ``n == 0``: all NaN (``method="none"``).
    """
    k = _check_count("successes", successes)
    n = _check_count("n", n)
    if k > n:
        raise ValueError(f"`successes` must be <= n = {n}, got {k}")
    confidence = _check_confidence(confidence)
    if n == 0:
        return _empty_interval(0)
    z = float(_sps.norm.ppf(1 - (1 - confidence) / 2))
    lo, hi = _wilson_bounds(k, n, z)
    return Interval(k / n, lo, hi, n, 0, "wilson")


def two_proportion_diff_ci(
    k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95
) -> Interval:
    r"""Interval for the difference of two independent proportions ``p1 - p2``.

    Newcombe 1998, "Interval estimation for the difference between independent proportions:
    comparison of eleven methods" (Statistics in Medicine), method 10 (hybrid score), built
    from the Wilson intervals ``(l_i, u_i)`` of each proportion:

    .. math:: \hat d = \hat p_1 - \hat p_2,\quad
              L = \hat d - \sqrt{(\hat p_1 - l_1)^2 + (u_2 - \hat p_2)^2},\quad
              U = \hat d + \sqrt{(u_1 - \hat p_1)^2 + (\hat p_2 - l_2)^2}

    For an accuracy drop pass the clean accuracy first: ``two_proportion_diff_ci(k_clean, n,
    k_edited, n)``. On the same samples the two accuracies are positively correlated, so this
    independent-samples interval is conservative (wider than a paired one). ``n`` of the
    result is ``n1 + n2``; either ``n`` zero gives all NaN.
    """
    k1, n1 = _check_count("k1", k1), _check_count("n1", n1)
    k2, n2 = _check_count("k2", k2), _check_count("n2", n2)
    if k1 > n1:
        raise ValueError(f"`k1` must be <= n1 = {n1}, got {k1}")
    if k2 > n2:
        raise ValueError(f"`k2` must be <= n2 = {n2}, got {k2}")
    confidence = _check_confidence(confidence)
    if n1 == 0 or n2 == 0:
        return Interval(math.nan, math.nan, math.nan, n1 + n2, 0, "none")
    z = float(_sps.norm.ppf(1 - (1 - confidence) / 2))
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = _wilson_bounds(k1, n1, z)
    l2, u2 = _wilson_bounds(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(d, low, high, n1 + n2, 0, "newcombe")


# --------------------------------------------------------------------------------------------
# paired comparisons
# --------------------------------------------------------------------------------------------
def _pairs(a: Any, b: Any) -> tuple[np.ndarray, int]:
    x = _as_1d("a", a)
    y = _as_1d("b", b)
    if x.shape != y.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return y[ok] - x[ok], int(x.size - ok.sum())


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
    d, dropped = _pairs(a, b)
    res = bootstrap_mean_ci(d, confidence=confidence, n_boot=n_boot, seed=seed, method=method)
    return Interval(res.estimate, res.low, res.high, res.n, dropped, res.method)


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of ``b - a`` over the pairs where both are finite.

    Wilcoxon 1945, "Individual comparisons by ranking methods"; zero differences are handled
    with ``zero_method="zsplit"`` (their ranks split between the two signs), ties with
    average ranks; ``scipy.stats.wilcoxon`` chooses exact or normal-approximation p-values.
    Returns ``{"statistic", "p_value", "test": "wilcoxon", "n"}``. All differences zero:
    ``statistic`` 0 and ``p_value`` 1.0 (no evidence of a difference); fewer than 2 pairs:
    NaN for both.
    """
    d, _ = _pairs(a, b)
    n = int(d.size)
    if n < 2:
        return {"statistic": math.nan, "p_value": math.nan, "test": "wilcoxon", "n": n}
    if np.all(d == 0):
        return {"statistic": 0.0, "p_value": 1.0, "test": "wilcoxon", "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        res = _sps.wilcoxon(d, zero_method="zsplit")
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "test": "wilcoxon",
        "n": n,
    }


# --------------------------------------------------------------------------------------------
# independent samples
# --------------------------------------------------------------------------------------------
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
    x = _as_1d("a", a)
    y = _as_1d("b", b)
    confidence = _check_confidence(confidence)
    _check_boot(n_boot, "percentile")
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
