"""A synthetic but schema-valid run directory for report tests and the report benchmark.

:func:`make_run_dir` writes ``summary.json`` (schema_version 1, see docs/run-directory.md),
``samples.parquet`` and ``gallery/*.png`` for made-up classes. The statistics in the summary
are computed here from the synthetic samples (the real analysis does it in the product); the
report only formats them. The default class names include hostile strings on purpose.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auditor.report.figures import cluster_panel, gallery_panel

XSS_NAME = "<script>alert(1)</script>"
QUOTE_NAME = "quote \"double\" & 'single' <b>bold</b>"
LONG_NAME = "x" * 300
DEFAULT_CLASSES = ("circle", "square", "triangle", XSS_NAME, QUOTE_NAME, LONG_NAME)
#: Classes given a high background focus (a planted shortcut) in the default fixture.
SHORTCUT_CLASSES = ("triangle", XSS_NAME)

METRICS = (
    "energy_in_mask",
    "background_focus",
    "energy_lift",
    "pointing_game",
    "relevance_rank_accuracy",
    "iou",
    "auc",
)


def _stat(values: np.ndarray) -> dict[str, Any]:
    """Mean and a normal-approximation 95% interval, NaN excluded and counted."""
    v = np.asarray(values, dtype=float)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_nan": int(v.size)}
    mean = float(ok.mean())
    half = 1.96 * float(ok.std(ddof=1)) / math.sqrt(ok.size) if ok.size > 1 else 0.0
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": int(ok.size),
        "n_nan": int(v.size - ok.size),
    }


def _prop_ci(p: float, n: int) -> list[float]:
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1))
    return [max(0.0, p - half), min(1.0, p + half)]


def synthetic_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a disc: (image [S, S, 3] uint8, mask [S, S] bool)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    r = rng.uniform(0.15, 0.25) * size
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    base = rng.integers(40, 120, 3)
    img = np.clip(base + rng.normal(0, 18, (size, size, 3)), 0, 255)
    img[mask] = rng.integers(150, 250, 3)
    return img.astype(np.uint8), mask


def synthetic_cam(
    rng: np.random.Generator, mask: np.ndarray, on_object: bool, h: int = 7
) -> np.ndarray:
    """A low-resolution Gaussian blob, on the object's centre or in a corner."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    if on_object and ys.size:
        cy, cx = ys.mean() / size * h, xs.mean() / size * h
    else:
        cy, cx = rng.uniform(0, 1.2), rng.uniform(0, h)
    yy, xx = np.mgrid[0:h, 0:h]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0).astype(np.float32)


#: Samples per row group of the fixture's samples.parquet (the runner also writes many groups).
ROW_GROUP_SAMPLES = 65536


def _write_samples(
    path: Path,
    *,
    methods: Sequence[str],
    names: Sequence[str],
    labels: np.ndarray,
    ids: list[str],
    preds: np.ndarray,
    correct: np.ndarray,
    conf: np.ndarray,
    area: np.ndarray,
    status: np.ndarray,
    per_sample: dict[str, dict[str, np.ndarray]],
    interventions: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> None:
    """Write ``samples.parquet``: one row per (sample, method), sample-major, vectorised and
    in row groups of :data:`ROW_GROUP_SAMPLES` samples (1M samples x 3 methods in seconds)."""
    n, n_m = int(labels.size), len(methods)
    label_names = pa.array(list(names), pa.string())
    method_arr = pa.array(list(methods), pa.string())
    writer: pq.ParquetWriter | None = None
    try:
        for lo in range(0, max(n, 1), ROW_GROUP_SAMPLES):
            hi = min(n, lo + ROW_GROUP_SAMPLES)
            rep = np.repeat(np.arange(lo, hi), n_m)  # sample of each row
            mrow = np.tile(np.arange(n_m), hi - lo)  # method of each row

            def per_row(values: np.ndarray, rep: np.ndarray = rep) -> np.ndarray:
                return values[rep]

            cols: dict[str, Any] = {
                "index": pa.array(rep, pa.int64()),
                "id": pa.array([ids[i] for i in rep.tolist()], pa.string()),
                "method": method_arr.take(pa.array(mrow)),
                "label": pa.array(per_row(labels), pa.int64()),
                "label_name": label_names.take(pa.array(per_row(labels))),
                "target": pa.array(per_row(labels), pa.int64()),
                "pred": pa.array(per_row(preds), pa.int64()),
                "correct": pa.array(per_row(correct), pa.bool_()),
                "confidence": pa.array(per_row(conf), pa.float64()),
                "pred_confidence": pa.array(per_row(np.maximum(conf, 0.5)), pa.float64()),
                "has_mask": pa.array(np.ones(rep.size, dtype=bool), pa.bool_()),
                "mask_area": pa.array(per_row(area), pa.float64()),
                "status": pa.array(per_row(status).astype(str), pa.string()),
                "cam_status": pa.array(["ok"] * rep.size, pa.string()),
            }
            for metric in METRICS:
                stacked = np.stack([per_sample[m][metric][lo:hi] for m in methods], axis=1)
                cols[metric] = pa.array(stacked.reshape(-1), pa.float64())
            for name, flags in zip(
                ("only_fg_correct", "only_bg_correct", "mixed_rand_correct"),
                interventions if interventions is not None else (None, None, None),
                strict=True,
            ):
                cols[name] = (
                    pa.nulls(rep.size) if flags is None else pa.array(per_row(flags), pa.bool_())
                )
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def make_run_dir(
    root: Path,
    *,
    class_names: Sequence[str] = DEFAULT_CLASSES,
    shortcut_classes: Sequence[str] = SHORTCUT_CLASSES,
    n_per_class: int = 12,
    methods: Sequence[str] = ("gradcam", "cam"),
    interventions: bool = True,
    faithfulness: bool = True,
    gallery: bool = True,
    gallery_per_class: int = 2,
    gallery_classes: int | None = None,
    clusters: bool = True,
    n_skipped: int = 3,
    image_size: int = 48,
    seed: int = 0,
) -> Path:
    """Write a complete run directory under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "gallery").mkdir(exist_ok=True)
    names = list(class_names)
    k = len(names)
    shortcut = set(shortcut_classes)
    primary = methods[0]
    n = k * n_per_class

    labels = np.repeat(np.arange(k), n_per_class)
    is_short = np.array([names[c] in shortcut for c in labels])
    correct = rng.random(n) < np.where(is_short, 0.8, 0.92)
    preds = np.where(correct, labels, (labels + rng.integers(1, max(k, 2), n)) % k)
    conf = np.clip(np.where(correct, rng.beta(8, 2, n), rng.beta(3, 4, n)), 0, 1)
    area = rng.uniform(0.08, 0.3, n)
    energy = {
        m: np.clip(np.where(is_short, rng.beta(2, 6, n), rng.beta(6, 2, n)) + j * 0.03, 0, 1)
        for j, m in enumerate(methods)
    }
    status = np.array(["ok"] * n, dtype=object)
    status[::37] = "empty_mask"  # a few undefined metrics: NaN, never 0
    for m in methods:
        energy[m][status == "empty_mask"] = np.nan

    per_sample: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        e = energy[m]
        vals = {
            "energy_in_mask": e,
            "background_focus": 1.0 - e,
            "energy_lift": e / area,
            "pointing_game": np.where(np.isfinite(e), (e > 0.5).astype(float), np.nan),
            "relevance_rank_accuracy": np.clip(e + rng.normal(0, 0.05, n), 0, 1),
            "iou": np.clip(e * 0.6 + rng.normal(0, 0.03, n), 0, 1),
            "auc": np.clip(0.5 + e * 0.45, 0, 1),
        }
        vals["relevance_rank_accuracy"][~np.isfinite(e)] = np.nan
        vals["iou"][~np.isfinite(e)] = np.nan
        vals["auc"][~np.isfinite(e)] = np.nan
        per_sample[m] = vals
    fg_ok = rng.random(n) < np.where(is_short, 0.45, 0.9)
    bg_ok = rng.random(n) < np.where(is_short, 0.6, 0.1)
    mixed_ok = rng.random(n) < np.where(is_short, 0.4, 0.88)
    ids = [f"img/{names[c][:20]}-{i:05d}.png" for i, c in enumerate(labels.tolist())]
    _write_samples(
        root / "samples.parquet",
        methods=methods,
        names=names,
        labels=labels,
        ids=ids,
        preds=preds,
        correct=correct,
        conf=conf,
        area=area,
        status=status,
        per_sample=per_sample,
        interventions=(fg_ok, bg_ok, mixed_ok) if interventions else None,
    )

    def metric_block(sel: np.ndarray | slice) -> dict[str, Any]:
        return {
            m: {metric: _stat(per_sample[m][metric][sel]) for metric in METRICS} for m in methods
        }

    classes: dict[str, Any] = {}
    for c, name in enumerate(names):
        sel = slice(c * n_per_class, (c + 1) * n_per_class)  # labels are class-major
        acc = float(correct[sel].mean())
        block = metric_block(sel)
        bf = block[primary]["background_focus"]["mean"]
        flagged = bf is not None and bf > 0.5
        entry: dict[str, Any] = {
            "index": c,
            "n": n_per_class,
            "accuracy": acc,
            "accuracy_ci": _prop_ci(acc, n_per_class),
            "metrics": block,
            "flagged": flagged,
            "flags": ["background_focus"] if flagged else [],
            "risk": None if bf is None else round(bf, 4),
        }
        if interventions:
            fg = float(fg_ok[sel].mean())
            entry["interventions"] = {
                "accuracy": acc,
                "only_fg_accuracy": fg,
                "only_bg_accuracy": float(bg_ok[sel].mean()),
                "mixed_rand_accuracy": float(mixed_ok[sel].mean()),
                "only_fg_drop": acc - fg,
                "only_fg_drop_ci": [acc - fg - 0.1, acc - fg + 0.1],
                "background_gap": acc - float(mixed_ok[sel].mean()),
                "n": n_per_class,
            }
            if flagged:
                entry["flags"].append("background_dependence")
        classes[name] = entry

    findings: list[dict[str, Any]] = []
    gallery_map: dict[str, list[dict[str, Any]]] = {}
    flagged_names = sorted(
        (nm for nm in names if classes[nm]["flagged"]), key=lambda nm: -classes[nm]["risk"]
    )
    for j, name in enumerate(flagged_names):
        st = classes[name]["metrics"][primary]["background_focus"]
        findings.append(
            {
                "id": f"F{len(findings) + 1}",
                "class": name,
                "kind": "background_focus",
                "severity": "high" if st["mean"] > 0.6 else "medium",
                "title": f"Class {name} is explained by the background",
                "message": (
                    f"{st['mean']:.0%} of the CAM energy of class {name} lies outside the object "
                    "(dataset baseline 35%)."
                ),
                "evidence": {
                    "background_focus": st["mean"],
                    "ci": [st["ci_low"], st["ci_high"]],
                    "baseline": 0.35,
                    "n": st["n"],
                },
                "examples": [],
            }
        )
        if gallery and (gallery_classes is None or j < gallery_classes):
            c = names.index(name)
            idx = np.nonzero(labels == c)[0][:gallery_per_class]
            entries = []
            for g, i in enumerate(idx):
                img, mask = synthetic_image(rng, image_size)
                cam = synthetic_cam(rng, mask, on_object=False)
                rel = f"gallery/class{c}-{g}.png"
                sid = ids[int(i)]
                (root / rel).write_bytes(
                    gallery_panel(
                        img, mask, cam, title=sid, subtitle=f"label {name} · pred {names[preds[i]]}"
                    )
                )
                entries.append(
                    {
                        "id": sid,
                        "file": rel,
                        "label": name,
                        "pred": names[int(preds[i])],
                        "confidence": float(conf[i]),
                        "energy_in_mask": float(per_sample[primary]["energy_in_mask"][i]),
                        "background_focus": float(per_sample[primary]["background_focus"][i]),
                        "why": "highest background focus",
                    }
                )
            gallery_map[name] = entries
            findings[-1]["examples"] = [e["id"] for e in entries[:1]]
    if interventions and flagged_names:
        name = flagged_names[0]
        findings.append(
            {
                "id": f"F{len(findings) + 1}",
                "class": name,
                "kind": "background_dependence",
                "severity": "medium",
                "title": f"Accuracy of {name} drops without its background",
                "message": "Accuracy on the object alone is lower than on the original images.",
                "evidence": {
                    "only_fg_drop": classes[name]["interventions"]["only_fg_drop"],
                    "only_bg_accuracy": classes[name]["interventions"]["only_bg_accuracy"],
                },
                "examples": [],
            }
        )
    if len(methods) > 1:
        findings.append(
            {
                "id": f"F{len(findings) + 1}",
                "class": None,
                "kind": "method_disagreement",
                "severity": "low",
                "title": "Methods agree only moderately",
                "message": "Rank correlation between methods is 0.62 on average.",
                "evidence": {"spearman": 0.62},
                "examples": [],
            }
        )

    cluster_block: dict[str, Any] = {}
    if clusters and flagged_names and gallery:
        name = flagged_names[0]
        items = []
        for cid in range(2):
            img, mask = synthetic_image(rng, image_size)
            ex = [(img, synthetic_cam(rng, mask, on_object=bool(cid)))]
            rel = f"gallery/cluster-{names.index(name)}-{cid}.png"
            (root / rel).write_bytes(
                cluster_panel(
                    synthetic_cam(rng, mask, on_object=bool(cid)),
                    ex,
                    title=f"{name}: cluster {cid}",
                )
            )
            items.append(
                {
                    "id": cid,
                    "size": 8 - 5 * cid,
                    "background_focus": 0.7 - 0.4 * cid,
                    "exemplars": ["img/a.png"],
                    "gallery": [rel],
                    "outlier": cid == 1,
                }
            )
        cluster_block[name] = {"k": 2, "eigengap": 0.31, "clusters": items}

    conf_mat = np.zeros((k, k), dtype=int)
    np.add.at(conf_mat, (labels, preds), 1)
    skipped = [
        {"id": f"img/broken-{i}.png", "reason": "cannot decode image: truncated file"}
        for i in range(n_skipped)
    ]
    thr = 0.6
    gate_results = [
        {
            "rule": "max_background_focus",
            "class": nm,
            "value": classes[nm]["metrics"][primary]["background_focus"]["mean"],
            "threshold": thr,
            "passed": (classes[nm]["metrics"][primary]["background_focus"]["mean"] or 0) <= thr,
        }
        for nm in names
    ]
    summary = {
        "schema_version": 1,
        "tool": {"name": "cam-auditor", "version": "0.1.0"},
        "run": {
            "started": "2025-01-15T09:30:00+00:00",
            "finished": "2025-01-15T09:31:12+00:00",
            "duration_s": 72.4,
            "config_sha256": "c" * 64,
            "seed": seed,
            "device": "cpu",
            "command": "auditor run audit.toml --out runs/demo",
            "timings": {"audit_s": 60.2, "analysis_s": 4.1},
            "versions": {
                "python": "3.11.7",
                "torch": "2.14.1",
                "torchvision": "0.29.1",
                "numpy": np.__version__,
                "cam-auditor": "0.1.0",
            },
            "config": {
                "model": {"factory": "demo.nets:build", "weights": "weights.pth"},
                "audit": {"methods": list(methods), "seed": seed},
                "gates": {"max_background_focus": thr},
            },
        },
        "model": {
            "name": "shapes-cnn v2",
            "sha256": "a" * 64,
            "source": "factory:demo.nets:build",
            "target_layer": "features.6",
            "num_classes": k,
            "parameters": 123456,
        },
        "dataset": {
            "name": "shapes-eval",
            "format": "manifest",
            "sha256": "d" * 64,
            "annotation_sha256": "e" * 64,
            "n_samples": n + n_skipped,
            "n_evaluated": n,
            "n_skipped": n_skipped,
            "annotated": True,
            "input_size": [64, 64],
            "classes": names,
            "skipped": skipped,
        },
        "methods": list(methods),
        "primary_method": primary,
        "methods_info": {
            m: {
                "title": {"gradcam": "Grad-CAM", "cam": "CAM"}.get(m, m),
                "formula": "L = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂y/∂A^k_ij",
                "reference": "Selvaraju et al. (2017), Grad-CAM: Visual Explanations "
                "from Deep Networks via Gradient-based Localization",
            }
            for m in methods
        },
        "metrics_info": {
            "energy_in_mask": {
                "title": "Energy in object",
                "higher_is_better": True,
                "category": "localisation",
                "formula": "Σ_{x∈M} S(x) / Σ_x S(x)",
                "description": "Share of the map's energy inside the object.",
                "reference": "Wang et al. (2020), Score-CAM",
                "range": [0, 1],
            },
            "background_focus": {
                "title": "Background focus",
                "higher_is_better": False,
                "category": "localisation",
                "formula": "1 − energy in object",
                "description": "Share of the map's energy on the background.",
                "reference": "—",
                "range": [0, 1],
            },
            "energy_lift": {
                "title": "Lift",
                "higher_is_better": True,
                "category": "localisation",
                "formula": "energy in object / area(M)",
                "description": "Energy in object relative to the object's size.",
                "reference": "—",
                "range": None,
            },
        },
        "overall": {
            "n": n,
            "accuracy": float(correct.mean()),
            "accuracy_ci": _prop_ci(float(correct.mean()), n),
            "metrics": metric_block(np.ones(n, dtype=bool)),
            "status_counts": {
                m: {
                    "ok": int((status == "ok").sum()),
                    "empty_mask": int((status == "empty_mask").sum()),
                }
                for m in methods
            },
        },
        "classes": classes,
        "findings": findings,
        "rules": {
            "background_focus": "Flag a class when its mean background focus exceeds 0.5 and "
            "its interval lies above the dataset baseline.",
            "background_dependence": "Flag a class when accuracy on the object alone drops by "
            "more than 10 points.",
        },
        "gates": {"passed": all(g["passed"] for g in gate_results), "results": gate_results},
        "confusion": {"classes": names, "matrix": conf_mat.tolist()},
        "method_agreement": (
            {
                "methods": list(methods),
                "spearman": [[1.0 if a == b else 0.62 for b in methods] for a in methods],
            }
            if len(methods) > 1
            else None
        ),
        "faithfulness": (
            {
                primary: {
                    "deletion_auc": _stat(rng.uniform(0.1, 0.3, 20)),
                    "insertion_auc": _stat(rng.uniform(0.5, 0.8, 20)),
                }
            }
            if faithfulness
            else None
        ),
        "sanity": {primary: {"similarity": 0.12, "threshold": 0.5, "trustworthy": True, "n": 32}},
        "clusters": cluster_block,
        "gallery": gallery_map,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return root


_CACHE: dict[tuple[tuple[str, Any], ...], Path] = {}


def cached_run_dir(dst: Path, **kwargs: Any) -> Path:
    """A copy at ``dst`` of ``make_run_dir(**kwargs)``, built once per test session.

    Building draws gallery panels with matplotlib (seconds on a small machine); tests that
    need the same fixture share one build and each gets its own copy to modify.
    """
    key = tuple(sorted(kwargs.items()))
    if key not in _CACHE:
        base = Path(tempfile.mkdtemp(prefix="report-fixture-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        _CACHE[key] = make_run_dir(base / "run", **kwargs)
    shutil.copytree(_CACHE[key], dst)
    return Path(dst)
