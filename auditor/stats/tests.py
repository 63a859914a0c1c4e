"""Paired tests (Wilcoxon signed-rank)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats as _sps

from auditor.stats.intervals import finite_pairs


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of ``b - a`` over the pairs where both are finite.

    Wilcoxon 1945, "Individual comparisons by ranking methods"; zero differences are handled
    with ``zero_method="zsplit"`` (their ranks split between the two signs), ties with
    average ranks; ``scipy.stats.wilcoxon`` chooses exact or normal-approximation p-values;
    with tied or zero differences at n <= 13 the exact permutation p-value is counted here
    (the same value).
    Returns ``{"statistic", "p_value", "test": "wilcoxon", "n"}``. All differences zero:
    ``statistic`` 0 and ``p_value`` 1.0 (no evidence of a difference); fewer than 2 pairs:
    NaN for both.
    """
    d, _ = finite_pairs(a, b)
    n = int(d.size)
    if n < 2:
        return {"statistic": math.nan, "p_value": math.nan, "test": "wilcoxon", "n": n}
    if np.all(d == 0):
        return {"statistic": 0.0, "p_value": 1.0, "test": "wilcoxon", "n": n}
    ranks = _sps.rankdata(np.abs(d))
    if n <= EXACT_TIES_MAX_N and (np.any(d == 0) or np.unique(ranks).size < n):
        stat, p = _exact_signed_rank(d, ranks)  # what scipy enumerates, by counting sums
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            res = _sps.wilcoxon(d, zero_method="zsplit")
        stat, p = float(res.statistic), float(res.pvalue)
    return {"statistic": stat, "p_value": p, "test": "wilcoxon", "n": n}


#: Up to this many pairs with tied or zero differences, ``scipy.stats.wilcoxon`` (1.13+) takes
#: the exact permutation distribution by enumerating all 2**n sign flips (seconds per call at
#: n = 13); :func:`_exact_signed_rank` gives the same p-value by counting rank sums.
EXACT_TIES_MAX_N = 13


def _exact_signed_rank(d: np.ndarray, ranks: np.ndarray) -> tuple[float, float]:
    """Exact two-sided signed-rank test with average ranks and ``zsplit`` zeros.

    Under H0 every non-zero difference's sign is +/- with probability 1/2 independently
    (Wilcoxon 1945; Pratt 1959 for zeros kept in the ranking), so ``R+ = sum of the ranks of
    positive differences + half the ranks of the zeros`` has the distribution of a constant plus
    the sum of a uniformly random subset of the non-zero ranks. Ranks are multiples of 1/2, so
    the subset sums are counted exactly on the doubled ranks (a subset-sum count, O(n * sum)).
    Statistic ``min(R+, R-)``; p-value ``2 * min(P(R+ <= r), P(R+ >= r))`` capped at 1, the
    same as the 2**n sign-flip permutation test."""
    nz = d != 0
    twice = np.rint(2 * ranks).astype(np.int64)
    zero_half = int(twice[~nz].sum())  # the zeros' ranks split between the signs: half each
    r_plus2 = 2 * int(twice[d > 0].sum()) + zero_half  # 4 x R+ (integer)
    total2 = 2 * int(twice.sum())  # 4 x (R+ + R-)
    counts = np.zeros(int(twice[nz].sum()) + 1, dtype=np.float64)
    counts[0] = 1.0
    for r in twice[nz]:
        counts[int(r) :] = counts[int(r) :] + counts[: counts.size - int(r)].copy()
    probs = counts / counts.sum()
    sums4 = 2 * np.arange(counts.size) + zero_half  # 4 x R+ for each subset sum
    lower = float(probs[sums4 <= r_plus2].sum())
    upper = float(probs[sums4 >= r_plus2].sum())
    stat = min(r_plus2, total2 - r_plus2) / 4.0
    return stat, min(1.0, 2.0 * min(lower, upper))


# --------------------------------------------------------------------------------------------
# independent samples
# --------------------------------------------------------------------------------------------
