"""SpRAy at scale (issue 14): the speed-ups change no result; large classes use landmarks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from auditor.analysis.spray.clusters import _adaptive_avg_pool, spray_clusters
from auditor.analysis.spray.subgroups import SubgroupRules, analyse_class, class_to_json
from tests import spray_cases

SNAPSHOT = Path(__file__).resolve().parent / "data" / "spray_snapshot.json"


def _same(got: object, want: object, path: str = "") -> None:
    """Exact equality; floats to 1e-12 relative (a BLAS with another thread count may move
    the last bits of a dense eigenvalue: the stored snapshot was made on 2 cores)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for k in want:
            _same(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15, nan_ok=True), path
    else:
        assert got == want, path


@pytest.mark.parametrize("n,seed,planted", spray_cases.CASES)
def test_results_equal_the_snapshot_of_the_code_before_the_speed_ups(
    n: int, seed: int, planted: bool
) -> None:
    want = json.loads(SNAPSHOT.read_text())[f"{n}-{seed}-{int(planted)}"]
    got = spray_cases.snapshot(n, seed, planted)
    # the evidence split (issue 22) adds subgroups only when SpRAy gives k = 1, each marked
    # with a `split` block; the clustering's own output must equal the snapshot
    subs = got["result"].get("subgroups") or []
    added = [g for g in subs if "split" in g]
    if added:
        assert len(set(got["labels"])) == 1, "an evidence split only where the maps do not cluster"
        got["result"]["subgroups"] = [g for g in subs if "split" not in g]
    assert got["labels"] == want["labels"]
    _same(got["result"], want["result"])
    assert "clusters_sample" not in got["result"]  # whole classes: the block they had


@pytest.mark.parametrize(
    "shape,out", [((28, 28), 16), ((33, 41), 8), ((14, 14), 5), ((17, 23), 16)]
)
def test_numpy_pooling_is_torchs_adaptive_avg_pool_to_the_bit(
    shape: tuple[int, int], out: int
) -> None:
    torch = pytest.importorskip("torch")
    x = np.abs(np.random.default_rng(3).standard_normal((20, *shape)))
    oh, ow = min(shape[0], out), min(shape[1], out)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x)[:, None], (oh, ow))
    np.testing.assert_array_equal(_adaptive_avg_pool(x, oh, ow), want[:, 0].numpy())


def _planted(n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    maps, stats = spray_cases.case(n, seed, planted=False)
    rng = np.random.default_rng(seed + 1)
    sub = rng.random(n) < 0.08  # a subgroup that looks at the top-left corner
    maps[sub] = (rng.random((int(sub.sum()), 7, 7)) * 0.2).astype(np.float32)
    maps[sub, 0, 0] += 3.0
    stats["background_focus"][sub] = np.clip(stats["background_focus"][sub] + 0.4, 0, 1)
    stats["only_bg_hit"][sub] = (rng.random(int(sub.sum())) < 0.6).astype(float)
    return maps, stats, sub


def test_landmarks_find_a_planted_subgroup_in_a_large_class() -> None:
    maps, stats, planted = _planted(12_000)
    rules = SubgroupRules(max_maps=2_000)
    res = analyse_class(
        maps, stats, n_classes=10, border_chance_share=0.36, n_boot=300, rules=rules
    )
    assert res.n_clustered == 2_000 and res.labels.size == 12_000
    assert sum(res.cluster_sizes) == 12_000
    # the planted maps: the clusters holding them hold (almost) nothing else
    high = [s for s in res.subgroups if s.elsewhere and s.needed]
    assert high, [(s.cluster, s.size, s.separating) for s in res.subgroups]
    members = np.zeros(12_000, bool)
    for s in high:
        members[s.members] = True
    assert (members & planted).sum() >= 0.95 * planted.sum()
    assert (members & ~planted).sum() <= 0.02 * (~planted).sum()
    assert all(s.severity == "high" and s.where == "top-left corner" for s in high)
    block = class_to_json(res, [str(i) for i in range(12_000)])
    assert block["clusters_sample"]["n"] == 2_000 and block["clusters_sample"]["of"] == 12_000
    assert sum(c["size"] for c in block["clusters"]) == 12_000
    # deterministic
    again = analyse_class(
        maps, stats, n_classes=10, border_chance_share=0.36, n_boot=300, rules=rules
    )
    np.testing.assert_array_equal(again.labels, res.labels)


def test_landmark_sample_is_clustered_exactly_like_a_class_of_that_size() -> None:
    maps, stats, _ = _planted(3_000)
    res = spray_clusters(maps, select_k="stability", max_k=6, max_maps=1_000)
    assert res.sample is not None and res.sample.size == 1_000 and res.n_clustered == 1_000
    assert np.all(np.diff(res.sample) > 0)
    alone = spray_clusters(maps[res.sample], select_k="stability", max_k=6)
    # the same partition of the sample (ids may be renumbered by the sizes over all maps)
    pairs = set(zip(alone.labels.tolist(), res.labels[res.sample].tolist()))
    assert len(pairs) == alone.k == res.k
    assert res.stability == alone.stability
    np.testing.assert_array_equal(res.eigenvalues, alone.eigenvalues)
    # members, sizes and means over all maps
    assert sum(c.size for c in res.clusters) == 3_000
    for c in res.clusters:
        np.testing.assert_array_equal(c.members, np.flatnonzero(res.labels == c.id))


def test_max_maps_at_or_above_the_class_size_changes_nothing() -> None:
    maps, stats, _ = _planted(800)
    a = spray_clusters(maps, select_k="stability", max_k=6)
    b = spray_clusters(maps, select_k="stability", max_k=6, max_maps=800)
    assert b.sample is None and b.n_clustered == 800
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.eigengap == b.eigengap and a.stability == b.stability
    with pytest.raises(ValueError, match="max_maps"):
        spray_clusters(maps, max_maps=2)


def test_report_says_a_sampled_class_was_clustered_on_n_of_n_maps(tmp_path: Path) -> None:
    from auditor.report import render_html
    from tests.report_fixtures import make_run_dir

    run = make_run_dir(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["clusters"]
    plain = render_html(run).read_text()
    assert "maps, the rest assigned" not in plain  # whole classes: the heading they had
    name = next(iter(summary["clusters"]))
    summary["clusters"][name]["clusters_sample"] = {"n": 5000, "of": 100000, "rule": "sample"}
    (run / "summary.json").write_text(json.dumps(summary))
    text = render_html(run).read_text()
    assert re.search(r"clustered 5\D?000 of 100\D?000 maps, the rest assigned", text), name
