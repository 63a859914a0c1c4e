"""``auditor compare`` at scale: two synthetic runs of N samples x 3 methods (not a test).

Each run directory is written by ``tests/report_fixtures.py`` (1,000 classes; run B drawn with
another seed, so every metric moved a little) in a child process; the comparison
(``compare_runs``: pairing, statistics, comparison.parquet, HTML + PDF) runs in a fresh child
whose peak RSS is its own. Writes the "## Compare at scale" section of docs/performance.md.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_compare.py [--samples 50000,1000000]
        [--classes 1000] [--no-pdf] [--no-write] [--data DIR]

``--data DIR`` keeps the generated runs in ``DIR/<samples>x<classes>/run{0,1}`` and reuses
them on the next call (building two 1M-sample runs takes about two minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, load_average, markdown_table, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
SECTION = "## Compare at scale"
METHODS = ("gradcam", "cam", "scorecam")


def build_once(run: Path, n_classes: int, per_class: int, seed: int) -> float:
    from tests.report_fixtures import make_run_dir

    t0 = time.perf_counter()
    names = [f"class {i:04d}" for i in range(n_classes)]
    make_run_dir(
        run,
        class_names=names,
        shortcut_classes=names[::5],
        n_per_class=per_class,
        methods=METHODS,
        gallery=False,
        clusters=False,
        n_skipped=0,
        seed=seed,
    )
    return time.perf_counter() - t0


def compare_once(a: Path, b: Path, out: Path, pdf: bool) -> dict[str, float]:
    from auditor.compare import compare_runs

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after the imports
    t0, c0 = time.perf_counter(), _cpu()
    res = compare_runs(a, b, out=out, pdf=pdf, top_n=0)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {
        "wall": wall,
        "cpu": cpu,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "floor": floor,
        "rss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "n_paired": res.comparison["pairing"]["n_paired"],
        "interval": res.comparison["settings"]["overall_interval"],
        "parquet_mb": (out / "comparison.parquet").stat().st_size / 1e6,
        "cpu_load": load_average(),
    }


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _child(*args: str) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{proc.stderr[-4000:]}")
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", default="50000,1000000")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--no-pdf", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--data", default=None, help="keep and reuse the generated runs here")
    parser.add_argument("--build-only", nargs=4, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compare-only", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only is not None:
        run, k, per, seed = args.build_only
        print(json.dumps({"t": build_once(Path(run), int(k), int(per), int(seed))}))
        return 0
    if args.compare_only is not None:
        a, b, out, pdf = args.compare_only
        print(json.dumps(compare_once(Path(a), Path(b), Path(out), pdf == "1")))
        return 0
    rows = []
    for n in [int(x) for x in args.samples.split(",") if x.strip()]:
        per = max(1, n // args.classes)
        with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
            t = Path(tmp)
            data = t if args.data is None else Path(args.data) / f"{n}x{args.classes}"
            built = []
            for s in (0, 1):
                run = data / f"run{s}"
                if (run / "summary.json").is_file() and (run / "samples.parquet").is_file():
                    built.append({"t": float("nan")})  # reused
                    continue
                shutil.rmtree(run, ignore_errors=True)
                built.append(_child("--build-only", str(run), str(args.classes), str(per), str(s)))
            r = _child(
                "--compare-only",
                str(data / "run0"),
                str(data / "run1"),
                str(t / "cmp"),
                "0" if args.no_pdf else "1",
            )
            shutil.rmtree(t / "cmp", ignore_errors=True)
        print(f"{n:,}: {r}", flush=True)
        rows.append(
            [
                f"{int(r['n_paired']):,} × {len(METHODS)}",
                " + ".join("reused" if b["t"] != b["t"] else f"{b['t']:.0f} s" for b in built),
                f"**{r['wall']:.1f} s** ({r['cpu']:.1f} s CPU)",
                f"{max(r['rss'], r['rss_children']):.0f} MB "
                f"(+{max(r['rss'], r['rss_children']) - r['floor']:.0f} MB)",
                f"{r['parquet_mb']:.0f} MB",
                str(r["interval"]).split(" (")[0],
                f"{r['cpu_load']}",
            ]
        )
    table = markdown_table(
        [
            "pairs × methods",
            "build both runs (not timed)",
            "`compare_runs` (pairing, statistics, parquet, HTML"
            + ("" if args.no_pdf else " + PDF")
            + ")",
            "peak RSS (above the import floor)",
            "comparison.parquet",
            "overall interval",
            "load average (1/5/15 min) at the end",
        ],
        rows,
    )
    body = f"""
`benchmarks/bench_compare.py`: two synthetic runs (`tests/report_fixtures.py`, seeds 0 and 1)
of {len(METHODS)} methods and {args.classes:,} classes; `compare_runs` with the defaults of
`auditor compare` (n_boot 2,000, `top_n` 0: no moved-sample panels, which need CAM shards)
in a fresh process; peak RSS is the larger of that process's and its PDF worker's maximum,
and the import floor its maximum right after `import auditor.compare` (numpy, pyarrow,
scipy: no torch since issue 14).
Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()};
load average at the end {load_average()}.
From `stream_min_pairs` (200,000) rows of a method in both runs, a comparison runs in flat
memory (`auditor/compare_stream.py`): each run's rows are partitioned by dataset-index range
into temporary files (row group by row group, needed columns only), paired range by range
(chunks of 65,536 pairs), written to comparison.parquet and spilled by group of classes; the
overall intervals come from a Poisson bootstrap keyed by dataset index, the overall Wilcoxon
tests from exact ranks counted over value ranges, the per-class statistics of classes of at
most a chunk of pairs are the exact ones (BCa bootstrap, Wilcoxon, McNemar). Below the
threshold, both tables are read and paired in memory, as before.

{table}
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
