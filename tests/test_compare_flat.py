"""``auditor compare`` at scale: no torch import, and the chunked (streamed) pairing and
statistics against the in-memory path (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.report_fixtures import make_run_dir

ROOT = Path(__file__).resolve().parents[1]


def test_compare_and_metric_names_do_not_import_torch(tmp_path: Path) -> None:
    """A comparison (statistics, parquet, moved panels, HTML) needs no torch: the import
    floor of ``auditor compare`` is numpy/pyarrow/scipy, not torch's ~500 MB. The metric
    names import without torch too; a metric function imports it when first touched. One
    interpreter proves both."""
    ra = make_run_dir(tmp_path / "a", seed=0)
    rb = make_run_dir(tmp_path / "b", seed=1)
    code = (
        "import sys, json\n"
        "import auditor.metrics as m\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "assert m.METRIC_NAMES[1] == 'background_focus' and 'iou' in m.METRICS\n"
        "assert 'torch' not in sys.modules, 'names'\n"
        "from auditor.compare import compare_runs\n"
        f"r = compare_runs({str(ra)!r}, {str(rb)!r}, out={str(tmp_path / 'o')!r}, pdf=False)\n"
        "got = {'torch': 'torch' in sys.modules, 'n': r.comparison['pairing']['n_paired'],"
        " 'moved': len(r.comparison['moved'])}\n"
        "m.energy_in_mask\n"
        "got['lazy'] = 'torch' in sys.modules\n"
        "print(json.dumps(got))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] > 0 and got["moved"] > 0
    assert got["torch"] is False
    assert got["lazy"] is True  # the check above can fail: torch is there once asked for
    assert (tmp_path / "o" / "compare.html").is_file()


# --------------------------------------------------------------------------------------------
# chunked pairing and streamed statistics against the in-memory path
# --------------------------------------------------------------------------------------------
import math  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from auditor.compare import compare_runs  # noqa: E402
from auditor.compare.streamed import wilcoxon_stream  # noqa: E402
from auditor.errors import AuditorInputError  # noqa: E402
from auditor.stats import paired_test  # noqa: E402

N_CLASSES, PER_CLASS = 8, 150  # 1,200 samples per run and method
_NEVER = 10**9  # stream_min_pairs that keeps the in-memory path


def _reshuffle(run: Path, *, drop: float, seed: int, row_group: int = 97) -> None:
    """Drop a share of the rows (per method), shuffle the rest (shards in any order) and
    rewrite samples.parquet in small row groups."""
    t = pq.read_table(run / "samples.parquet")
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(rng.random(t.num_rows) >= drop)
    t = t.take(pa.array(rng.permutation(keep)))
    pq.write_table(t, run / "samples.parquet", row_group_size=row_group)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("flat")
    names = [f"c{i}" for i in range(N_CLASSES)]
    kw: dict[str, Any] = {
        "class_names": names,
        "shortcut_classes": names[::3],
        "n_per_class": PER_CLASS,
        "methods": ("gradcam", "cam", "layercam"),
        "gallery": False,
        "clusters": False,
    }
    ra, rb = make_run_dir(base / "a", seed=0, **kw), make_run_dir(base / "b", seed=1, **kw)
    _reshuffle(ra, drop=0.03, seed=5)
    _reshuffle(rb, drop=0.05, seed=6)
    return ra, rb, base


def _strip(c: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in c.items() if k != "created"}


def _close(x: Any, y: Any, path: str = "", rel: float = 1e-9) -> None:
    """Equal structures, floats to ``rel``."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and set(x) == set(y), (path, set(x) ^ set(y))
        for k in x:
            _close(x[k], y[k], f"{path}/{k}", rel)
    elif isinstance(x, list):
        assert isinstance(y, list) and len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _close(u, v, f"{path}[{i}]", rel)
    elif isinstance(x, float) and isinstance(y, float):
        assert y == pytest.approx(x, rel=rel, abs=1e-12), path
    else:
        assert x == y, (path, x, y)


def _min_rows(*runs: Path) -> int:
    counts = [
        pq.read_table(r / "samples.parquet", columns=["method"]).column(0).value_counts()
        for r in runs
    ]
    return min(int(x["counts"].as_py()) for c in counts for x in c)


def test_chunked_pairing_gives_the_in_memory_result(
    runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunked pairing (index ranges of 64 pairs: ~19 chunks per method, runs with different
    missing samples, shuffled rows) with fewer pairs than ``stream_min_pairs`` (but as many
    rows): every output equals the in-memory path's."""
    import auditor.compare.exact as cmp

    ra, rb, base = runs
    threshold = _min_rows(ra, rb)  # every method is read in chunks; fewer pairs than that
    got = compare_runs(
        ra, rb, out=base / "chunked", render=False, n_boot=200, stream_min_pairs=threshold,
        chunk_pairs=64,
    )  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(cmp, "_file_rows", lambda run: 0)  # route every comparison in memory
        ref = compare_runs(
            ra, rb, out=base / "ref", render=False, n_boot=200, stream_min_pairs=threshold
        )
    pairing = ref.comparison["pairing"]
    assert pairing["n_only_a"] > 0 and pairing["n_only_b"] > 0
    assert pairing["n_paired"] < threshold
    assert _strip(got.comparison) == _strip(ref.comparison)
    te = pq.read_table(base / "ref" / "comparison.parquet")
    tg = pq.read_table(base / "chunked" / "comparison.parquet")
    assert te.schema == tg.schema and te.to_pandas().equals(tg.to_pandas())
    assert len(got.comparison["moved"]) == 8
    assert not list((base / "chunked").glob(".compare-spill-*"))  # spill removed


def test_streamed_statistics_agree_with_the_in_memory_ones(runs: tuple[Path, Path, Path]) -> None:
    """Flat path with a forced small chunk: classes of at most a chunk are exact, larger ones
    (and the overall) use the Poisson bootstrap and the streamed Wilcoxon test."""
    ra, rb, base = runs
    ref = compare_runs(
        ra, rb, out=base / "ref2", render=False, n_boot=400, stream_min_pairs=_NEVER
    ).comparison
    small = compare_runs(  # every class below the chunk: per-class statistics exact
        ra, rb, out=base / "s1", render=False, n_boot=400, stream_min_pairs=0, chunk_pairs=256
    ).comparison
    big_result = compare_runs(  # every class above the chunk
        ra, rb, out=base / "s2", render=False, n_boot=400, stream_min_pairs=0, chunk_pairs=64
    )
    big = big_result.comparison
    from auditor.report.compare import build_compare_context

    caption = build_compare_context(big_result, base / "s2")["figures"][0]["caption"]
    n_big = sum(1 for e in big["primary"]["classes"].values() if e["n"] > 64)
    assert n_big and f"Intervals of {n_big} of " in caption and "Poisson" in caption
    ref_caption = build_compare_context(
        compare_runs(ra, rb, out=base / "ref3", render=False, n_boot=50, stream_min_pairs=_NEVER),
        base / "ref3",
    )["figures"][0]["caption"]
    assert "Poisson" not in ref_caption
    for got in (small, big):
        assert got["settings"]["overall_interval"].startswith("poisson bootstrap")
        for block in [got["primary"], *got["methods"].values()]:
            for c, entry in block["classes"].items():
                # a class's intervals are marked Monte-Carlo exactly when they are
                if got is big and entry["n"] > 64:
                    assert entry["interval"].startswith("poisson bootstrap"), c
                else:
                    assert "interval" not in entry, c
        assert got["pairing"] == ref["pairing"] and got["moved"] == ref["moved"]
        for key in ("class_order", "regressed", "improved"):
            assert got[key] == ref[key] or key != "class_order", key
    assert not any("interval" in e for e in ref["primary"]["classes"].values())
    _close(ref["primary"]["classes"], small["primary"]["classes"])
    _close(ref["methods"], {m: {**v, "overall": ref["methods"][m]["overall"]}
                            for m, v in small["methods"].items()})  # fmt: skip
    checked = 0
    for got in (small, big):
        blocks = [(ref["primary"], got["primary"])] + [
            (ref["methods"][m], got["methods"][m]) for m in ref["methods"]
        ]
        for be, bg in blocks:
            pairs = [(be["overall"], bg["overall"])]
            if got is big:
                pairs += [(be["classes"][c]["metrics"], bg["classes"][c]["metrics"])
                          for c in be["classes"]]  # fmt: skip
                assert {c: v["n"] for c, v in be["classes"].items()} == {
                    c: v["n"] for c, v in bg["classes"].items()
                }
            for me, mg in pairs:
                for q, se in me.items():
                    sg = mg[q]
                    for key in ("n", "n_nan", "test", "higher_is_better", "a_only", "b_only"):
                        assert sg.get(key) == se.get(key), (q, key)
                    for key in ("mean_a", "mean_b", "diff", "statistic", "p_value"):
                        if se[key] is None:
                            assert sg[key] is None
                        else:
                            assert sg[key] == pytest.approx(se[key], rel=1e-9, abs=1e-12), (q, key)
                    if se["ci_low"] is None or se["ci_high"] == se["ci_low"]:
                        continue
                    width = se["ci_high"] - se["ci_low"]
                    # Monte-Carlo error of a bootstrap quantile at B = 400: ~0.05 width
                    assert abs(sg["ci_low"] - se["ci_low"]) < 0.3 * width, q
                    assert abs(sg["ci_high"] - se["ci_high"]) < 0.3 * width, q
                    checked += 1
    assert checked > 100
    tr = pq.read_table(base / "ref2" / "comparison.parquet").to_pandas()
    for name in ("s1", "s2"):
        assert pq.read_table(base / name / "comparison.parquet").to_pandas().equals(tr)


def test_streamed_path_refuses_what_the_in_memory_path_refuses(tmp_path: Path) -> None:
    """An index whose id differs, labels that differ: the same error on both paths."""
    names = [f"c{i}" for i in range(4)]
    kw: dict[str, Any] = {"class_names": names, "shortcut_classes": names[:1],
                          "n_per_class": 60, "gallery": False, "clusters": False}  # fmt: skip
    ra, rb = make_run_dir(tmp_path / "a", seed=0, **kw), make_run_dir(tmp_path / "b", seed=1, **kw)
    t = pq.read_table(rb / "samples.parquet")
    ids = t.column("id").to_pylist()
    idx = t.column("index").to_numpy()
    ids = [f"other/{j}" if j == 150 else v for v, j in zip(ids, idx, strict=True)]
    pq.write_table(t.set_column(t.column_names.index("id"), "id", pa.array(ids)),
                   rb / "samples.parquet", row_group_size=50)  # fmt: skip
    msgs = []
    for smp in (_NEVER, 0):
        with pytest.raises(AuditorInputError, match="sample index 150") as err:
            compare_runs(ra, rb, out=tmp_path / f"o{smp}", render=False, n_boot=50,
                         stream_min_pairs=smp, chunk_pairs=64)  # fmt: skip
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1]
    lab = t.column("label").to_numpy().copy()
    lab[idx == 77] = (lab[idx == 77] + 1) % 4
    pq.write_table(t.set_column(t.column_names.index("label"), "label", pa.array(lab)),
                   rb / "samples.parquet")  # fmt: skip
    msgs = []
    for smp in (_NEVER, 0):
        with pytest.raises(AuditorInputError, match="has label") as err:
            compare_runs(ra, rb, out=tmp_path / f"p{smp}", render=False, n_boot=50,
                         stream_min_pairs=smp, chunk_pairs=64)  # fmt: skip
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1]


def test_duplicated_indices_pair_as_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicated indices (a run that wrote a sample twice) and samples missing from B pair
    the same way on both paths (the last row of B with an index wins, as before)."""
    import auditor.compare.exact as cmp

    names = [f"c{i}" for i in range(3)]
    kw: dict[str, Any] = {"class_names": names, "shortcut_classes": names[:1],
                          "n_per_class": 80, "gallery": False, "clusters": False}  # fmt: skip
    ra, rb = make_run_dir(tmp_path / "a", seed=0, **kw), make_run_dir(tmp_path / "b", seed=1, **kw)
    for run, dups, gone in ((ra, [17], []), (rb, [3, 100, 101, 239], [5, 6, 7])):
        t = pq.read_table(run / "samples.parquet")
        idx = t.column("index").to_numpy()
        dup = t.filter(pa.array(np.isin(idx, dups)))
        t = t.filter(pa.array(~np.isin(idx, gone)))
        pq.write_table(pa.concat_tables([dup, t]), run / "samples.parquet", row_group_size=64)
    threshold = _min_rows(ra, rb)
    got = compare_runs(ra, rb, out=tmp_path / "g", render=False, n_boot=50,
                       stream_min_pairs=threshold, chunk_pairs=64).comparison  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(cmp, "_file_rows", lambda run: 0)
        ref = compare_runs(ra, rb, out=tmp_path / "r", render=False, n_boot=50,
                           stream_min_pairs=threshold).comparison  # fmt: skip
    assert ref["pairing"]["n_paired"] == 238 < threshold
    assert _strip(got) == _strip(ref)
    te = pq.read_table(tmp_path / "r" / "comparison.parquet").to_pandas()
    assert pq.read_table(tmp_path / "g" / "comparison.parquet").to_pandas().equals(te)


def test_wilcoxon_stream_equals_scipy() -> None:
    """Exact ranks over value ranges: ties (rounded values), zeros, both signs, any chunk."""
    rng = np.random.default_rng(7)
    d = np.round(rng.normal(0.05, 1.0, 5000), 2)  # many ties
    d[::13] = 0.0
    d[::101] = np.nan
    c = rng.normal(-0.02, 1.0, 3000)
    b = rng.integers(-1, 2, 4000).astype(float)  # three values only
    cols = {"d": d, "c": c, "b": b}
    for chunk in (64, 200, 5000):

        def batches(chunk: int = chunk) -> Any:
            for lo in range(0, 5000, 333):
                yield {k: v[lo : lo + 333] for k, v in cols.items()}

        counts = {k: int(np.isfinite(v).sum()) for k, v in cols.items()}
        got = wilcoxon_stream(batches, counts, chunk)
        for k, v in cols.items():
            ok = v[np.isfinite(v)]
            ref = paired_test(np.zeros(ok.size), ok)
            assert got[k]["n"] == ref["n"]
            assert got[k]["statistic"] == ref["statistic"], (k, chunk)
            assert got[k]["p_value"] == pytest.approx(ref["p_value"], rel=1e-9), (k, chunk)
    allzero = wilcoxon_stream(lambda: iter([{"z": np.zeros(100)}]), {"z": 100}, 64)["z"]
    assert allzero["statistic"] == 0.0 and allzero["p_value"] == 1.0
    assert not math.isnan(got["b"]["p_value"])


_PEAK = """
import gc, json, sys, tracemalloc
import pyarrow as pa
import auditor.compare.core as cmp
import auditor.compare
import auditor.data, auditor.export, pandas, PIL.Image  # the comparison's lazy imports
cmp.TABLE_ROWS = 512  # comparison.parquet row groups
a, b, out = sys.argv[1:4]
peaks = {}
tracemalloc.start()
# streamed first: Arrow's max_memory only grows, so the in-memory run's is max(streamed, own)
for mode, stream_min_pairs in (("streamed", 0), ("in_memory", 10**9)):
    gc.collect()
    tracemalloc.reset_peak()
    held = tracemalloc.get_traced_memory()[0]
    auditor.compare.compare_runs(a, b, out=out + "-" + mode, render=False, top_n=0, n_boot=100,
                                 stream_min_pairs=stream_min_pairs, chunk_pairs=256)
    peaks[mode] = {"py": tracemalloc.get_traced_memory()[1] - held,
                   "arrow": pa.default_memory_pool().max_memory()}
print(json.dumps(peaks))
"""


def _peaks(tmp_path: Path, per_class: int) -> dict[str, dict[str, int]]:
    """Peak memory of the streamed, then the in-memory comparison of two runs of
    ``6 x per_class`` samples, in one fresh interpreter (imports not counted)."""
    names = [f"c{i}" for i in range(6)]
    kw: dict[str, Any] = {"class_names": names, "shortcut_classes": names[:2],
                          "n_per_class": per_class, "methods": ("gradcam", "cam"),
                          "gallery": False, "clusters": False}  # fmt: skip
    base = tmp_path / f"n{per_class}"
    ra, rb = make_run_dir(base / "a", seed=0, **kw), make_run_dir(base / "b", seed=1, **kw)
    for run in (ra, rb):  # row groups of 600 rows (the fixture writes 65,536 samples' worth)
        t = pq.read_table(run / "samples.parquet")
        pq.write_table(t, run / "samples.parquet", row_group_size=600)
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(ra), str(rb), str(base / "o")],
        cwd=ROOT, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    peaks: dict[str, dict[str, int]] = json.loads(out.stdout.strip().splitlines()[-1])
    return peaks


def test_streamed_memory_does_not_grow_with_the_pairs(tmp_path: Path) -> None:
    """Peak Python/numpy (tracemalloc, the imports not counted) and Arrow memory of a streamed
    comparison with a chunk of 256 pairs, at 1,500 and 9,000 pairs per method: Arrow's is the
    same, and Python's grows by less than a quarter of what the in-memory path's grows (a few
    kB per chunk of bookkeeping; the in-memory path holds every pair, which shows the
    measurement can fail). Six times the pairs, not four: at 4x the in-memory Arrow peak grew
    2.98x once (its fixed overhead), at the edge of the "> 3x" check that shows it can fail."""
    small, big = _peaks(tmp_path, 250), _peaks(tmp_path, 1500)
    s_small, s_big = small["streamed"], big["streamed"]
    mem_small, mem_big = small["in_memory"], big["in_memory"]
    assert mem_big["py"] > 1.5 * mem_small["py"], (small, big)
    assert mem_big["arrow"] > 3 * mem_small["arrow"], (small, big)
    assert s_big["py"] - s_small["py"] < 0.25 * (mem_big["py"] - mem_small["py"]), (small, big)
    assert s_big["arrow"] < 1.3 * s_small["arrow"] + (1 << 18), (small, big)
    assert s_big["py"] < mem_big["py"] and s_big["arrow"] < mem_big["arrow"], (small, big)
