"""Group audit at scale (issue 24): 1M samples x 10 attributes x ~20 levels.

No model runs: a primary-method ``samples.parquet`` (the columns the group audit reads, with
``top_classes``/``top_probs`` of 20 classes) and a groups side CSV (``id`` + 10 attributes,
one of them numeric and binned by quartiles, a few missing values) are generated in a
temporary directory. A fresh subprocess then runs the group finalisation exactly as
``auditor finalize`` does for ``[data] groups`` (:func:`auditor.analysis.groups.run.
attach_groups` on a minimal audit result): reading the attributes, rewriting
``samples.parquet`` with the ``group_*`` columns, the statistics, the class × group AUROC /
ECE, slice discovery and the subgroup join. The table gives its wall time and peak RSS
(``ru_maxrss`` of that child, from ``os.wait4``).

Target: within the finalisation's memory bound (2 GiB peak RSS at 1M samples, issue 14).

    python benchmarks/bench_groups.py [--samples 1000000] [--attributes 10] [--levels 20]
                                      [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_root_on_path, load_average, machine_info, write_section  # noqa: E402

ensure_root_on_path()

SECTION = "## Group audit at scale (issue 24)"
N_CLASSES = 20
GIB = 1024**3


def make_data(root: Path, n: int, n_attr: int, n_levels: int, seed: int = 0) -> None:
    """samples.parquet and groups.csv of ``n`` synthetic samples (written in chunks)."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([
        ("index", pa.int64()), ("id", pa.string()), ("method", pa.string()),
        ("label", pa.int64()), ("pred", pa.int64()), ("correct", pa.bool_()),
        ("pred_confidence", pa.float64()), ("label_confidence", pa.float64()),
        ("top_classes", pa.list_(pa.int32())), ("top_probs", pa.list_(pa.float32())),
        ("background_focus", pa.float64()), ("energy_in_mask", pa.float64()),
        ("only_bg_correct", pa.float64()), ("only_fg_correct", pa.float64()),
    ])  # fmt: skip
    chunk = 100_000
    with pq.ParquetWriter(root / "samples.parquet", schema) as w, open(
        root / "groups.csv", "w", encoding="utf-8"
    ) as fh:
        fh.write("id," + ",".join(f"a{j}" for j in range(n_attr)) + "\n")
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            label = rng.integers(0, N_CLASSES, m)
            logits = rng.normal(0, 1, (m, N_CLASSES)) + 2.0 * np.eye(N_CLASSES)[label]
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            order = np.argsort(-p, 1)
            pred = order[:, 0]
            bf = rng.beta(2, 5, m)
            ids = [f"img{start + i:07d}" for i in range(m)]
            w.write_table(pa.table({
                "index": np.arange(start, start + m), "id": ids, "method": ["gradcam"] * m,
                "label": label, "pred": pred, "correct": pred == label,
                "pred_confidence": p.max(1), "label_confidence": p[np.arange(m), label],
                "top_classes": pa.array(order.astype(np.int32).tolist(), pa.list_(pa.int32())),
                "top_probs": pa.array(np.take_along_axis(p, order, 1).astype(np.float32).tolist(),
                                      pa.list_(pa.float32())),
                "background_focus": bf, "energy_in_mask": 1 - bf,
                "only_bg_correct": (rng.random(m) < 0.2).astype(float),
                "only_fg_correct": (rng.random(m) < 0.8).astype(float),
            }, schema=schema))  # fmt: skip
            cols = [
                np.char.add("L", rng.integers(0, n_levels, m).astype(str)) for _ in range(n_attr)
            ]
            cols[0] = np.round(rng.uniform(18, 95, m)).astype(int).astype(str)  # numeric: age
            cols[1] = np.where(rng.random(m) < 0.01, "", cols[1])  # missing values
            rows = zip(ids, *cols)
            fh.write("".join(",".join(r) + "\n" for r in rows))


def worker(root: Path, n_attr: int) -> None:
    """The group finalisation of the generated data (run in a fresh subprocess)."""
    from auditor.analysis.groups.run import attach_groups
    from auditor.results import AuditResult

    attrs = tuple(f"a{j}" for j in range(n_attr))
    data = SimpleNamespace(groups=attrs, groups_file=root / "groups.csv", format="imagefolder",
                           manifest=None, bins={"a0": "quartiles"})  # fmt: skip
    result = AuditResult.from_json({"schema_version": 1, "primary_method": "gradcam",
                                    "findings": [], "classes": {}})  # fmt: skip
    settings = SimpleNamespace(confidence=0.95, bootstrap=1000, seed=0)
    t0 = time.perf_counter()
    out = attach_groups(root, result, data_config=data, classes=[f"c{i}" for i in range(N_CLASSES)],
                        settings=settings, min_group_size=10)  # fmt: skip
    groups = out.extra["groups"]
    n_levels = sum(len(a["levels"]) for a in groups["attributes"])
    print(json.dumps({"seconds": time.perf_counter() - t0, "n_tests": groups["n_tests"],
                      "n_slices": len(groups["slices"]), "n_levels": n_levels}))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--attributes", type=int, default=10)
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="100,000 samples; docs untouched")
    ap.add_argument("--no-write", action="store_true", help="leave docs/performance.md alone")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.worker, args.attributes)
        return 0
    n = 100_000 if args.quick else args.samples
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        root = Path(tmp)
        make_data(root, n, args.attributes, args.levels)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(root), "--attributes",
             str(args.attributes)], env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stdout = proc.stdout.read() if proc.stdout else ""
        if status != 0:
            print(stdout)
            return 1
        info = json.loads(stdout.strip().splitlines()[-1])
    rss = usage.ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux
    body = (
        f"{machine_info()}; load average {load_average()}\n\n"
        "| samples | attributes x levels | levels shown | tests | wall (s) | group step (s) "
        "| peak RSS (GiB) | target |\n|---|---|---|---|---|---|---|---|\n"
        f"| {n:,} | {args.attributes} x {args.levels} | {info['n_levels']} | {info['n_tests']} "
        f"| {wall:.0f} | {info['seconds']:.0f} | {rss:.2f} | <= 2 GiB |"
    )
    print(body)
    if not (args.quick or args.no_write):
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
