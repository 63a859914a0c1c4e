"""Peak memory of an audit as the dataset grows (not a test).

Target (issue 7): the peak resident set size (RSS) of a 20,000-image audit stays within 1.2x
of a 1,000-image one, i.e. memory does not grow with the dataset (per-batch shards on disk,
aggregation from the shards)::

    ratio = peak_RSS(N_large) / peak_RSS(N_small)

Each size runs in a fresh Python subprocess (``--child``) that imports everything, records its
RSS after the imports (the "floor": torch, pyarrow, ... are ~identical in every run), audits,
and reports its own ``getrusage(RUSAGE_SELF).ru_maxrss`` (the kernel's exact high-water mark
of that process). Besides the ratio the table shows the growth above the floor, which is the
part the dataset size can influence (the floor dilutes the ratio).

Setup (so that 20,000 images audit in about two minutes on 2 cores): 32x32 synthetic PNGs with
masks (one manifest per size, the small one a prefix of the large), the demo's ``DemoNet``
with its shipped weights, ``gradcam``, batch 100, ``render=False`` (the report is excluded: it
reads aggregates only). The extras that cost a fixed amount or act on aggregates stay on
(sanity check on its fixed subset, bootstrap intervals, gallery); interventions (three more
forwards per batch, memory-neutral) and faithfulness are off unless ``--extras``; clusters
(SpRAy, a spectral clustering of all maps of a class) are off unless ``--clusters``.

Writes the "## Memory" section of ``docs/performance.md`` unless ``--no-write``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--quick] [--clusters]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

SECTION = "## Memory"
TARGET = 1.2
IMAGE_SIZE = 32
BATCH = 100


def current_rss_mib() -> float:
    """Current RSS of this process, MiB (``/proc/self/statm``; psutil as a fallback)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def child(config: Path, out: Path, threads: int) -> int:
    """Audit ``config`` into ``out`` and print one JSON line with the memory figures."""
    _common.ensure_root_on_path()
    import pyarrow  # noqa: F401
    import torch

    import auditor.analysis  # noqa: F401
    import auditor.metrics  # noqa: F401
    import auditor.report  # noqa: F401
    from auditor.audit.runner import run_audit
    from auditor.config import load_config

    torch.set_num_threads(threads)
    floor = current_rss_mib()
    cfg = load_config(config)
    t0 = time.perf_counter()
    res = run_audit(cfg, out, render=False, progress=False)
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "n": res.summary["dataset"]["n_evaluated"],
                "skipped": res.summary["dataset"]["n_skipped"],
                "floor_mib": floor,
                "peak_mib": _common.peak_rss_mib(),
                "end_mib": current_rss_mib(),
                "wall_s": wall,
                "loop_s": res.summary["run"]["timings"]["audit_loop_s"],
            }
        ),
        flush=True,
    )
    return 0


def run_child(config: Path, out: Path, threads: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(_common.ROOT))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(config), str(out), "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"audit subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,20000", help="small,large image counts")
    parser.add_argument("--clusters", action="store_true", help="also run SpRAy clusters")
    parser.add_argument(
        "--extras", action="store_true", help="also interventions and faithfulness (64 samples)"
    )
    parser.add_argument("--quick", action="store_true", help="500 and 5,000 images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]), args.threads)
    sizes = (500, 5000) if args.quick else tuple(int(v) for v in args.sizes.split(","))
    if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
        parser.error(f"--sizes must be 'small,large' with 0 < small < large, got {args.sizes!r}")
    _common.ensure_root_on_path()
    _common.set_threads(args.threads)
    from auditor.demo import MEAN, STD, weights_path

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    results: dict[int, dict[str, float]] = {}
    try:
        t0 = time.perf_counter()
        manifest = _common.make_dataset(tmp / "data", sizes[1], IMAGE_SIZE, seed=0)
        print(
            f"dataset: {sizes[1]} PNGs {IMAGE_SIZE}x{IMAGE_SIZE} in "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        lines = manifest.read_text(encoding="utf-8").splitlines()
        audit = {
            "methods": ["gradcam"],
            "batch_size": BATCH,
            "seed": 0,
            "clusters": bool(args.clusters),
            "interventions": bool(args.extras),
            "faithfulness_samples": 64 if args.extras else 0,
        }
        for n in sizes:
            m = tmp / "data" / f"manifest-{n}.csv"
            m.write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
            cfg = _common.write_config(
                tmp / f"config-{n}.toml",
                model={"factory": "auditor.demo:build_model", "weights": str(weights_path())},
                manifest=m,
                input_size=IMAGE_SIZE,
                audit=audit,
                mean=MEAN,
                std=STD,
            )
            res = run_child(cfg, tmp / f"run-{n}", args.threads)
            if res["n"] != n:
                raise RuntimeError(f"audited {res['n']} images, expected {n}")
            results[n] = res
            print(
                f"  {n} images: peak RSS {res['peak_mib']:.0f} MiB (floor after imports "
                f"{res['floor_mib']:.0f} MiB), {res['wall_s']:.1f}s",
                flush=True,
            )
            shutil.rmtree(tmp / f"run-{n}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    small, large = results[sizes[0]], results[sizes[1]]
    ratio = large["peak_mib"] / small["peak_mib"]
    g_small = small["peak_mib"] - small["floor_mib"]
    large_growth = large["peak_mib"] - large["floor_mib"]
    rows = [
        [
            f"{n:,}",
            f"{r['floor_mib']:.0f}",
            f"{r['peak_mib']:.0f}",
            f"{r['peak_mib'] - r['floor_mib']:.0f}",
            f"{r['wall_s']:.1f}",
            f"{r['loop_s']:.1f}",
        ]
        for n, r in results.items()
    ]
    table = _common.markdown_table(
        ["images", "RSS after imports MiB", "peak RSS MiB", "growth MiB", "audit s", "loop s"],
        rows,
    )
    verdict = "met" if ratio <= TARGET else "NOT met"
    lines_out = [
        table,
        "",
        f"Target: peak RSS({sizes[1]:,}) <= {TARGET}x peak RSS({sizes[0]:,}): "
        f"**{ratio:.2f}x, {verdict}**. Growth above the import floor: "
        f"{g_small:.0f} -> {large_growth:.0f} MiB "
        f"({large_growth / g_small if g_small > 0 else float('nan'):.2f}x for "
        f"{sizes[1] / sizes[0]:.0f}x the images).",
    ]
    print()
    print("\n".join(lines_out))
    if not args.no_write:
        body = "\n".join(
            [
                f"`benchmarks/bench_memory.py`: demo `DemoNet`, {IMAGE_SIZE}x{IMAGE_SIZE} "
                f"synthetic PNGs with masks, `gradcam`, batch {BATCH}, `render=False`; sanity "
                "check, "
                "bootstrap and gallery on; interventions and faithfulness "
                + ("on" if args.extras else "off")
                + "; clusters "
                + ("on" if args.clusters else "off")
                + ". One fresh subprocess per size; peak = `ru_maxrss` of that process.",
                "",
                *lines_out,
                "",
                f"Machine: {_common.machine_info()}; load average {_common.load_average()}.",
            ]
        )
        _common.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
