"""Finalisation at scale (issue 14): ``auditor finalize`` of N synthetic samples x 3 methods.

No model runs: the run directory's shards are generated directly in the run store's format
(``shards/part-NNNNN.parquet`` rows with the runner's schema, ``cams-NNNNN.npz`` 7x7 float16
maps, ``skipped-NNNNN.json``, a complete ``shard-0-of-1.json`` record), over a manifest of N
samples with boxes that point at a few real images (the gallery draws some of them). Labels
are uniform over the classes; a tenth of the classes get a planted background shortcut
(higher background focus, lower only-foreground accuracy) so findings and the gallery have
work to do. Each variant (1,000 and 10 classes) is finalised by ``auditor finalize RUN
--no-pdf`` in its own subprocess; the table gives its wall time, its peak RSS (``ru_maxrss``
of that child, from ``os.wait4``) and the analysis time summary.json records.

Target: 1M samples x 3 methods within 2 GiB peak RSS and 10 minutes on 2 cores.

    python benchmarks/bench_finalize.py [--samples 1000000] [--classes 1000,10] [--no-write]
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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_root_on_path, load_average, machine_info, write_section  # noqa: E402

ensure_root_on_path()

METHODS = ("gradcam", "gradcam++", "layercam")
SECTION = "## Finalisation at scale (issue 14)"
GIB = 1024**3

#: The runner's row schema (auditor.audit.runner / store: one row per sample x method).
SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("target", pa.int64()),
        ("pred", pa.int64()),
        ("correct", pa.bool_()),
        ("confidence", pa.float64()),
        ("pred_confidence", pa.float64()),
        ("has_mask", pa.bool_()),
        ("mask_area", pa.float64()),
        ("image_sha256", pa.string()),
        ("mask_sha256", pa.string()),
        ("notes", pa.string()),
        ("method", pa.string()),
        ("status", pa.string()),
        ("cam_status", pa.string()),
        ("energy_in_mask", pa.float64()),
        ("background_focus", pa.float64()),
        ("energy_lift", pa.float64()),
        ("pointing_game", pa.float64()),
        ("relevance_rank_accuracy", pa.float64()),
        ("iou", pa.float64()),
        ("auc", pa.float64()),
        ("density_diff", pa.float64()),
        ("border_focus", pa.float64()),
        ("entropy", pa.float64()),
        ("only_fg_correct", pa.float64()),
        ("only_fg_confidence", pa.float64()),
        ("only_bg_correct", pa.float64()),
        ("only_bg_confidence", pa.float64()),
        ("mixed_rand_correct", pa.float64()),
        ("mixed_rand_confidence", pa.float64()),
        ("only_bg_pred", pa.int64()),
        ("faithfulness_subset", pa.bool_()),
        ("deletion_auc", pa.float64()),
        ("insertion_auc", pa.float64()),
        ("average_drop", pa.float64()),
        ("increase_in_confidence", pa.float64()),
    ]
)
FAITH_SUBSET = 64


def _hexes(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    return [r.tobytes().hex() for r in raw]


def write_inputs(
    root: Path, n: int, n_classes: int, *, clusters: bool = True
) -> tuple[Path, list[str]]:
    """Config, weights, a manifest of ``n`` rows (boxes) over 8 real images."""
    from PIL import Image

    from auditor.config import load_config
    from auditor.data import open_dataset

    classes = [f"class{c:04d}" for c in range(n_classes)]
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(8):
        arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(img_dir / f"img{k}.png")
    labels = np.random.default_rng(1).integers(0, n_classes, n)
    with open(root / "manifest.csv", "w", encoding="utf-8") as fh:
        fh.write("id,image,label,x0,y0,x1,y1\n")
        for i in range(n):
            fh.write(f"s{i:07d},images/img{i % 8}.png,{classes[labels[i]]},16,16,48,48\n")
    weights = Path(__file__).resolve().parents[1] / "auditor" / "_weights" / "demo-shortcut.pt"
    shutil.copy(weights, root / "weights.pt")
    cfg = root / "config.toml"
    cfg.write_text(
        "[model]\n"
        'factory = "auditor.demo:build_model"\n'
        'weights = "weights.pt"\n'
        "[data]\n"
        'manifest = "manifest.csv"\n'
        f"classes = {json.dumps(classes)}\n"
        "input_size = 64\n"
        "[audit]\n"
        f"methods = {json.dumps(list(METHODS))}\n"
        "batch_size = 4096\n"
        f"faithfulness_samples = {FAITH_SUBSET}\n"
        + ("" if clusters else "clusters = false\ngallery_per_class = 0\n"),
        encoding="utf-8",
    )
    c = load_config(cfg)
    ds = open_dataset(c.data)
    return cfg, [c.sha256, ds.annotation_sha256(), *classes]


def write_shards(run: Path, cfg: Path, fp: list[str], n: int, batch: int) -> None:
    """The run store's shards for ``n`` samples x 3 methods, ``batch`` samples per batch."""
    config_sha, annotation_sha, *classes = fp
    n_classes = len(classes)
    shards = run / "shards"
    shards.mkdir(parents=True)
    labels_all = np.random.default_rng(1).integers(0, n_classes, n)  # as in the manifest
    biased = np.zeros(n_classes, bool)
    biased[:: max(1, n_classes // 10)] = True
    n_batches = (n + batch - 1) // batch
    for b in range(n_batches):
        rng = np.random.default_rng([7, b])
        idx = np.arange(b * batch, min(n, (b + 1) * batch))
        m = idx.size
        lab = labels_all[idx]
        bias = biased[lab]
        wrong = rng.random(m) < 0.15
        pred = np.where(wrong, rng.integers(0, n_classes, m), lab)
        correct = pred == lab
        base = {
            "index": idx,
            "id": [f"s{i:07d}" for i in idx],
            "label": lab,
            "label_name": [classes[k] for k in lab],
            "target": lab,
            "pred": pred,
            "correct": correct,
            "confidence": rng.uniform(0.3, 1.0, m),
            "pred_confidence": rng.uniform(0.3, 1.0, m),
            "has_mask": np.ones(m, bool),
            "mask_area": np.full(m, 0.25),
            "image_sha256": _hexes(rng, m),
            "mask_sha256": _hexes(rng, m),
            "notes": [""] * m,
            "only_fg_correct": np.where(bias, rng.random(m) < 0.5, correct).astype(float),
            "only_fg_confidence": rng.random(m),
            "only_bg_correct": np.where(bias, rng.random(m) < 0.6, rng.random(m) < 0.05).astype(
                float
            ),
            "only_bg_confidence": rng.random(m),
            "mixed_rand_correct": (rng.random(m) < 0.7).astype(float),
            "mixed_rand_confidence": rng.random(m),
            "only_bg_pred": np.where(rng.random(m) < 0.3, lab, rng.integers(0, n_classes, m)),
            "faithfulness_subset": idx < FAITH_SUBSET,
        }
        tables = []
        cams = {}
        for k, method in enumerate(METHODS):
            bf = np.clip(rng.beta(2, 3, m) + 0.35 * bias, 0, 1)
            const = rng.random(m) < 0.002  # constant maps: metrics undefined
            cols = dict(base)
            cols["method"] = [method] * m
            cols["status"] = np.where(const, "constant_cam", "ok").tolist()
            cols["cam_status"] = cols["status"]
            metric = {
                "energy_in_mask": 1 - bf,
                "background_focus": bf,
                "energy_lift": (1 - bf) / 0.25,
                "pointing_game": (rng.random(m) < 1 - bf).astype(float),
                "relevance_rank_accuracy": rng.beta(3, 2, m),
                "iou": rng.beta(2, 4, m),
                "auc": rng.beta(4, 2, m),
                "density_diff": rng.normal(2, 1, m),
                "border_focus": rng.beta(1, 5, m),
                "entropy": rng.beta(5, 2, m),
            }
            for name, v in metric.items():
                cols[name] = np.where(const, np.nan, v)
            faith = idx < FAITH_SUBSET
            for name in ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence"):
                cols[name] = np.where(faith, rng.random(m), np.nan)
            tables.append(pa.table({f.name: cols[f.name] for f in SCHEMA}, schema=SCHEMA))
            maps = rng.random((m, 7, 7)).astype(np.float16)
            maps[:, 2:5, 2:5] += np.float16(1.0 - 0.6 * k / len(METHODS))
            cams[f"cam__{method}"] = maps
        pq.write_table(
            pa.concat_tables(tables),
            shards / f"part-{b:05d}.parquet",
            compression="zstd",
            use_dictionary=True,
        )
        np.savez(
            shards / f"cams-{b:05d}.npz",
            ids=np.asarray([f"s{i:07d}" for i in idx]),
            indices=idx,
            **cams,
        )
        (shards / f"skipped-{b:05d}.json").write_text("[]")
    model = {
        "name": "synthetic",
        "sha256": "0" * 64,
        "source": "factory:auditor.demo:build_model",
        "target_layer": "features",
        "num_classes": n_classes,
    }
    fingerprints = {
        "config_sha256": config_sha,
        "model_sha256": "0" * 64,
        "annotation_sha256": annotation_sha,
        "settings": "synthetic",
        "tool_version": "synthetic",
    }
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    record = {
        "shard": "0/1",
        "mode": "shard",
        "status": "complete",
        "fingerprints": fingerprints,
        "n_samples": n,
        "n_batches": n_batches,
        "batch_size": batch,
        "batches": list(range(n_batches)),
        "config_path": str(cfg),
        "overrides": {"device": None, "limit": None},
        "model": model,
        "provenance": {"fingerprints": fingerprints, "model": model, "started": now},
        "started": now,
        "finished": now,
        "loop_s": 0.0,
        "sanity": {"_status": {"run": False, "reason": "synthetic shards", "randomised": []}},
    }
    (shards / "shard-0-of-1.json").write_text(json.dumps(record))


def finalize(run: Path, aggregation: str, *, render: bool = True) -> dict[str, Any]:
    """``auditor finalize RUN --no-pdf`` in a subprocess: wall s, peak RSS bytes, analysis s.

    ``render=False``: ``auditor.audit.runner.finalize_run(render=False)`` instead (no HTML report).
    """
    env = dict(os.environ, CI="1")
    cmd = [sys.executable, "-m", "auditor", "finalize", str(run), "--no-pdf"]
    cmd += ["--aggregation", aggregation]
    if not render:
        cmd = [
            sys.executable,
            "-c",
            "import sys; from auditor.audit.runner import finalize_run; "
            "finalize_run(sys.argv[1], pdf=False, render=False, aggregation=sys.argv[2])",
            str(run),
            aggregation,
        ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise RuntimeError(f"auditor finalize exited {code}:\n{out[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    return {
        "wall_s": wall,
        "rss": usage.ru_maxrss * 1024.0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "analysis_s": float(summary["run"]["timings"]["analysis_s"]),
        "aggregation": summary["run"].get("aggregation"),
        "findings": len(summary["findings"]),
        "exit": code,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=100_000, help="1000000 for the target run")
    p.add_argument("--classes", default="1000,10", help="comma-separated class counts")
    p.add_argument("--batch", type=int, default=4096, help="samples per shard batch")
    p.add_argument("--aggregation", default="auto", choices=("auto", "exact", "streaming"))
    p.add_argument(
        "--no-clusters",
        action="store_true",
        help="clusters = false, gallery_per_class = 0 (time the aggregation, not SpRAy/drawing)",
    )
    p.add_argument("--no-render", action="store_true", help="no HTML report")
    p.add_argument(
        "--generate-only", action="store_true", help="with --reuse: only generate the shards"
    )
    p.add_argument("--quick", action="store_true", help="20,000 samples, docs untouched")
    p.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    p.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    p.add_argument(
        "--reuse",
        type=Path,
        help="generate each variant once under REUSE/<samples>x<classes>[-noclusters] and "
        "reuse it on later calls (the finalisation outputs are overwritten)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.no_write = 20_000, True
    rows = []
    for n_classes in [int(c) for c in args.classes.split(",") if c.strip()]:
        if args.reuse is not None:
            tag = f"{args.samples}x{n_classes}" + ("-noclusters" if args.no_clusters else "")
            tmp = args.reuse / tag
        else:
            tmp = Path(tempfile.mkdtemp(prefix="bench-finalize-", dir=args.keep))
        try:
            t0 = time.perf_counter()
            if not (tmp / "run" / "shards" / "shard-0-of-1.json").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                cfg, fp = write_inputs(
                    tmp / "inputs", args.samples, n_classes, clusters=not args.no_clusters
                )
                write_shards(tmp / "run", cfg, fp, args.samples, args.batch)
            gen_s = time.perf_counter() - t0
            if args.generate_only:
                print(f"{tmp}: shards ready ({gen_s:.0f} s)", flush=True)
                continue
            res = finalize(tmp / "run", args.aggregation, render=not args.no_render)
            res.update(classes=n_classes, gen_s=gen_s)
            rows.append(res)
            print(
                f"{args.samples:,} samples x {len(METHODS)} methods, {n_classes} classes: "
                f"{res['aggregation']}, finalize {res['wall_s']:.1f} s wall, "
                f"{res['cpu_s']:.1f} s CPU (analysis "
                f"{res['analysis_s']:.1f} s), peak RSS {res['rss'] / GIB:.2f} GiB, "
                f"{res['findings']} findings; shards generated in {gen_s:.0f} s; "
                f"load {load_average()}",
                flush=True,
            )
        finally:
            if args.keep is None and args.reuse is None:
                shutil.rmtree(tmp, ignore_errors=True)
    ok = all(r["rss"] <= 2 * GIB and r["wall_s"] <= 600 for r in rows)
    # CPU seconds do not depend on the other processes of a shared machine; wall time does
    body = [
        "",
        f"`auditor finalize RUN --no-pdf` of {args.samples:,} synthetic samples x "
        f"{len(METHODS)} methods (`benchmarks/bench_finalize.py --samples {args.samples}"
        + (" --no-clusters" if args.no_clusters else "")
        + (" --no-render" if args.no_render else "")
        + "`; shards generated in the run store's format, no model"
        + ("; SpRAy clusters and gallery off" if args.no_clusters else "")
        + ("; no HTML report" if args.no_render else "; HTML report included")
        + "). Target: 1M samples within 2 GiB peak RSS and 10 minutes on 2 cores.",
        "",
        f"Machine: {machine_info()}; load average at the end {load_average()}.",
        "",
        "| classes | aggregation | finalize wall s | CPU s (user+sys) | analysis s | peak RSS GiB "
        "| findings |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        body.append(
            f"| {r['classes']} | {r['aggregation']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['analysis_s']:.1f} | {r['rss'] / GIB:.2f} | {r['findings']} |"
        )
    body += ["", f"Target met at this size: {'yes' if ok else 'no'}.", ""]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
