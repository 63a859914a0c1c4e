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
    average ranks; ``scipy.stats.wilcoxon`` chooses exact or normal-approximation p-values.
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
