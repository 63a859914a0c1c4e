"""Run every benchmark in sequence (``make bench``).

Each benchmark runs in its own subprocess with ``torch.set_num_threads(2)`` applied before the
script starts (and ``OMP_NUM_THREADS=2``), so the numbers are comparable across machines with
more cores; its output (tables included) is streamed as it comes. Each script writes its own
section of ``docs/performance.md``; ``--quick`` uses smaller sizes and does not touch the file
(quick numbers are for a smoke test, not for the record).

Exit status: 0 when every benchmark ran, 1 when one crashed (its name is printed). A missed
performance target is reported in the tables and is never a failure here.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only e2e,memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: name -> (script, extra arguments in --quick mode)
BENCHES: dict[str, tuple[str, list[str]]] = {
    "cam": (
        "bench_cam.py",
        ["--models", "resnet18", "--repeats", "1", "--scorecam", "resnet18:1:1"],
    ),
    "compare": ("bench_compare.py", ["--samples", "5000", "--classes", "50", "--no-pdf"]),
    "e2e": ("bench_e2e.py", ["--quick"]),
    "gpu": ("bench_gpu.py", ["--iters", "3", "--repeats", "1"]),  # "skipped: no CUDA" on CPU
    "finalize": ("bench_finalize.py", ["--quick"]),
    "memory": ("bench_memory.py", ["--quick"]),
    "groups": ("bench_groups.py", ["--quick"]),
    "report": ("bench_report.py", ["--classes", "100", "--samples", "2000"]),
    "scale": ("bench_scale.py", ["--quick"]),
    # planted shortcuts + clean twins (docs/validity.md); the full grid takes hours on 2 cores
    "detection": ("detection/run.py", ["--quick"]),
}

#: Runs the script as ``__main__`` after pinning torch's threads (``-c`` program).
LAUNCHER = (
    "import runpy, sys\n"
    "try:\n"
    "    import torch\n"
    "    torch.set_num_threads(int(sys.argv[1]))\n"
    "except ImportError:\n"
    "    pass\n"
    "script = sys.argv[2]\n"
    "sys.argv = sys.argv[2:]\n"
    "sys.path.insert(0, str(__import__('pathlib').Path(script).resolve().parent))\n"
    "runpy.run_path(script, run_name='__main__')\n"
)


def command(
    name: str, *, quick: bool, threads: int, detection_grid: str = "quick"
) -> list[str]:
    """The subprocess command line of benchmark ``name``. The detection benchmark runs its
    quick grid unless ``detection_grid == "full"`` (the full grid takes hours on 2 cores)."""
    script, quick_args = BENCHES[name]
    args = [*quick_args, "--no-write"] if quick else []
    if name == "detection" and not quick and detection_grid != "full":
        args = list(quick_args)
    return [sys.executable, "-c", LAUNCHER, str(threads), str(HERE / script), *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, docs untouched")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--detection-grid", choices=("quick", "full"), default="quick",
        help="the detection benchmark's grid: quick (default) or full (hours on 2 cores)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    failed: list[str] = []
    timings: list[tuple[str, float, int]] = []
    for name in names:
        script = HERE / BENCHES[name][0]
        print(f"\n=== {name}: {script.name}{' (quick)' if args.quick else ''} ===", flush=True)
        if not script.is_file():
            print(f"missing: {script}", flush=True)
            failed.append(name)
            timings.append((name, 0.0, -1))
            continue
        t0 = time.perf_counter()
        rc = subprocess.run(
            command(
                name, quick=args.quick, threads=args.threads, detection_grid=args.detection_grid
            ),
            cwd=ROOT,
            env=env,
            check=False,
        ).returncode
        timings.append((name, time.perf_counter() - t0, rc))
        if rc != 0:
            failed.append(name)
    print("\n=== summary ===")
    for name, seconds, rc in timings:
        state = "ok" if rc == 0 else ("missing" if rc == -1 else f"CRASHED (exit {rc})")
        print(f"{name:8s} {seconds:7.1f}s  {state}")
    if failed:
        print(f"crashed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
