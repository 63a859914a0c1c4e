"""Tests of SpRAy strategy clusters (Lapuschkin et al. 2019) on synthetic maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auditor.analysis.spray.clusters import Cluster, ClusterResult, spray_clusters


def synthetic(n_tl: int, n_br: int, n_border: int = 0, size: int = 16, seed: int = 0):
    """Blob top-left / blob bottom-right / mass on the border, each with uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    maps, focus = [], []
    for cy, cx, count in ((4, 4, n_tl), (11, 11, n_br)):
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
        for _ in range(count):
            maps.append(blob + 0.05 * rng.random((size, size)))
            focus.append(0.3 + 0.05 * rng.random())
    border = np.zeros((size, size))
    border[[0, -1], :] = 1.0
    border[:, [0, -1]] = 1.0
    for _ in range(n_border):
        maps.append(border + 0.05 * rng.random((size, size)))
        focus.append(0.9 + 0.05 * rng.random())
    return np.stack(maps), np.array(focus)


def test_two_groups_give_k2_and_the_right_partition() -> None:
    maps, _ = synthetic(50, 50)
    res = spray_clusters(maps)
    assert isinstance(res, ClusterResult)
    assert res.k == 2 and len(res.clusters) == 2
    assert len(set(res.labels[:50])) == 1 and len(set(res.labels[50:])) == 1
    assert res.labels[0] != res.labels[50]
    assert res.eigengap == pytest.approx(res.eigenvalues[2] - res.eigenvalues[1])
    assert res.eigengap > 0.3
    assert res.eigenvalues.shape == (9,)
    c0 = res.clusters[0]
    assert isinstance(c0, Cluster) and c0.size == 50 and c0.id == 0
    assert c0.mean_map.shape == (16, 16)
    assert c0.mean_map.sum() == pytest.approx(1.0)
    assert len(c0.exemplars) == 4 and set(c0.exemplars) <= set(c0.members)
    assert c0.mean_background_focus is None
    assert res.outlier_clusters == ()


def test_group_sizes_order_cluster_ids() -> None:
    maps, _ = synthetic(30, 60)
    res = spray_clusters(maps)
    assert res.k == 2
    assert res.clusters[0].size == 60 and res.clusters[1].size == 30
    np.testing.assert_array_equal(res.clusters[1].members, np.arange(30))
    assert (res.labels[:30] == 1).all() and (res.labels[30:] == 0).all()


def test_planted_border_cluster_is_an_outlier() -> None:
    maps, focus = synthetic(45, 45, 10)
    res = spray_clusters(maps, background_focus=focus)
    assert len(res.outlier_clusters) == 1
    out = res.clusters[res.outlier_clusters[0]]
    border = set(range(90, 100))
    assert border <= set(out.members.tolist())
    assert len(out.members) <= 12  # at most a stray blob map or two
    assert out.mean_background_focus is not None and out.mean_background_focus > 0.8
    # the same data without focus, or with a stricter difference, reports no outlier
    assert spray_clusters(maps).outlier_clusters == ()
    assert (
        spray_clusters(maps, background_focus=focus, outlier_min_difference=0.9).outlier_clusters
        == ()
    )
    # a size cap below the planted cluster's size disables it too
    assert (
        spray_clusters(maps, background_focus=focus, outlier_max_fraction=0.05).outlier_clusters
        == ()
    )


def test_same_focus_is_not_an_outlier() -> None:
    maps, focus = synthetic(45, 45, 10)
    flat = np.full_like(focus, 0.4)
    assert spray_clusters(maps, background_focus=flat).outlier_clusters == ()


def test_deterministic_for_a_seed() -> None:
    maps, focus = synthetic(40, 40, 8, seed=3)
    a = spray_clusters(maps, background_focus=focus, seed=5)
    b = spray_clusters(maps, background_focus=focus, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    for ca, cb in zip(a.clusters, b.clusters):
        np.testing.assert_array_equal(ca.exemplars, cb.exemplars)
    k = spray_clusters(maps, background_focus=focus, assign_labels="kmeans", seed=5)
    assert k.k == a.k


def test_large_n_sparse_solver_path() -> None:
    maps, _ = synthetic(400, 400, size=8)
    res = spray_clusters(maps, resize_to=8)
    assert res.k == 2
    assert len(set(res.labels[:400])) == 1 and len(set(res.labels[400:])) == 1


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_maps(n: int) -> None:
    maps = np.random.default_rng(0).random((n, 4, 4))
    res = spray_clusters(maps)
    assert res.labels.shape == (n,) and (res.labels == 0).all()
    assert len(res.clusters) == (1 if n else 0)
    assert res.eigengap == 0.0 and res.eigenvalues.size == 0


def test_identical_and_zero_maps_give_one_cluster() -> None:
    same = np.tile(np.arange(16.0).reshape(1, 4, 4), (20, 1, 1))
    res = spray_clusters(same * np.arange(1, 21)[:, None, None])  # same after normalisation
    assert res.k == 1 and len(res.clusters) == 1 and res.clusters[0].size == 20
    zeros = spray_clusters(np.zeros((5, 4, 4)))
    assert zeros.k == 1
    np.testing.assert_allclose(zeros.clusters[0].mean_map, np.full((4, 4), 1 / 16))


def test_exemplars_and_focus_hand_computed() -> None:
    maps = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 2.0]]])  # -> [1,0], [0,1], [.5,.5]
    res = spray_clusters(
        maps, background_focus=np.array([0.2, math.nan, 0.6]), n_clusters=1, n_exemplars=2
    )
    c = res.clusters[0]
    np.testing.assert_allclose(c.mean_map, [[0.5, 0.5]])
    np.testing.assert_array_equal(c.exemplars, [2, 0])  # closest, then the tie by index
    assert c.mean_background_focus == pytest.approx(0.4)


def test_small_n_reduces_neighbours_and_resize_pools() -> None:
    maps, _ = synthetic(4, 4, size=32)
    res = spray_clusters(maps, n_neighbors=50, resize_to=8)
    assert res.clusters[0].mean_map.shape == (8, 8)
    assert res.labels.shape == (8,)
    forced = spray_clusters(maps, n_clusters=2, resize_to=8)
    assert forced.k == 2
    assert len(set(forced.labels[:4])) == 1 and forced.labels[0] != forced.labels[4]


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="maps"):
        spray_clusters(np.zeros((4, 4)))
    bad = np.zeros((3, 2, 2))
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"finite.*\[1\]"):
        spray_clusters(bad)
    with pytest.raises(ValueError, match="background_focus"):
        spray_clusters(np.zeros((3, 2, 2)), background_focus=np.zeros(2))
    with pytest.raises(ValueError, match="max_k"):
        spray_clusters(np.zeros((3, 2, 2)), max_k=0)
    with pytest.raises(TypeError, match="n_neighbors"):
        spray_clusters(np.zeros((3, 2, 2)), n_neighbors=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="assign_labels"):
        spray_clusters(np.zeros((3, 2, 2)), assign_labels="nope")
    with pytest.raises(ValueError, match="n_clusters"):
        spray_clusters(np.zeros((3, 2, 2)), n_clusters=3)


def test_nearest_neighbours_equal_the_stable_full_sort() -> None:
    """The k-NN graph's neighbours (partition + sort of the candidates) are exactly those of
    ``np.argsort(kind="stable")``, ties to the smaller index included."""
    from auditor.analysis.spray.clusters import _nearest_stable

    rng = np.random.default_rng(0)
    for t in range(200):
        n = int(rng.integers(3, 60))
        k = int(rng.integers(1, n))
        if t % 2:  # integer features: many tied distances
            f = rng.integers(0, 3, (n, int(rng.integers(1, 4)))).astype(float)
        else:
            f = rng.random((n, 5))
        sq = (f**2).sum(1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * f @ f.T
        np.fill_diagonal(d2, np.inf)
        if t % 7 == 0:
            d2[0, 1] = np.nan  # falls back to the full sort
        want = np.argsort(d2, axis=1, kind="stable")[:, :k]
        assert (_nearest_stable(d2, k) == want).all(), (t, n, k)
