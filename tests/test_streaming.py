"""Poisson bootstrap with per-replicate accumulators vs the exact (multinomial) bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.audit.streaming import PoissonBootstrap
from auditor.stats import bootstrap_mean_ci, grouped_bootstrap_mean_ci


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    sizes = (60, 300, 1500)
    groups = np.concatenate([np.full(n, g) for g, n in enumerate(sizes)])
    x = np.concatenate([rng.beta(2 + g, 5, n) for g, n in enumerate(sizes)])
    y = rng.exponential(1.0, groups.size)  # skewed: BCa's acceleration matters
    x[::17] = np.nan
    keys = rng.permutation(groups.size)
    return groups, keys, np.stack([x, y], axis=1)


def test_agrees_with_exact_bootstrap_within_monte_carlo_error() -> None:
    groups, keys, values = _data()
    pb = PoissonBootstrap(3, ["x", "y"], n_boot=4000, seed=1)
    for chunk in np.array_split(np.arange(groups.size), 7):  # a stream of shards
        pb.update(groups[chunk], keys[chunk], values[chunk])
    for c, col in enumerate(("x", "y")):
        exact = grouped_bootstrap_mean_ci(values[:, c], groups, n_boot=4000, seed=0)
        for g in range(3):
            a, e = pb.interval(g, col), exact[g]
            assert a.n == e.n and a.n_nan == e.n_nan
            assert a.estimate == pytest.approx(e.estimate, rel=1e-12)
            width = e.high - e.low
            # Monte-Carlo error of a 2.5 % quantile of 4,000 replicates is ~3 % of the width
            # (sqrt(.025 * .975 / 4000) / phi(1.96) * width / 3.92); allow 4 such errors
            assert abs(a.low - e.low) < 0.12 * width, (col, g, a, e)
            assert abs(a.high - e.high) < 0.12 * width, (col, g, a, e)
            assert a.method == e.method == "bca"
    overall = pb.merged().interval(0, "y")
    ref = bootstrap_mean_ci(values[:, 1], n_boot=4000, seed=0)
    assert overall.n == ref.n == groups.size
    assert abs(overall.low - ref.low) < 0.12 * (ref.high - ref.low)


def test_independent_of_how_the_stream_is_cut_and_ordered() -> None:
    groups, keys, values = _data()
    one = PoissonBootstrap(3, ["x", "y"], n_boot=500, seed=2)
    one.update(groups, keys, values)
    many = PoissonBootstrap(3, ["x", "y"], n_boot=500, seed=2)
    order = np.random.default_rng(0).permutation(groups.size)
    for chunk in np.array_split(order, 11):
        many.update(groups[chunk], keys[chunk], values[chunk])
    for g in range(3):
        a, b = one.interval(g, "y"), many.interval(g, "y")
        # float32 replicate sums (8 bytes per group, column, replicate): the order of the
        # additions moves a bound by float32 rounding, ~1e-7 relative, never more than 1e-6
        assert a.low == pytest.approx(b.low, rel=1e-6) and a.high == pytest.approx(b.high, rel=1e-6)
    assert one.nbytes < 2 * 3 * 2 * 500 * 4 + 4096 * 500 + 1024  # no per-sample state


def test_constant_empty_and_bad_input() -> None:
    pb = PoissonBootstrap(2, ["v"], n_boot=50, seed=0)
    pb.update(np.array([0, 0, 0]), np.array([0, 1, 2]), np.array([[0.25], [0.25], [0.25]]))
    pb.update(np.array([1]), np.array([3]), np.array([[np.nan]]))
    c = pb.interval(0, "v")
    assert (c.estimate, c.low, c.high, c.n) == (0.25, 0.25, 0.25, 3)
    e = pb.interval(1, "v")
    assert e.n == 0 and e.n_nan == 1 and np.isnan(e.estimate) and e.method == "none"
    with pytest.raises(ValueError, match="groups"):
        pb.update(np.array([2]), np.array([0]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="values"):
        pb.update(np.array([0]), np.array([0]), np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="n_boot"):
        PoissonBootstrap(1, ["v"], n_boot=1)


def test_bf16_autocast_maps_agree_with_float32_on_cpu() -> None:
    """The GPU path's optional bf16 autocast, checked where it runs here (CPU bf16 kernels)."""
    import torch

    from auditor.cam import compute_cams
    from auditor.demo import build_model

    torch.manual_seed(0)
    model = build_model().eval()
    images = torch.randn(4, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 3])
    methods = ("gradcam", "gradcam++", "layercam")
    ref = compute_cams(model, images, targets, methods=methods)
    bf = compute_cams(model, images, targets, methods=methods, autocast=torch.bfloat16)
    for m in methods:
        assert bf[m].dtype == torch.float32 and bool(torch.isfinite(bf[m]).all())
        a, b = ref[m].flatten(1).double(), bf[m].flatten(1).double()
        r = torch.stack([torch.corrcoef(torch.stack([x, y]))[0, 1] for x, y in zip(a, b)])
        assert bool((r > 0.95).all()), (m, r)  # bf16 has 8 bits of mantissa: close, not equal
        assert not torch.equal(a, b)  # autocast really ran in bf16


def test_shared_weight_sums_split_exactly_when_nan_patterns_differ() -> None:
    """Columns share their sums of weights while their finite rows agree; when a later chunk
    makes them differ, the slot is split and every column's interval is the one a separate
    accumulator of that column alone gives (bit for bit: integer weight sums)."""
    rng = np.random.default_rng(5)
    n = 3000
    groups = rng.integers(0, 4, n)
    keys = rng.permutation(n)
    x = rng.random((n, 4))
    x[::50, :] = np.nan  # all undefined together: one slot
    x[2000::7, 1] = np.nan  # column 1 diverges late
    x[2500::11, 2] = np.inf  # column 2 too, differently
    x[2700:, 3] = np.where(np.isnan(x[2700:, 1]), np.nan, x[2700:, 3])  # 3 joins 1's pattern
    names = ["a", "b", "c", "d"]
    both = PoissonBootstrap(4, names, n_boot=300, seed=4)
    for chunk in np.array_split(np.arange(n), 9):
        both.update(groups[chunk], keys[chunk], x[chunk])
    assert both._sw.shape[1] == 4  # a; b; c; d (split from b's slot when they differed)
    for c, name in enumerate(names):
        alone = PoissonBootstrap(4, [name], n_boot=300, seed=4)
        for chunk in np.array_split(np.arange(n), 9):
            alone.update(groups[chunk], keys[chunk], x[chunk, c : c + 1])
        for g in range(4):
            a, b = both.interval(g, name), alone.interval(g, name)
            assert (a.n, a.n_nan) == (b.n, b.n_nan)
            assert a.low == pytest.approx(b.low, rel=1e-6) and a.high == pytest.approx(
                b.high, rel=1e-6
            )
        m = both.merged().interval(0, name)
        r = alone.merged().interval(0, name)
        assert m.low == pytest.approx(r.low, rel=1e-6) and m.n == r.n
