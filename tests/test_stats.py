"""Confidence intervals and paired tests."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from auditor.stats import (
    Interval,
    bootstrap_mean_ci,
    grouped_bootstrap_mean_ci,
    paired_bootstrap_diff_ci,
    paired_test,
    two_proportion_diff_ci,
    wilson_interval,
)


def test_wilson_hand_values() -> None:
    iv = wilson_interval(8, 10)
    assert iv.estimate == 0.8
    assert iv.low == pytest.approx(0.4902, abs=5e-5)
    assert iv.high == pytest.approx(0.9433, abs=5e-5)
    assert (iv.n, iv.n_nan, iv.method) == (10, 0, "wilson")
    # 0/10: lower bound 0, upper z^2/(n+z^2) = 3.8415/13.8415
    zero = wilson_interval(0, 10)
    assert zero.low == 0.0
    assert zero.high == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    full = wilson_interval(10, 10)
    assert full.high == 1.0 and full.low == pytest.approx(1 - zero.high, abs=1e-12)
    # 90 %: z = 1.6449
    assert wilson_interval(8, 10, 0.90).low > iv.low


def test_wilson_edge_cases_and_errors() -> None:
    empty = wilson_interval(0, 0)
    assert math.isnan(empty.estimate) and empty.n == 0 and empty.method == "none"
    with pytest.raises(ValueError, match="`successes` must be <= n = 3, got 4"):
        wilson_interval(4, 3)
    with pytest.raises(ValueError, match="`n` must be >= 0, got -1"):
        wilson_interval(0, -1)
    with pytest.raises(ValueError, match="`confidence` must be in"):
        wilson_interval(1, 2, confidence=1.0)
    with pytest.raises(TypeError, match="`successes` must be an int"):
        wilson_interval(1.5, 3)  # type: ignore[arg-type]


def test_two_proportion_newcombe_hand_values() -> None:
    # Newcombe 1998, Table II example (56/70 vs 48/80): d = 0.2, method 10: (0.0524, 0.3339)
    iv = two_proportion_diff_ci(56, 70, 48, 80)
    assert iv.estimate == pytest.approx(0.2)
    assert iv.low == pytest.approx(0.0524, abs=5e-5)
    assert iv.high == pytest.approx(0.3339, abs=5e-5)
    assert iv.n == 150 and iv.method == "newcombe"
    # symmetric
    sw = two_proportion_diff_ci(48, 80, 56, 70)
    assert sw.low == pytest.approx(-iv.high) and sw.high == pytest.approx(-iv.low)
    assert math.isnan(two_proportion_diff_ci(0, 0, 3, 4).estimate)
    with pytest.raises(ValueError, match="`k2` must be <= n2 = 4, got 5"):
        two_proportion_diff_ci(1, 2, 5, 4)


def test_interval_to_dict_is_json_safe() -> None:
    iv = Interval(math.nan, math.nan, math.nan, 0, 3, "none")
    d = iv.to_dict()
    assert d == {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_nan": 3}
    json.dumps(d, allow_nan=False)
    d2 = Interval(0.5, 0.25, 0.75, 10, 0, "bca").to_dict()
    assert d2 == {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 10, "n_nan": 0}


def test_bootstrap_basic_properties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=200)
    iv = bootstrap_mean_ci(x, seed=1)
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.low < iv.estimate < iv.high
    assert iv.method == "bca" and iv.n == 200 and iv.n_nan == 0
    # half-width close to the normal-theory one: 1.96 * sd / sqrt(n)
    half = 1.96 * x.std(ddof=1) / math.sqrt(200)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.15)
    # symmetric data: BCa and percentile nearly agree
    pc = bootstrap_mean_ci(x, seed=1, method="percentile")
    assert pc.method == "percentile"
    assert abs(pc.low - iv.low) < 0.1 * half and abs(pc.high - iv.high) < 0.1 * half
    # the interval shrinks with n
    big = bootstrap_mean_ci(rng.normal(1.0, 2.0, size=3200), seed=1)
    assert big.high - big.low < (iv.high - iv.low) / 2.5


def test_bootstrap_coverage_sanity() -> None:
    rng = np.random.default_rng(42)
    hits = 0
    for i in range(60):
        x = rng.exponential(1.0, size=40)  # skewed: BCa's use case, true mean 1
        iv = bootstrap_mean_ci(x, seed=i, n_boot=1000)
        hits += iv.low <= 1.0 <= iv.high
    assert 48 <= hits <= 60  # nominal 57 of 60


def test_bca_corrects_for_skew() -> None:
    x = np.random.default_rng(3).exponential(1.0, size=30)
    bca = bootstrap_mean_ci(x, seed=0)
    pc = bootstrap_mean_ci(x, seed=0, method="percentile")
    # right-skewed data: BCa shifts the interval to the right of the percentile one
    assert bca.high > pc.high and bca.low > pc.low


def test_bootstrap_nan_n0_n1_constant() -> None:
    iv = bootstrap_mean_ci(np.array([1.0, np.nan, 3.0, np.inf, 2.0]))
    assert (iv.n, iv.n_nan) == (3, 2)
    assert iv.estimate == 2.0
    none = bootstrap_mean_ci(np.array([np.nan, np.nan]))
    assert none.n == 0 and none.n_nan == 2 and math.isnan(none.low) and none.method == "none"
    assert bootstrap_mean_ci(np.array([])).n == 0
    one = bootstrap_mean_ci(np.array([0.7]))
    assert one.estimate == one.low == one.high == 0.7 and one.n == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        const = bootstrap_mean_ci(np.full(25, 0.1))
    assert const.estimate == const.low == const.high == 0.1
    assert const.method == "percentile"


def test_bootstrap_binary_values_no_warning() -> None:
    x = np.array([0.0] * 3 + [1.0] * 17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = bootstrap_mean_ci(x)
    assert 0.0 <= iv.low < 0.85 < iv.high <= 1.0


def test_bootstrap_determinism() -> None:
    x = np.random.default_rng(5).random(50)
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    assert bootstrap_mean_ci(x, seed=3) != bootstrap_mean_ci(x, seed=4)


def test_bootstrap_large_n_chunked() -> None:
    x = np.random.default_rng(6).random(30_000)
    iv = bootstrap_mean_ci(x, n_boot=200, method="percentile")
    assert iv.low < x.mean() < iv.high
    assert iv.high - iv.low < 0.02


def test_bootstrap_argument_errors() -> None:
    with pytest.raises(ValueError, match="`values` must be 1-D, got shape"):
        bootstrap_mean_ci(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="`method` must be one of"):
        bootstrap_mean_ci(np.zeros(3), method="basic")
    with pytest.raises(ValueError, match="`n_boot` must be an int >= 2, got 1"):
        bootstrap_mean_ci(np.zeros(3), n_boot=1)
    with pytest.raises(TypeError, match="`values` must be numeric"):
        bootstrap_mean_ci(np.array(["a", "b"]))


def test_grouped_equals_per_group_calls() -> None:
    rng = np.random.default_rng(7)
    values = rng.random(400)
    values[rng.random(400) < 0.1] = np.nan
    groups = rng.choice(np.array(["cat", "dog", "eel", "fox", "gnu"]), size=400)
    groups[:5] = "cat"
    values[groups == "eel"] = 0.25  # a constant group
    values[np.flatnonzero(groups == "gnu")] = np.nan  # an all-NaN group
    res = grouped_bootstrap_mean_ci(values, groups, seed=11, n_boot=500)
    assert list(res) == ["cat", "dog", "eel", "fox", "gnu"]
    for g, iv in res.items():
        single = bootstrap_mean_ci(values[groups == g], seed=11, n_boot=500)
        assert (iv.n, iv.n_nan, iv.method) == (single.n, single.n_nan, single.method)
        for a, b in ((iv.estimate, single.estimate), (iv.low, single.low), (iv.high, single.high)):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)
    assert res["gnu"].n == 0 and res["gnu"].n_nan == (groups == "gnu").sum()
    assert res["eel"].low == res["eel"].high == 0.25


def test_grouped_same_size_groups_are_batched_correctly() -> None:
    # two groups of equal size share the resampling counts: check each against its own call
    values = np.concatenate([np.arange(20.0), np.arange(20.0) ** 2])
    groups = np.repeat([3, 1], 20)
    res = grouped_bootstrap_mean_ci(values, groups, n_boot=300, method="percentile")
    assert list(res) == [1, 3] and all(isinstance(k, int) for k in res)
    for g in (1, 3):
        single = bootstrap_mean_ci(values[groups == g], n_boot=300, method="percentile")
        assert res[g].low == pytest.approx(single.low, rel=1e-12)
        assert res[g].high == pytest.approx(single.high, rel=1e-12)


def test_grouped_errors_and_empty() -> None:
    with pytest.raises(ValueError, match="`groups` must have the same shape"):
        grouped_bootstrap_mean_ci(np.zeros(3), np.zeros(2))
    assert grouped_bootstrap_mean_ci(np.zeros(0), np.zeros(0)) == {}


def test_paired_bootstrap_diff() -> None:
    rng = np.random.default_rng(8)
    a = rng.random(100)
    b = a + 0.1 + rng.normal(0, 0.01, size=100)
    a[3] = np.nan
    b[7] = np.inf
    iv = paired_bootstrap_diff_ci(a, b, seed=2)
    ok = np.isfinite(a) & np.isfinite(b)
    assert iv.n == 98 and iv.n_nan == 2
    assert iv.estimate == pytest.approx((b[ok] - a[ok]).mean())
    assert iv.low < 0.1 < iv.high and iv.high - iv.low < 0.01
    same = bootstrap_mean_ci(b[ok] - a[ok], seed=2)
    assert (iv.low, iv.high) == (same.low, same.high)
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_diff_ci(np.zeros(3), np.zeros(4))


def test_paired_test_against_scipy() -> None:
    rng = np.random.default_rng(9)
    a = rng.random(30)
    b = a + rng.normal(0.05, 0.1, size=30)
    b[:3] = a[:3]  # some zero differences
    a[10] = np.nan
    res = paired_test(a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sps.wilcoxon(b[ok] - a[ok], zero_method="zsplit")
    assert res["test"] == "wilcoxon" and res["n"] == 29
    assert res["statistic"] == pytest.approx(float(ref.statistic))
    assert res["p_value"] == pytest.approx(float(ref.pvalue))


def test_paired_test_degenerate() -> None:
    x = np.arange(5.0)
    res = paired_test(x, x.copy())
    assert res["p_value"] == 1.0 and res["statistic"] == 0.0
    res = paired_test(np.array([1.0, np.nan]), np.array([2.0, 3.0]))
    assert res["n"] == 1 and math.isnan(res["p_value"]) and math.isnan(res["statistic"])


def test_exact_signed_rank_with_ties_by_hand_and_against_scipy() -> None:
    """Tied/zero differences at small n: the counted exact distribution gives scipy's 2**n
    sign-flip permutation p-value (seconds per call in scipy at n = 13, not here)."""
    from auditor.stats.tests import paired_test

    # d = [1, -1, 2, 0]: ranks 2.5, 2.5, 4, 1; R+ = 2.5 + 4 + 1/2 = 7, R- = 3; the 8 sign
    # patterns of {2.5, 2.5, 4} give R+ in {0.5, 3, 3, 4.5, 5.5, 7, 7, 9.5}: P(R+ >= 7) = 3/8
    got = paired_test(np.zeros(4), np.array([1.0, -1.0, 2.0, 0.0]))
    assert got["statistic"] == 3.0 and got["p_value"] == pytest.approx(0.75)
    rng = np.random.default_rng(7)
    for _ in range(40):
        n = int(rng.integers(3, 11))
        d = rng.integers(-2, 3, n) * 0.5
        if not np.any(d):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sps.wilcoxon(d, zero_method="zsplit")
        got = paired_test(np.zeros(n), d)
        assert got["statistic"] == pytest.approx(float(ref.statistic), abs=1e-12), d
        assert got["p_value"] == pytest.approx(float(ref.pvalue), abs=1e-12), d
