"""Streamed finalisation (issue 14) vs the exact path on the demo run (a planted shortcut).

The demo's shards are finalised twice, with ``[audit] aggregation`` forced to "exact" and to
"streaming"; counts, means, accuracies, findings and samples.parquet must agree exactly
(means up to summation order), intervals within Monte-Carlo error. Re-cutting the shards
differently must not change the streamed result. The accumulators' memory must not grow
with the number of samples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auditor.analysis.streamed import STREAMING_THRESHOLD, choose_aggregation
from auditor.audit.streaming import PoissonBootstrap
from auditor.config import ConfigError, load_config


def _finalize(src: Path, dst: Path, mode: str, config: Path) -> dict[str, Any]:
    """Finalise a copy of the run ``src`` (made with ``config``) in ``dst`` with
    ``aggregation = mode``."""
    from auditor.audit import runner
    from auditor.audit.store import RunStore
    from auditor.data import open_dataset

    model = json.loads((src / "summary.json").read_text())["model"]
    if not dst.exists():
        shutil.copytree(src, dst)
    for name in ("summary.json", "samples.parquet"):
        (dst / name).unlink(missing_ok=True)
    cfg = load_config(config)
    settings = dataclasses.replace(cfg.audit, aggregation=mode)
    ds = open_dataset(cfg.data)
    runner.finalize(
        dst,
        RunStore(dst),
        dataset=ds,
        classes=list(ds.classes),
        settings=settings,
        gates=cfg.gates,
        model_info=dict(model),
        config=cfg,
        sanity=json.loads((src / "sanity.json").read_text()),
        started=datetime.now(),
        t0=time.perf_counter(),
        loop_s=0.0,
        pdf=False,
        render=False,
        command=None,
    )
    return json.loads((dst / "summary.json").read_text())


@pytest.fixture(scope="module")
def both(
    demo_run: Path, demo_inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("streamed")
    return {
        "dirs": {m: tmp / m for m in ("exact", "streaming")},
        "exact": _finalize(demo_run, tmp / "exact", "exact", demo_inputs),
        "streaming": _finalize(demo_run, tmp / "streaming", "streaming", demo_inputs),
    }


def _stats(d: Any, path: str = "") -> dict[str, dict[str, Any]]:
    """Every ``{mean, ci_low, ci_high, n, n_nan}`` block of a summary, by path."""
    out: dict[str, dict[str, Any]] = {}
    if isinstance(d, dict):
        if "ci_low" in d and "mean" in d:
            out[path] = d
        for k, v in d.items():
            out.update(_stats(v, f"{path}/{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_stats(v, f"{path}[{i}]"))
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return bool(a == b)


def test_streaming_agrees_with_exact(both: dict[str, Any]) -> None:
    ex, st = both["exact"], both["streaming"]
    assert ex["run"]["aggregation"] == "exact" and st["run"]["aggregation"] == "streaming"
    assert ex["settings"]["aggregation"] == "exact"
    # counts, accuracies (Wilson: counts), confusion, statuses, dataset hash: exact
    assert st["dataset"] == ex["dataset"]
    assert st["confusion"] == ex["confusion"]
    assert st["overall"]["status_counts"] == ex["overall"]["status_counts"]
    assert st["method_agreement"] == ex["method_agreement"]
    for key in ("n", "accuracy", "accuracy_ci"):
        assert st["overall"][key] == ex["overall"][key]
    assert set(st["classes"]) == set(ex["classes"])
    for name, ce in ex["classes"].items():
        cs = st["classes"][name]
        for key in ("n", "accuracy", "accuracy_ci", "flagged", "flags", "null_baseline"):
            assert cs.get(key) == ce.get(key), (name, key)
        ie, is_ = ce["interventions"], cs["interventions"]
        for key, ve in ie.items():
            if key != "only_fg_drop_ci":
                assert _close(is_[key], ve), (name, key, is_[key], ve)
    # the same findings (planted shortcut), same classes, same order
    kinds = [(f["kind"], f["class"], f["severity"]) for f in ex["findings"]]
    assert kinds and [(f["kind"], f["class"], f["severity"]) for f in st["findings"]] == kinds
    assert st["gates"]["passed"] == ex["gates"]["passed"]
    # every statistic: n, n_nan and mean equal; interval ends within Monte-Carlo error
    se, ss = _stats(ex), _stats(st)
    assert se.keys() == ss.keys() and len(se) > 100
    errors = []
    for path, e in se.items():
        s = ss[path]
        assert (s["n"], s["n_nan"]) == (e["n"], e["n_nan"]), path
        assert _close(s["mean"], e["mean"]) if e["mean"] is not None else s["mean"] is None
        if e["ci_low"] is None:
            assert s["ci_low"] is None, path
            continue
        width = e["ci_high"] - e["ci_low"]
        if width == 0:  # constant values: no resampling noise in either
            assert s["ci_low"] == s["ci_high"] == e["ci_low"], path
            continue
        err = max(abs(s["ci_low"] - e["ci_low"]), abs(s["ci_high"] - e["ci_high"])) / width
        # 2,000 replicates: a 2.5 % quantile's Monte-Carlo error is ~5 % of the width, and
        # Poisson vs multinomial weights differ a little at 24-50 samples per class
        assert err < 0.3, (path, e, s)
        errors.append(err)
    assert np.median(errors) < 0.08


def _nan_equal(a: pa.Table, b: pa.Table) -> None:
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x = a.column(name).to_numpy(zero_copy_only=False)
        y = b.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=name)  # NaN == NaN here
        elif x.dtype == object and any(isinstance(v, np.ndarray) for v in x):  # list columns
            assert [None if v is None else v.tolist() for v in x] == [
                None if v is None else v.tolist() for v in y
            ], name
        else:
            assert x.tolist() == y.tolist(), name


def test_streamed_samples_parquet_has_the_exact_rows(both: dict[str, Any]) -> None:
    d = both["dirs"]
    a = pq.read_table(d["exact"] / "samples.parquet")
    b = pq.read_table(d["streaming"] / "samples.parquet")
    assert "cluster" in b.column_names and (b.column("cluster").to_numpy() >= 0).any()
    _nan_equal(a, b)
    # the CAM spill is gone
    assert not list(d["streaming"].glob(".cams-spill.*"))


def _recut(src: Path, dst: Path, cuts: list[int]) -> None:
    """Rewrite ``src``'s shards as other batches: rows split at sample positions ``cuts``,
    written in reverse batch order (so neither the cut nor the file order is the original)."""
    shutil.copytree(src, dst)
    shards = dst / "shards"
    parts = sorted(shards.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    cams: dict[str, list[np.ndarray]] = {}
    for p in sorted(shards.glob("cams-*.npz")):
        with np.load(p) as z:
            for k in z.files:
                cams.setdefault(k, []).append(z[k])
    cat = {k: np.concatenate(v) for k, v in cams.items()}
    for p in [*parts, *shards.glob("cams-*.npz"), *shards.glob("skipped-*.json")]:
        p.unlink()
    order = np.argsort(cat["indices"], kind="stable")
    indices = cat["indices"][order]
    bounds = [0, *cuts, len(indices)]
    tidx = table.column("index").to_numpy()
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        batch_no = len(bounds) - 2 - b  # reverse the numbering
        want = indices[lo:hi]
        rows = table.filter(pa.array(np.isin(tidx, want)))
        # rows within a shard in another order than the runner's (method-major)
        rows = rows.take(pa.array(np.random.default_rng(b).permutation(rows.num_rows)))
        pq.write_table(rows, shards / f"part-{batch_no:05d}.parquet")
        sel = order[lo:hi]
        np.savez(shards / f"cams-{batch_no:05d}.npz", **{k: v[sel] for k, v in cat.items()})
        (shards / f"skipped-{batch_no:05d}.json").write_text("[]")


def test_streamed_result_does_not_depend_on_how_the_shards_are_cut(
    both: dict[str, Any], demo_run: Path, demo_inputs: Path, tmp_path: Path
) -> None:
    if list((demo_run / "shards").glob("skipped-*.json")) and any(
        json.loads(p.read_text()) for p in (demo_run / "shards").glob("skipped-*.json")
    ):
        pytest.skip("the demo run skipped samples")
    _recut(demo_run, tmp_path / "recut", [7, 90, 91, 150])
    st = _finalize(tmp_path / "recut", tmp_path / "recut", "streaming", demo_inputs)
    ref = both["streaming"]
    se, ss = _stats(ref), _stats(st)
    assert se.keys() == ss.keys()
    for path, e in se.items():
        for key in ("mean", "ci_low", "ci_high"):
            if e[key] is None:
                assert ss[path][key] is None
            else:
                # means: float64 power sums (summation order only); bounds: float32
                # replicate sums (auditor.audit.streaming.PoissonBootstrap), ~1e-7 relative
                tol = 1e-9 if key == "mean" else 1e-6
                assert ss[path][key] == pytest.approx(e[key], rel=tol, abs=1e-12), (path, key)
    assert [f["kind"] for f in st["findings"]] == [f["kind"] for f in ref["findings"]]
    # same rows, and the same bytes as the differently cut original (fixed row groups)
    a = (both["dirs"]["streaming"] / "samples.parquet").read_bytes()
    b = (tmp_path / "recut" / "samples.parquet").read_bytes()
    assert a == b


def _peak_of_stream(n_chunks: int, chunk: int = 2000) -> tuple[int, int]:
    pb = PoissonBootstrap(20, [f"c{i}" for i in range(6)], n_boot=300, seed=0)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    for k in range(n_chunks):
        keys = np.arange(k * chunk, (k + 1) * chunk)
        pb.update(rng.integers(0, 20, chunk), keys, rng.random((chunk, 6)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, pb.nbytes


def test_accumulator_memory_does_not_grow_with_the_samples() -> None:
    # 24,000 samples already fill the weight cache (4 blocks of 4,096 keys)
    small_peak, small_bytes = _peak_of_stream(12)
    big_peak, big_bytes = _peak_of_stream(60)  # five times the samples
    assert small_bytes == big_bytes
    # float32 sums of weighted values per column; the sums of weights in one slot shared by
    # the 6 columns (no NaN: the same finite rows), its column map; power sums, NaN counts
    sums = 20 * 6 * 300 * 4 + 20 * 1 * 300 * 4 + 6 * 8
    assert big_bytes == sums + 20 * 6 * (4 * 8 + 8) + 4 * 4096 * 300
    # the peak is the accumulators plus one chunk's work arrays, whatever the stream length
    assert big_peak < 1.1 * small_peak, (small_peak, big_peak)
    one_chunk = 2000 * 300 * (1 + 8) + 2000 * 12 * 8 * 4  # weights (uint8, float64), values
    assert big_peak < big_bytes + 3 * one_chunk, (big_peak, big_bytes)


def test_choose_aggregation() -> None:
    assert choose_aggregation("exact", 10**9, 1) == "exact"
    assert choose_aggregation("streaming", 10, 1) == "streaming"
    assert choose_aggregation("auto", 3 * STREAMING_THRESHOLD, 3) == "exact"
    assert choose_aggregation("auto", 3 * STREAMING_THRESHOLD + 3, 3) == "streaming"
    with pytest.raises(ValueError, match="setting"):
        choose_aggregation("fast", 1, 1)


def test_config_rejects_a_bad_aggregation(demo_inputs: Path, tmp_path: Path) -> None:
    from auditor.cli import main

    text = demo_inputs.read_text()
    cfg = demo_inputs.parent / "bad-aggregation.toml"
    cfg.write_text(text.replace("[audit]\n", '[audit]\naggregation = "fastest"\n', 1))
    with pytest.raises(ConfigError, match=r"\[audit\] aggregation .*'fastest'"):
        load_config(cfg)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-pdf"]) == 2
    ok = demo_inputs.parent / "streaming-aggregation.toml"
    ok.write_text(text.replace("[audit]\n", '[audit]\naggregation = "streaming"\n', 1))
    assert load_config(ok).audit.aggregation == "streaming"


def test_report_names_the_poisson_bootstrap_when_streamed(both: dict[str, Any]) -> None:
    from auditor.report import render_report

    texts = {}
    for mode, d in both["dirs"].items():
        render_report(d, html=True, pdf=False)
        texts[mode] = (d / "report.html").read_text(encoding="utf-8")
    assert "Poisson bootstrap (Hanley &amp; MacGibbon 2006" in texts["streaming"]
    assert "Poisson bootstrap" not in texts["exact"]
