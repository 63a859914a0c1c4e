"""``auditor compare`` at scale: two synthetic runs of N samples x 3 methods (not a test).

Each run directory is written by ``tests/report_fixtures.py`` (1,000 classes; run B drawn with
another seed, so every metric moved a little) in a child process; the comparison
(``compare_runs``: pairing, statistics, comparison.parquet, HTML + PDF) runs in a fresh child
whose peak RSS is its own. Writes the "## Compare at scale" section of docs/performance.md.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_compare.py [--samples 50000,1000000]
        [--classes 1000] [--no-pdf] [--no-write]
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
            built = [
                _child("--build-only", str(t / f"run{s}"), str(args.classes), str(per), str(s))
                for s in (0, 1)
            ]
            r = _child(
                "--compare-only",
                str(t / "run0"),
                str(t / "run1"),
                str(t / "cmp"),
                "0" if args.no_pdf else "1",
            )
            shutil.rmtree(t, ignore_errors=True)
        print(f"{n:,}: {r}", flush=True)
        rows.append(
            [
                f"{int(r['n_paired']):,} × {len(METHODS)}",
                f"{built[0]['t']:.0f} s + {built[1]['t']:.0f} s",
                f"**{r['wall']:.1f} s** ({r['cpu']:.1f} s CPU)",
                f"{max(r['rss'], r['rss_children']):.0f} MB "
                f"(+{max(r['rss'], r['rss_children']) - r['floor']:.0f} MB)",
                f"{r['parquet_mb']:.0f} MB",
                str(r["interval"]).split(" (")[0],
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
        ],
        rows,
    )
    body = f"""
`benchmarks/bench_compare.py`: two synthetic runs (`tests/report_fixtures.py`, seeds 0 and 1)
of {len(METHODS)} methods and {args.classes:,} classes; `compare_runs` with the defaults of
`auditor compare` (n_boot 2,000, `top_n` 0: no moved-sample panels, which need CAM shards)
in a fresh process; peak RSS is the larger of that process's and its PDF worker's maximum,
and the import floor its maximum right after `import auditor.compare` (torch and friends).
Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()};
load average at the end {load_average()}.
Each run's samples.parquet is read one method at a time with only the needed columns (the
Parquet reader applies the method filter per row group); each comparison's rows are written
to comparison.parquet and released before the next method. From 200,000 pairs per method
(`stream_min_pairs`) the overall intervals come from one streamed pass of a Poisson
bootstrap keyed by dataset index (all quantities at once); per-class intervals, Wilcoxon and
McNemar tests stay exact.

{table}
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
