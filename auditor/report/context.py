"""Build the template context from a run directory.

Input: ``summary.json`` (the analysis' results), ``samples.parquet`` (per-sample rows, used
only to draw two distribution figures) and ``gallery/*.png``. Output: a plain dict of values
the templates format, documented in ``docs/report.md``. Nothing here computes a statistic:
values are copied, ordered (classes by risk), capped (top-N, gallery, skipped list) and drawn.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import RenderError
from auditor.report import figures as figs
from auditor.report.html import slugify

__all__ = ["SEVERITY_ORDER", "TABLE_METRICS", "ReportLimits", "build_context", "load_summary"]

#: Findings are listed in this order; unknown severities come last.
SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")

#: Per-class table metrics of the primary method, in column order.
TABLE_METRICS = ("energy_in_mask", "background_focus", "energy_lift", "pointing_game", "iou", "auc")

_INTERVENTION_KEYS = (
    "accuracy",
    "only_fg_accuracy",
    "only_bg_accuracy",
    "mixed_rand_accuracy",
    "only_fg_drop",
    "only_fg_drop_ci",
    "background_gap",
    "n",
)
_STAT_KEYS = ("mean", "ci_low", "ci_high", "n", "n_nan")
_MODEL_KEYS = (
    "name",
    "source",
    "sha256",
    "target_layer",
    "num_classes",
    "parameters",
    "target_layer_reason",
    "reshape",
)
_DATASET_KEYS = (
    "name",
    "format",
    "sha256",
    "annotation_sha256",
    "n_samples",
    "n_evaluated",
    "n_skipped",
    "annotated",
    "input_size",
    "classes",
    "skipped",
)
_RUN_KEYS = (
    "started",
    "finished",
    "duration_s",
    "config_sha256",
    "seed",
    "device",
    "command",
    "timings",
    "versions",
    "config",
)
_GATE_KEYS = ("rule", "class", "value", "threshold", "passed")


@dataclass(frozen=True)
class ReportLimits:
    """Caps that keep big runs readable (and the files small); all are shown in captions."""

    top_n: int = 30
    """classes drawn in per-class figures (highest risk first)"""
    table_page: int = 100
    """per-class table rows shown in HTML before "show all" (the PDF shows every row)"""
    gallery_classes: int = 20
    """flagged classes with a gallery section"""
    gallery_per_class: int = 6
    """panels per class in the gallery section"""
    finding_images: int = 2
    """gallery panels shown inside each finding block"""
    skipped: int = 50
    """skipped samples listed by id (the total is always given)"""
    findings: int = 30
    """findings shown as full blocks (evidence, pictures); the rest as rows of a table"""
    gate_rows: int = 50
    """gate checks listed (failed first; the totals are always given)"""
    pdf_table_rows: int = 200
    """per-class rows in the PDF (highest risk first; the HTML always has every row)"""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")


def load_summary(run_dir: Path) -> dict[str, Any]:
    """Read and minimally check ``run_dir/summary.json`` (schema_version 1)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise RenderError(f"summary.json not found in run directory: {str(path)!r}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RenderError(f"{str(path)!r}: cannot read summary: {exc}") from exc
    if not isinstance(summary, dict):
        raise RenderError(f"{str(path)!r}: must hold a JSON object, got {type(summary).__name__}")
    version = summary.get("schema_version")
    if version != 1:
        raise RenderError(f"{str(path)!r}: schema_version must be 1, got {version!r}")
    for key in ("tool", "model", "dataset", "classes", "methods", "primary_method"):
        if key not in summary:
            raise RenderError(f"{str(path)!r}: missing required key {key!r}")
    if not isinstance(summary["classes"], dict):
        raise RenderError(f"{str(path)!r}: 'classes' must be an object keyed by class name")
    return summary


def _d(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _with_keys(value: object, keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of a summary object with every key the templates read present (None if absent)."""
    return {**{k: None for k in keys}, **_d(value)}


def _reshape_text(value: object) -> str | None:
    """One line for the report: how the target layer's output became a grid."""
    r = _d(value)
    kind = r.get("kind")
    if not kind:
        return None
    if kind == "none":
        return "none: the layer outputs [B, K, h, w]"
    if kind == "channels_last":
        return "channels-last [B, h, w, D] permuted to [B, D, h, w]"
    if kind == "tokens":
        grid = r.get("grid")
        g = f"{grid[0]}x{grid[1]}" if isinstance(grid, list) and len(grid) == 2 else "square"
        src = f" ({r['source']})" if r.get("source") else ""
        return f"tokens: {r.get('prefix_tokens')} prefix token(s) dropped, {g} grid{src}"
    return str(kind)


def _stat(value: object) -> dict[str, Any]:
    src = _d(value)
    return {k: src.get(k) for k in _STAT_KEYS}


def _finite_or_none(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class _Images:
    """Reads gallery PNGs inside the run directory once, as ``data:`` URIs."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir).resolve()
        self._cache: dict[str, str] = {}

    def uri(self, rel: str) -> str:
        if rel in self._cache:
            return self._cache[rel]
        if not isinstance(rel, str) or not rel:
            raise RenderError(f"gallery file must be a relative path, got {rel!r}")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise RenderError(f"gallery file outside the run directory: {rel!r}")
        if not path.is_file():
            raise RenderError(f"gallery file missing: {rel!r} (listed in summary.json)")
        data = path.read_bytes()
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else None
        if mime is None:
            raise RenderError(f"gallery file is not a PNG image: {rel!r}")
        self._cache[rel] = png_uri(data)
        return self._cache[rel]


def png_uri(data: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _read_samples(run_dir: Path, primary: str) -> dict[str, np.ndarray] | None:
    """Columns needed by the distribution figures, for the primary method; None if absent."""
    path = Path(run_dir) / "samples.parquet"
    if not path.is_file():
        return None
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        wanted = [
            c for c in ("method", "correct", "energy_in_mask", "confidence") if c in schema.names
        ]
        if "method" not in wanted or "energy_in_mask" not in wanted or "correct" not in wanted:
            return None
        table = pq.read_table(path, columns=wanted)
    except (OSError, ValueError) as exc:
        raise RenderError(f"{str(path)!r}: cannot read samples: {exc}") from exc
    table = table.filter(pc.equal(table["method"], primary))
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        if name == "method":
            continue
        col = table[name]
        if name == "correct":
            out[name] = np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        else:
            out[name] = np.asarray(
                col.cast("float64").fill_null(float("nan")).to_numpy(zero_copy_only=False),
                dtype=float,
            )
    return out


def _class_rows(summary: Mapping[str, Any], primary: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, raw in summary["classes"].items():
        c = _d(raw)
        metrics = _d(_d(c.get("metrics")).get(primary))
        inter = c.get("interventions")
        acc_ci = c.get("accuracy_ci")
        rows.append(
            {
                "name": str(name),
                "slug": slugify(name),
                "index": c.get("index"),
                "n": c.get("n"),
                "accuracy": c.get("accuracy"),
                "accuracy_ci": acc_ci if isinstance(acc_ci, list) else None,
                "m": {k: _stat(metrics.get(k)) for k in TABLE_METRICS},
                "interventions": (
                    {k: _d(inter).get(k) for k in _INTERVENTION_KEYS}
                    if isinstance(inter, dict)
                    else None
                ),
                "flagged": bool(c.get("flagged", False)),
                "flags": [str(f) for f in (c.get("flags") or [])],
                "risk": _finite_or_none(c.get("risk")),
                "finding_ids": [],
            }
        )
    # Highest risk first; classes without a risk score last; ties by name (stable, readable).
    rows.sort(key=lambda r: (r["risk"] is None, -(r["risk"] or 0.0), r["name"]))
    return rows


def _severity_rank(sev: object) -> int:
    s = str(sev).lower()
    return SEVERITY_ORDER.index(s) if s in SEVERITY_ORDER else len(SEVERITY_ORDER)


def _gate_threshold(summary: Mapping[str, Any]) -> float | None:
    cfg = _d(_d(_d(summary.get("run")).get("config")).get("gates"))
    return _finite_or_none(cfg.get("max_background_focus"))


def _figures(
    summary: Mapping[str, Any],
    rows: list[dict[str, Any]],
    samples: dict[str, np.ndarray] | None,
    limits: ReportLimits,
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    primary = str(summary["primary_method"])
    n_classes = len(rows)
    top = rows[: limits.top_n] if limits.top_n else rows
    cut = (
        f" Showing the {len(top)} highest-risk of {n_classes} classes."
        if len(top) < n_classes
        else ""
    )

    def add(fid: str, title: str, caption: str, alt: str, png: bytes) -> None:
        out.append({"id": fid, "title": title, "caption": caption, "alt": alt, "uri": png_uri(png)})

    with_bf = [r for r in top if r["m"]["background_focus"]["mean"] is not None]
    if with_bf:
        baseline = _d(
            _d(_d(_d(summary.get("overall")).get("metrics")).get(primary)).get("background_focus")
        ).get("mean")
        threshold = _gate_threshold(summary)
        add(
            "fig-background-focus",
            "Background focus per class",
            f"Mean background focus ({primary}) per class with its confidence interval; the "
            "dashed line is the dataset-wide value"
            + (", the dotted line the gate threshold" if threshold is not None else "")
            + "."
            + cut,
            "Interval plot of background focus per class, highest-risk classes at the top.",
            figs.background_focus_by_class(
                [r["name"] for r in with_bf],
                [r["m"]["background_focus"]["mean"] for r in with_bf],
                [r["m"]["background_focus"]["ci_low"] for r in with_bf],
                [r["m"]["background_focus"]["ci_high"] for r in with_bf],
                baseline=_finite_or_none(baseline),
                threshold=threshold,
            ),
        )
    if samples is not None and samples.get("energy_in_mask") is not None:
        e, ok = samples["energy_in_mask"], samples["correct"]
        if np.isfinite(e).any():
            add(
                "fig-energy-distribution",
                "Energy in object: correct vs wrong predictions",
                f"Distribution of the per-sample share of CAM energy inside the object "
                f"({primary}) for correct and wrong predictions (counts in the legend; samples "
                "without a value excluded). Densities, so groups of unequal size compare.",
                "Histograms of energy in object for correct and wrong predictions.",
                figs.energy_distribution(e[ok], e[~ok]),
            )
            if "confidence" in samples:
                add(
                    "fig-energy-confidence",
                    "Energy in object vs confidence",
                    f"Each point is one sample ({primary}): energy in object against the "
                    "model's probability for the explained class.",
                    "Scatter plot of energy in object against confidence, coloured by correctness.",
                    figs.energy_vs_confidence(e, samples["confidence"], ok),
                )
    conf = summary.get("confusion")
    if isinstance(conf, dict) and conf.get("classes") and conf.get("matrix") is not None:
        names = [str(c) for c in conf["classes"]]
        mat = np.asarray(
            [[np.nan if v is None else v for v in row] for row in conf["matrix"]], dtype=float
        )
        caption = "Rows: true class; columns: predicted class; colour on a log scale."
        if limits.top_n and len(names) > limits.top_n:
            pos = {n: i for i, n in enumerate(names)}
            keep = [pos[r["name"]] for r in top if r["name"] in pos]
            names = [names[i] for i in keep]
            mat = mat[np.ix_(keep, keep)]
            caption += (
                f" Restricted to the {len(keep)} highest-risk of {len(conf['classes'])} classes;"
                " confusions with other classes are not shown."
            )
        if names:
            add(
                "fig-confusion",
                "Confusion matrix",
                caption,
                "Confusion matrix heat map of true against predicted classes.",
                figs.confusion_matrix(names, mat),
            )
    with_int = [r for r in top if r["interventions"] is not None]
    if with_int:
        add(
            "fig-interventions",
            "Accuracy under background interventions",
            "Accuracy on original images, on the object alone (background removed), on the "
            "background alone (object removed) and on the object pasted on another image's "
            "background." + cut,
            "Grouped bar chart of accuracy per class for original and intervened images.",
            figs.interventions_by_class(
                [r["name"] for r in with_int],
                [r["interventions"]["accuracy"] for r in with_int],
                [r["interventions"]["only_fg_accuracy"] for r in with_int],
                [r["interventions"]["only_bg_accuracy"] for r in with_int],
                [r["interventions"]["mixed_rand_accuracy"] for r in with_int],
            ),
        )
    agree = summary.get("method_agreement")
    if isinstance(agree, dict) and len(agree.get("methods") or []) >= 2:
        add(
            "fig-method-agreement",
            "Agreement between methods",
            "Mean Spearman rank correlation between the maps of each pair of methods; low "
            "agreement means the explanation depends on the method, so read single-method "
            "evidence with care.",
            "Heat map of rank correlation between CAM methods.",
            figs.method_agreement([str(m) for m in agree["methods"]], agree["spearman"]),
        )
    return out


def _evidence_items(evidence: object) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in _d(evidence).items()]


def build_context(run_dir: Path, *, limits: ReportLimits | None = None) -> dict[str, Any]:
    """Everything the report templates use; see ``docs/report.md`` for each key."""
    run_dir = Path(run_dir)
    limits = limits or ReportLimits()
    summary = load_summary(run_dir)
    images = _Images(run_dir)
    primary = str(summary["primary_method"])
    model = _with_keys(summary.get("model"), _MODEL_KEYS)
    dataset = _with_keys(summary.get("dataset"), _DATASET_KEYS)
    run = _with_keys(summary.get("run"), _RUN_KEYS)
    tool = _with_keys(summary.get("tool"), ("name", "version"))

    rows = _class_rows(summary, primary)
    by_name = {r["name"]: r for r in rows}

    gallery = _d(summary.get("gallery"))
    findings: list[dict[str, Any]] = []
    raw_findings = [_d(f) for f in summary.get("findings") or []]
    # Severity order is decided before pictures are attached, so that only the findings shown
    # as full blocks (the first `limits.findings`) carry images.
    order = sorted(
        range(len(raw_findings)),
        key=lambda i: _severity_rank(str(raw_findings[i].get("severity") or "info").lower()),
    )
    for rank, i in enumerate(order):
        f = raw_findings[i]
        cls = f.get("class")
        fid = str(f.get("id") or f"F{i + 1}")
        panels = []
        if cls is not None and limits.finding_images and rank < limits.findings:
            entries = [_d(g) for g in gallery.get(str(cls)) or []]
            examples = [str(x) for x in f.get("examples") or []]
            chosen = [g for g in entries if g.get("id") in examples] or entries
            for g in chosen[: limits.finding_images]:
                panels.append({**g, "uri": images.uri(str(g.get("file")))})
        if cls is not None and str(cls) in by_name:
            by_name[str(cls)]["finding_ids"].append(fid)
        findings.append(
            {
                "id": fid,
                "class": None if cls is None else str(cls),
                "slug": None if cls is None else slugify(cls),
                "kind": str(f.get("kind") or "other"),
                "severity": str(f.get("severity") or "info").lower(),
                "title": str(f.get("title") or f.get("message") or f.get("kind") or fid),
                "message": str(f.get("message") or ""),
                "evidence": _evidence_items(f.get("evidence")),
                "examples": [str(x) for x in f.get("examples") or []],
                "panels": panels,
            }
        )
    findings.sort(key=lambda f: _severity_rank(f["severity"]))
    severity_counts = {s: 0 for s in SEVERITY_ORDER}
    for f in findings:
        severity_counts[f["severity"]] = severity_counts.get(f["severity"], 0) + 1

    gates_raw = summary.get("gates")
    gates = None
    if isinstance(gates_raw, dict):
        results = [_with_keys(r, _GATE_KEYS) for r in gates_raw.get("results") or []]
        results.sort(key=lambda r: (bool(r.get("passed")), str(r.get("rule")), str(r.get("class"))))
        gates = {
            "passed": gates_raw.get("passed"),
            "results": results,
            "n_failed": sum(1 for r in results if r.get("passed") is False),
        }

    galleries: list[dict[str, Any]] = []
    gallery_names = [r["name"] for r in rows if r["name"] in gallery]
    gallery_names += [n for n in gallery if n not in by_name]
    for name in gallery_names[: limits.gallery_classes]:
        entries = [_d(g) for g in gallery[name] or []]
        galleries.append(
            {
                "class": name,
                "slug": slugify(name),
                "n_total": len(entries),
                "panels": [
                    {**g, "uri": images.uri(str(g.get("file")))}
                    for g in entries[: limits.gallery_per_class]
                ],
            }
        )

    clusters: list[dict[str, Any]] = []
    for name, raw in _d(summary.get("clusters")).items():
        c = _d(raw)
        items: list[dict[str, Any]] = []
        for cl in c.get("clusters") or []:
            cl = _d(cl)
            items.append(
                {
                    **{k: cl.get(k) for k in ("id", "size", "background_focus", "outlier")},
                    "exemplars": [str(x) for x in cl.get("exemplars") or []],
                    "images": [
                        {"file": str(p), "uri": images.uri(str(p))} for p in cl.get("gallery") or []
                    ],
                }
            )
        clusters.append(
            {
                "class": str(name),
                "slug": slugify(name),
                "k": c.get("k"),
                "eigengap": c.get("eigengap"),
                "clusters": items,
            }
        )
    risk_pos = {r["name"]: i for i, r in enumerate(rows)}
    clusters.sort(key=lambda c: risk_pos.get(c["class"], len(rows)))
    clusters = clusters[: limits.gallery_classes]

    overall = _with_keys(summary.get("overall"), ("n", "accuracy", "accuracy_ci", "metrics"))
    methods_info = _d(summary.get("methods_info"))
    methods: list[dict[str, Any]] = [
        {
            "name": str(m),
            "title": str(_d(methods_info.get(m)).get("title") or m),
            "formula": _d(methods_info.get(m)).get("formula"),
            "reference": _d(methods_info.get(m)).get("reference"),
            "primary": str(m) == primary,
            "metrics": {k: _stat(v) for k, v in _d(_d(overall.get("metrics")).get(m)).items()},
            "status_counts": _d(_d(overall.get("status_counts")).get(m)),
        }
        for m in summary.get("methods") or []
    ]
    metrics_info: list[dict[str, Any]] = [
        {
            "name": str(k),
            **{
                f: _d(v).get(f)
                for f in (
                    "title",
                    "formula",
                    "description",
                    "reference",
                    "higher_is_better",
                    "category",
                    "range",
                )
            },
        }
        for k, v in _d(summary.get("metrics_info")).items()
    ]
    metric_titles = {m["name"]: m["title"] or m["name"] for m in metrics_info}
    overall_metric_names = list(dict.fromkeys(k for m in methods for k in m["metrics"]))

    faith = [
        {"method": str(m), "metrics": {k: _stat(v) for k, v in _d(stats).items()}}
        for m, stats in _d(summary.get("faithfulness")).items()
    ]
    sanity = [{"method": str(m), **_d(v)} for m, v in _d(summary.get("sanity")).items()]

    skipped_all = [_d(s) for s in dataset.get("skipped") or []]
    n_skipped = dataset.get("n_skipped")
    if not isinstance(n_skipped, int):
        n_skipped = len(skipped_all)

    samples = _read_samples(run_dir, primary)
    figures = _figures(summary, rows, samples, limits)

    any_interventions = any(r["interventions"] is not None for r in rows)
    notes = []
    if not any_interventions:
        notes.append(
            "Background interventions did not run: the report shows where the model "
            "looks, not whether it depends on the background."
        )
    if not faith:
        notes.append("Faithfulness metrics (deletion/insertion) did not run.")
    if dataset.get("annotated") is False:
        notes.append("The dataset has no object annotations: localisation metrics are absent.")

    finished = str(run.get("finished") or run.get("started") or "")
    versions = sorted((str(k), str(v)) for k, v in _d(run.get("versions")).items())
    config = run.get("config")
    return {
        "output": "html",
        "summary": summary,
        "title": f"Model audit: {model.get('name') or model.get('source') or 'unnamed model'}",
        "date": finished[:10] if finished else None,
        "tool": tool,
        "model": model,
        "dataset": dataset,
        "run": run,
        "primary_method": primary,
        "methods": methods,
        "metrics_info": metrics_info,
        "metric_titles": metric_titles,
        "overall": overall,
        "overall_metric_names": overall_metric_names,
        "table_metrics": list(TABLE_METRICS),
        "classes": rows,
        "n_classes": len(rows),
        "n_flagged": sum(1 for r in rows if r["flagged"]),
        "any_interventions": any_interventions,
        "findings": findings,
        "severity_counts": severity_counts,
        "gates": gates,
        "figures": figures,
        "galleries": galleries,
        "n_gallery_classes": len(gallery_names),
        "clusters": clusters,
        "rules": [(str(k), str(v)) for k, v in _d(summary.get("rules")).items()],
        "faithfulness": faith,
        "sanity": sanity,
        "sanity_status": _d(summary.get("sanity_status")) or None,
        "reshape_text": _reshape_text(model.get("reshape")),
        "versions": versions,
        "timings": [(str(k), v) for k, v in _d(run.get("timings")).items()],
        "config_text": (
            json.dumps(config, indent=2, sort_keys=True, default=str) if config else None
        ),
        "skipped": skipped_all[: limits.skipped],
        "n_skipped": n_skipped,
        "notes": notes,
        "limits": asdict(limits),
    }
