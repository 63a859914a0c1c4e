"""``auditor compare`` on large runs: the streamed overall intervals (Poisson bootstrap keyed
by dataset index) against the exact paired bootstrap, and the per-method reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from auditor.compare import compare_runs
from auditor.compare.core import streamed_overall
from auditor.stats import paired_bootstrap_diff_ci
from tests.report_fixtures import make_run_dir

N_CLASSES, PER_CLASS = 12, 250  # 3,000 pairs per method


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    base = tmp_path_factory.mktemp("stream")
    names = [f"c{i}" for i in range(N_CLASSES)]
    kw: dict[str, Any] = {
        "class_names": names,
        "shortcut_classes": names[::4],
        "n_per_class": PER_CLASS,
        "methods": ("gradcam", "cam"),
        "gallery": False,
        "clusters": False,
    }
    ra, rb = make_run_dir(base / "a", seed=0, **kw), make_run_dir(base / "b", seed=1, **kw)
    exact = compare_runs(ra, rb, out=base / "exact", render=False, top_n=0, n_boot=1000)
    streamed = compare_runs(
        ra, rb, out=base / "stream", render=False, top_n=0, n_boot=1000, stream_min_pairs=0
    )
    return exact.comparison, streamed.comparison, base


def test_streamed_overall_agrees_with_exact(pair: tuple[dict[str, Any], dict[str, Any], Path]):
    exact, streamed, _ = pair
    assert exact["settings"]["overall_interval"] == "exact"
    assert streamed["settings"]["overall_interval"].startswith("poisson bootstrap")
    checked = 0
    for block in ("primary", "methods"):
        blocks_e = [exact["primary"]] if block == "primary" else list(exact["methods"].values())
        blocks_s = (
            [streamed["primary"]] if block == "primary" else list(streamed["methods"].values())
        )
        for be, bs in zip(blocks_e, blocks_s, strict=True):
            for q, se in be["overall"].items():
                ss = bs["overall"][q]
                # everything but the interval is computed the same way
                for key in ("mean_a", "mean_b", "diff", "n", "n_nan", "p_value", "statistic"):
                    assert ss[key] == se[key], (q, key)
                if se["ci_low"] is None or se["ci_high"] == se["ci_low"]:
                    continue
                width = se["ci_high"] - se["ci_low"]
                # Monte-Carlo sd of a 2.5% bootstrap quantile at B = 1000 is about 0.03 of
                # the interval's width; 0.15 is five of them
                assert abs(ss["ci_low"] - se["ci_low"]) < 0.15 * width, q
                assert abs(ss["ci_high"] - se["ci_high"]) < 0.15 * width, q
                assert ss["ci_low"] <= ss["diff"] <= ss["ci_high"]
                checked += 1
            # per-class intervals stay exact in both paths
            assert bs["classes"] == be["classes"]
    assert checked >= 10
    bf_e, bf_s = (
        exact["primary"]["overall"]["background_focus"],
        streamed["primary"]["overall"]["background_focus"],
    )
    for side in ("ci_a", "ci_b"):
        w = bf_e[side][1] - bf_e[side][0]
        assert abs(bf_s[side][0] - bf_e[side][0]) < 0.15 * w
        assert abs(bf_s[side][1] - bf_e[side][1]) < 0.15 * w
    assert streamed["class_order"] == exact["class_order"]


def test_streamed_tables_equal(pair: tuple[dict[str, Any], dict[str, Any], Path]):
    """comparison.parquet does not depend on the path (written one method at a time)."""
    _, _, base = pair
    te = pq.read_table(base / "exact" / "comparison.parquet")
    ts = pq.read_table(base / "stream" / "comparison.parquet")
    assert te.schema == ts.schema and te.num_rows == ts.num_rows == 2 * N_CLASSES * PER_CLASS
    assert te.to_pandas().equals(ts.to_pandas())
    assert sorted(set(te.column("comparison").to_pylist())) == ["cam", "primary"]
    assert json.loads((base / "stream" / "comparison.json").read_text())["pairing"]["n_paired"] == (
        N_CLASSES * PER_CLASS
    )


def test_streamed_overall_hand_case():
    """A large normal sample: the streamed interval matches the exact one and the theory."""
    rng = np.random.default_rng(3)
    n = 20_000
    d = rng.normal(0.1, 1.0, n)
    d[::97] = np.nan
    keys = np.arange(n, dtype=np.int64) * 3  # sparse dataset indices
    iv = streamed_overall(keys, {"d": d}, n_boot=1000, seed=0, confidence=0.95)["d"]
    ok = d[np.isfinite(d)]
    ex = paired_bootstrap_diff_ci(np.zeros(ok.size), ok, n_boot=1000, seed=0)
    se = ok.std(ddof=1) / np.sqrt(ok.size)
    assert iv.n == ok.size and iv.estimate == pytest.approx(ok.mean())
    assert abs(iv.low - ex.low) < 0.15 * (ex.high - ex.low)
    assert abs(iv.high - ex.high) < 0.15 * (ex.high - ex.low)
    assert (iv.high - iv.low) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_stream_min_pairs_checked(pair: tuple[dict[str, Any], dict[str, Any], Path]):
    _, _, base = pair
    with pytest.raises(ValueError, match="stream_min_pairs"):
        compare_runs(base / "a", base / "b", out=base / "x", render=False, stream_min_pairs=-1)


def test_table_written_in_slices(
    pair: tuple[dict[str, Any], dict[str, Any], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """comparison.parquet written in slices of rows has the same content, in row groups."""
    import auditor.compare.core as cmp

    _, _, base = pair
    monkeypatch.setattr(cmp, "TABLE_ROWS", 700)
    compare_runs(base / "a", base / "b", out=base / "sliced", render=False, top_n=0, n_boot=50)
    te = pq.read_table(base / "exact" / "comparison.parquet")
    ts = pq.read_table(base / "sliced" / "comparison.parquet")
    assert te.schema == ts.schema and te.to_pandas().equals(ts.to_pandas())
    assert pq.ParquetFile(base / "sliced" / "comparison.parquet").num_row_groups >= 10
