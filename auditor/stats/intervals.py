"""Intervals: the ``Interval`` record, argument checks, Wilson and two-proportion intervals
(:mod:`auditor.stats` describes the methods)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _sps

_METHODS = ("bca", "percentile")


def json_float(x: float) -> float | None:
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
            "mean": json_float(self.estimate),
            "ci_low": json_float(self.low),
            "ci_high": json_float(self.high),
            "n": int(self.n),
            "n_nan": int(self.n_nan),
        }


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise TypeError(f"`confidence` must be a float, got {type(confidence).__name__}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
    return float(confidence)


def check_boot(n_boot: int, method: str) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"`n_boot` must be an int >= 2, got {n_boot!r}")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}")


def check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------
# bootstrap core
# --------------------------------------------------------------------------------------------


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
    k = check_count("successes", successes)
    n = check_count("n", n)
    if k > n:
        raise ValueError(f"`successes` must be <= n = {n}, got {k}")
    confidence = check_confidence(confidence)
    if n == 0:
        return empty_interval(0)
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
    k1, n1 = check_count("k1", k1), check_count("n1", n1)
    k2, n2 = check_count("k2", k2), check_count("n2", n2)
    if k1 > n1:
        raise ValueError(f"`k1` must be <= n1 = {n1}, got {k1}")
    if k2 > n2:
        raise ValueError(f"`k2` must be <= n2 = {n2}, got {k2}")
    confidence = check_confidence(confidence)
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


def empty_interval(n_nan: int) -> Interval:
    return Interval(math.nan, math.nan, math.nan, 0, n_nan, "none")


def finite_pairs(a: Any, b: Any) -> tuple[np.ndarray, int]:
    x = as_1d("a", a)
    y = as_1d("b", b)
    if x.shape != y.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return y[ok] - x[ok], int(x.size - ok.sum())
