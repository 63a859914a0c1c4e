"""Build the template context from a run directory.

Input: ``summary.json`` read as the typed result (:class:`auditor.results.AuditResult`, the
only source of every number), ``samples.parquet`` (per-sample rows, used only to draw two
distribution figures) and ``gallery/*.png``. Output: a plain dict of values
the templates format, documented in ``docs/report.md``. Nothing here computes a statistic:
values are copied, ordered (classes by risk), capped (top-N, gallery, skipped list) and drawn.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import RenderError
from auditor.format import finite_or_none, finite_pair, slugify
from auditor.report import figures as figs
from auditor.report.compliance import compliance_context
from auditor.report.panels import show_each_panel_once
from auditor.results import (
    DATASET_KEYS,
    AuditResult,
    Gates,
    MethodInfo,
    Stat,
    evidence_label,
    method_info,
    thaw,
)
from auditor.results.vocab import SEVERITIES, severity_rank

__all__ = [
    "SEVERITY_ORDER",
    "TABLE_METRICS",
    "ReportLimits",
    "build_context",
    "load_result",
    "load_summary",
]

#: Findings are listed in this order; unknown severities come last.
SEVERITY_ORDER = SEVERITIES  # auditor.results.vocab

#: Per-class table metrics for summaries that do not record ``table`` in ``metrics_info``.
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
    scatter_points: int = 20000
    """points drawn in a per-sample scatter figure (a deterministic uniform sample above it,
    the caption says "n of N shown"; 0 = all). Histograms always use every sample."""

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


def load_result(run_dir: Path) -> AuditResult:
    """``run_dir/summary.json`` as the typed result (:class:`auditor.results.AuditResult`)."""
    summary = load_summary(run_dir)
    try:
        return AuditResult.from_json(summary)
    except (TypeError, ValueError) as exc:
        raise RenderError(f"{str(Path(run_dir) / 'summary.json')!r}: {exc}") from exc


def _reshape_text(value: object) -> str | None:
    """One line for the report: how the target layer's output became a grid."""
    r = value if isinstance(value, Mapping) else {}
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


def _groups_context(result: AuditResult) -> dict[str, Any] | None:
    from auditor.report.groups import groups_context

    return groups_context(result)


def _labels_context(result: AuditResult) -> dict[str, Any] | None:
    from auditor.report.labels import labels_context

    return labels_context(result)


def _transplant_context(result: AuditResult, images: Any) -> dict[str, Any] | None:
    from auditor.report.transplant import transplant_context

    return transplant_context(result, images)


def png_uri(data: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _read_samples(run_dir: Path, primary: str) -> dict[str, np.ndarray] | None:
    """Columns needed by the distribution figures, for the primary method; None if absent.

    Flat in the table's width and in its other methods: only the four columns are read, one
    row group at a time, and only the primary method's rows are kept (1M samples x 3 methods:
    three float arrays of 1M values).
    """
    path = Path(run_dir) / "samples.parquet"
    if not path.is_file():
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    chunks: dict[str, list[np.ndarray]] = {}
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = [c for c in ("method", "correct", "energy_in_mask", "confidence") if c in names]
        if "method" not in wanted or "energy_in_mask" not in wanted or "correct" not in wanted:
            return None
        chunks = {c: [] for c in wanted if c != "method"}
        for rg in range(pf.num_row_groups):
            table = pf.read_row_group(rg, columns=wanted)
            method = table["method"]
            if pa.types.is_dictionary(method.type):
                method = method.cast(pa.string())
            table = table.filter(pc.equal(method, primary))
            for name in chunks:
                col = table[name]
                if name == "correct":
                    arr = np.asarray(
                        col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool
                    )
                else:
                    arr = np.asarray(
                        col.cast("float64").fill_null(float("nan")).to_numpy(zero_copy_only=False),
                        dtype=float,
                    )
                chunks[name].append(arr)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise RenderError(f"{str(path)!r}: cannot read samples: {exc}") from exc
    return {
        name: (
            np.concatenate(parts)
            if parts
            else np.zeros(0, dtype=bool if name == "correct" else float)
        )
        for name, parts in chunks.items()
    }


def downsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Positions of a deterministic uniform sample of ``min(n, limit)`` of ``n`` points, in
    increasing order (all of them when ``n <= limit`` or ``limit == 0``).

    Drawn without replacement from ``numpy.random.default_rng(seed)``: the same run gives the
    same figure, and every point is equally likely to be shown (no bias towards the start of
    the table, unlike a prefix or a stride over batch-ordered rows).
    """
    if limit == 0 or n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _class_rows(result: AuditResult, table_metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    primary = result.primary_method
    rows: list[dict[str, Any]] = []
    empty = Stat().to_json() | {"n": None, "n_nan": None}
    for name, c in result.classes.items():
        inter = c.interventions
        rows.append(
            {
                "name": name,
                "slug": slugify(name),
                "index": c.index,
                "n": c.n,
                "accuracy": c.accuracy,
                "accuracy_ci": list(c.accuracy_ci),
                "m": {
                    k: (st.to_json() if (st := c.stat(primary, k)) is not None else dict(empty))
                    for k in table_metrics
                },
                "interventions": (
                    None if inter is None else {k: inter.get(k) for k in _INTERVENTION_KEYS}
                ),
                "flagged": c.flagged,
                "flags": list(c.flags),
                "risk": finite_or_none(c.risk),
                "finding_ids": [],
                "chance": _chance(c),
            }
        )
    # Highest risk first; classes without a risk score last; ties by name (stable, readable).
    rows.sort(key=lambda r: (r["risk"] is None, -(r["risk"] or 0.0), r["name"]))
    return rows


def _chance(c: Any) -> dict[str, Any] | None:
    """The class's chance level of energy in the object for the table: the ``randomcam``
    baseline with its interval where that method ran, else the mean mask area fraction."""
    null = c.extra.get("null_baseline") if isinstance(c.extra, Mapping) else None
    if not isinstance(null, Mapping):
        return None
    rnd = null.get("randomcam")
    if isinstance(rnd, Mapping) and finite_or_none(rnd.get("mean")) is not None:
        return {
            "source": "randomcam",
            "mean": finite_or_none(rnd.get("mean")),
            "ci_low": finite_or_none(rnd.get("ci_low")),
            "ci_high": finite_or_none(rnd.get("ci_high")),
        }
    area = finite_or_none(null.get("area"))
    if area is None:
        return None
    return {"source": "area", "mean": area, "ci_low": None, "ci_high": None}


def _severity_rank(sev: object) -> int:
    return severity_rank(sev)


def _gate_threshold(result: AuditResult) -> float | None:
    cfg = result.run.config or {}
    gates = cfg.get("gates") if isinstance(cfg, Mapping) else None
    return finite_or_none(gates.get("max_background_focus")) if isinstance(gates, Mapping) else None


def _figures(
    result: AuditResult,
    rows: list[dict[str, Any]],
    samples: dict[str, np.ndarray] | None,
    limits: ReportLimits,
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    primary = result.primary_method
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
        overall_bf = result.overall.stat(primary, "background_focus")
        baseline = None if overall_bf is None else overall_bf.mean
        threshold = _gate_threshold(result)
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
                baseline=finite_or_none(baseline),
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
                shown = downsample(e.size, limits.scatter_points)
                note = (
                    f" {shown.size:,} of {e.size:,} samples shown (a uniform random sample, "
                    "the same on every rendering)."
                    if shown.size < e.size
                    else ""
                )
                add(
                    "fig-energy-confidence",
                    "Energy in object vs confidence",
                    f"Each point is one sample ({primary}): energy in object against the "
                    "model's probability for the explained class." + note,
                    "Scatter plot of energy in object against confidence, coloured by correctness.",
                    figs.energy_vs_confidence(e[shown], samples["confidence"][shown], ok[shown]),
                )
    conf = result.confusion
    if conf is not None and conf.classes:
        names = list(conf.classes)
        mat = np.asarray(
            [[np.nan if v is None else v for v in row] for row in conf.matrix], dtype=float
        )
        caption = "Rows: true class; columns: predicted class; colour on a log scale."
        if limits.top_n and len(names) > limits.top_n:
            pos = {n: i for i, n in enumerate(names)}
            keep = [pos[r["name"]] for r in top if r["name"] in pos]
            names = [names[i] for i in keep]
            mat = mat[np.ix_(keep, keep)]
            caption += (
                f" Restricted to the {len(keep)} highest-risk of {len(conf.classes)} classes;"
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
    agree = result.method_agreement
    if agree is not None and len(agree.methods) >= 2:
        add(
            "fig-method-agreement",
            "Agreement between methods",
            "Mean Spearman rank correlation between the maps of each pair of methods; low "
            "agreement means the explanation depends on the method, so read single-method "
            "evidence with care.",
            "Heat map of rank correlation between CAM methods.",
            figs.method_agreement(list(agree.methods), [list(r) for r in agree.spearman]),
        )
    return out


def _keyed(value: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``value`` with every key the templates read present (``None`` where absent)."""
    return {**{k: None for k in keys}, **value}


def _method_infos(result: AuditResult) -> dict[str, MethodInfo]:
    """Each method's metadata from the summary; where a run written before the metadata fix
    has none (empty formula), from the live registry, so that a re-render shows it."""
    out = dict(result.methods_info)
    stale = [m for m in result.methods if not (out.get(m) and out[m].formula)]
    if stale:
        from auditor.cam import METHODS  # imports torch: only for such old runs

        for m in stale:
            if m in METHODS:
                out[m] = method_info(METHODS[m])
    return out


def _verdict(gates: Gates | None) -> str:
    """The cover's one-line verdict."""
    if gates is None or not gates.results:
        return "No release gates configured"
    if gates.passed:
        return f"All {len(gates.results)} gate checks passed"
    return f"{gates.n_failed} of {len(gates.results)} gate checks failed"


def _evidence_items(
    evidence: Mapping[str, Any], titles: Mapping[str, str]
) -> list[tuple[str, Any]]:
    """(readable label, value) pairs: metric titles, then the finding rules' labels."""
    return [(evidence_label(str(k), titles), v) for k, v in evidence.items()]


_STAT_LABELS = {
    "background_focus": "Background focus",
    "border_focus": "Border focus",
    "entropy": "Map entropy",
    "peak_distance": "Peak distance from the centre",
    "only_fg_drop": "Accuracy lost without the background",
    "only_bg_hit": "Background alone predicted as the class",
    "correct": "Accuracy",
}


def _support(raw: object) -> dict[str, Any] | None:
    """The statistic a finding rests on: its estimate, interval and the baseline it excludes."""
    d = thaw(raw) if raw is not None else None
    if not isinstance(d, dict) or not d:
        return None
    return {
        "statistic": str(d.get("statistic") or ""),
        "label": str(d.get("label") or d.get("statistic") or ""),
        "estimate": finite_or_none(d.get("estimate")),
        "ci": finite_pair(d.get("ci")),
        "baseline": finite_or_none(d.get("baseline")),
        "against": str(d.get("against") or ""),
        "subgroup": finite_or_none(d.get("subgroup")),
        "rest": finite_or_none(d.get("rest")),
        "confidence": finite_or_none(d.get("confidence")),
    }


def _subgroups(result: AuditResult, images: Any) -> list[dict[str, Any]]:
    """One entry per reported subgroup (``clusters[class].subgroups``): its finding, every
    statistic's difference and interval, the intervention outcome, members, and the panels of
    its exemplars beside the rest of its class."""
    by_key: dict[tuple[str, Any], dict[str, Any]] = {}
    for f in result.findings:
        if f.kind in ("subgroup_shortcut", "strategy_cluster") and f.cls is not None:
            by_key[(f.cls, f.evidence.get("cluster"))] = {"id": f.id, "title": f.title}
    out: list[dict[str, Any]] = []
    for name, cc in (result.clusters or {}).items():
        for sg in cc.subgroups or ():
            tests = [
                {
                    "name": key,
                    "label": _STAT_LABELS.get(key, key),
                    "subgroup": finite_or_none(t.subgroup),
                    "rest": finite_or_none(t.rest),
                    "diff": finite_or_none(t.diff),
                    "ci": finite_pair(t.ci),
                    "margin": finite_or_none(t.margin),
                    "method": t.method,
                    "separates": t.separates,
                }
                for key, t in sg.tests.items()
            ]
            members = list(sg.members)
            rate = sg.only_bg_rate
            out.append(
                {
                    "class": name,
                    "slug": slugify(name),
                    "finding": by_key.get((name, sg.cluster)),
                    "severity": sg.severity,
                    "size": sg.size,
                    "class_size": sg.class_size,
                    "where": sg.where,
                    "region_share": finite_or_none(sg.region_share),
                    "rest_region_share": finite_or_none(sg.rest_region_share),
                    "needed_statistic": sg.needed_statistic,
                    "interventions": sg.interventions,
                    "only_bg_rate": finite_or_none(rate[0]),
                    "only_bg_rate_ci": [finite_or_none(rate[1]), finite_or_none(rate[2])],
                    "tests": tests,
                    "members": members[:60],
                    "n_members_hidden": max(0, len(members) - 60),
                    "images": [{"file": p, "uri": images.uri(p)} for p in sg.gallery],
                }
            )
    order = {"high": 0, "medium": 1, "low": 2}
    out.sort(key=lambda g: (order.get(g["severity"], 3), g["class"]))
    return out


def build_context(run_dir: Path, *, limits: ReportLimits | None = None) -> dict[str, Any]:
    """Everything the report templates use; see ``docs/report.md`` for each key."""
    run_dir = Path(run_dir)
    limits = limits or ReportLimits()
    result = load_result(run_dir)
    images = _Images(run_dir)
    primary = result.primary_method
    model = _keyed(result.model.to_json(), _MODEL_KEYS)
    dataset = _keyed(result.dataset.to_json(), DATASET_KEYS)
    run = _keyed(result.run.to_json(), _RUN_KEYS)
    tool = {"name": None, "version": None, **thaw(result.tool)}

    metrics_info_all = dict(result.metrics_info)
    # the per-class table's columns come from the metrics' registration (``table=True``);
    # summaries written before that was recorded get the built-in set
    table_metrics = tuple(n for n, mi in metrics_info_all.items() if mi.table) or TABLE_METRICS
    rows = _class_rows(result, table_metrics)
    by_name = {r["name"]: r for r in rows}
    metric_titles = {k: v.title or k for k, v in metrics_info_all.items()}

    gallery = result.gallery
    findings: list[dict[str, Any]] = []
    # Severity order is decided before pictures are attached, so that only the findings shown
    # as full blocks (the first `limits.findings`) carry images.
    order = sorted(
        range(len(result.findings)), key=lambda i: _severity_rank(result.findings[i].severity)
    )
    for rank, i in enumerate(order):
        f = result.findings[i]
        fid = f.id or f"F{i + 1}"
        panels = []
        if f.cls is not None and limits.finding_images and rank < limits.findings:
            entries = list(gallery.get(f.cls, ()))
            chosen = [g for g in entries if g.id in f.examples] or entries
            for g in chosen[: limits.finding_images]:
                panels.append({**g.to_json(), "uri": images.uri(g.file)})
        if f.cls is not None and f.cls in by_name:
            by_name[f.cls]["finding_ids"].append(fid)
        findings.append(
            {
                "id": fid,
                "class": f.cls,
                "slug": None if f.cls is None else slugify(f.cls),
                "kind": f.kind,
                "severity": f.severity,
                "title": f.title or f.message or f.kind or fid,
                "message": f.message,
                # member lists are long: the Subgroups section shows them
                "evidence": _evidence_items(
                    {k: v for k, v in f.evidence.items() if k != "members"}, metric_titles
                ),
                "examples": list(f.examples),
                "panels": panels,
                "support": _support(f.extra.get("support")),
            }
        )
    findings.sort(key=lambda f: _severity_rank(f["severity"]))
    severity_counts = {s: 0 for s in SEVERITY_ORDER}
    for fd in findings:
        severity_counts[fd["severity"]] = severity_counts.get(fd["severity"], 0) + 1

    gates = None
    if result.gates is not None:
        results = [r.to_json() for r in result.gates.results]
        results.sort(key=lambda r: (bool(r["passed"]), str(r["rule"]), str(r["class"])))
        gates = {
            "passed": result.gates.passed,
            "results": results,
            "n_failed": result.gates.n_failed,
        }

    galleries: list[dict[str, Any]] = []
    gallery_names = [r["name"] for r in rows if r["name"] in gallery]
    gallery_names += [n for n in gallery if n not in by_name]
    for name in gallery_names[: limits.gallery_classes]:
        entries = list(gallery[name])
        galleries.append(
            {
                "class": name,
                "slug": slugify(name),
                "n_total": len(entries),
                "panels": [
                    {**g.to_json(), "uri": images.uri(g.file)}
                    for g in entries[: limits.gallery_per_class]
                ],
            }
        )

    show_each_panel_once(findings[: limits.findings], galleries)

    def _clusters_sample(v: Any) -> dict[str, int] | None:
        """``{"n", "of"}`` of a sampled class's ``clusters_sample`` block (issue 14), else None."""
        if not isinstance(v, Mapping):
            return None
        try:
            return {"n": int(v["n"]), "of": int(v["of"])}
        except (KeyError, TypeError, ValueError):
            return None

    clusters: list[dict[str, Any]] = []
    for name, cc in (result.clusters or {}).items():
        items = [
            {
                "id": cl.id,
                "size": cl.size,
                "background_focus": cl.background_focus,
                "outlier": cl.outlier,
                "exemplars": list(cl.exemplars),
                "images": [{"file": p, "uri": images.uri(p)} for p in cl.gallery],
            }
            for cl in cc.clusters
        ]
        clusters.append(
            {
                "class": name,
                "slug": slugify(name),
                "k": cc.k,
                "eigengap": cc.eigengap,
                "clusters": items,
                "sample": _clusters_sample(cc.extra.get("clusters_sample")),
            }
        )
    risk_pos = {r["name"]: i for i, r in enumerate(rows)}
    clusters.sort(key=lambda c: risk_pos.get(c["class"], len(rows)))
    clusters = clusters[: limits.gallery_classes]
    subgroups = _subgroups(result, images)

    overall = result.overall.to_json()
    infos = _method_infos(result)
    methods: list[dict[str, Any]] = []
    for m in result.methods:
        info = infos.get(m) or MethodInfo(name=m, title=m)
        methods.append(
            {
                "name": m,
                "title": info.title or m,
                "formula": info.formula or None,
                "description": info.description or None,
                "reference": info.reference or None,
                "cost": info.extra.get("cost"),
                "primary": m == primary,
                "metrics": {k: s.to_json() for k, s in result.overall.metrics.get(m, {}).items()},
                "status_counts": thaw(result.overall.status_counts.get(m, {})),
            }
        )
    metrics_info: list[dict[str, Any]] = [
        {**mi.to_json(), "direction": mi.direction} for mi in metrics_info_all.values()
    ]
    overall_metric_names = list(dict.fromkeys(k for m in methods for k in m["metrics"]))

    faith = [
        {"method": m, "metrics": {k: s.to_json() for k, s in stats.items()}}
        for m, stats in (result.faithfulness or {}).items()
    ]
    sanity = [{"method": m, **v.to_json()} for m, v in (result.sanity or {}).items()]

    skipped_all = [dict(s) for s in result.dataset.skipped]
    n_skipped = result.dataset.n_skipped

    samples = _read_samples(run_dir, primary)
    figures = _figures(result, rows, samples, limits)

    any_interventions = any(r["interventions"] is not None for r in rows)
    from auditor.report.detection import detection_context

    detection = detection_context(result, run_dir)  # issue 26: None for classifier runs
    notes = []
    if not any_interventions and detection is None:
        notes.append(
            "Background interventions did not run: the report shows where the model "
            "looks, not whether it depends on the background."
        )
    if not faith:
        notes.append("Faithfulness metrics (deletion/insertion) did not run.")
    if result.dataset.annotated is False:
        notes.append("The dataset has no object annotations: localisation metrics are absent.")

    finished = str(result.run.finished or result.run.started or "")
    versions = sorted((str(k), str(v)) for k, v in result.run.versions.items())
    config = thaw(result.run.config) if result.run.config is not None else None
    return {
        "output": "html",
        "summary": result,
        "result": result,
        # [report] title when the user set one (issue 13), else the model's name
        "title": str(result.title)
        if result.title and result.title != "Model attention audit"
        else f"Model audit: {result.model.name or result.model.source or 'unnamed model'}",
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
        "table_metrics": list(table_metrics),
        "table_columns": [
            {
                "name": k,
                "title": metric_titles.get(k, k),
                "formula": metrics_info_all[k].formula if k in metrics_info_all else "",
            }
            for k in table_metrics
        ],
        "classes": rows,
        "n_classes": len(rows),
        "n_flagged": sum(1 for r in rows if r["flagged"]),
        "any_interventions": any_interventions,
        "any_chance": any(r["chance"] is not None for r in rows),
        "findings": findings,
        "severity_counts": severity_counts,
        "gates": gates,
        "verdict_text": (
            "Not interpretable · " if result.extra.get("interpretability", {}).get(
                "interpretable") is False else ""
        ) + _verdict(result.gates),
        "figures": figures,
        "labels": _labels_context(result),  # issue 26: multi-label runs
        "galleries": galleries,
        "n_gallery_classes": len(gallery_names),
        "clusters": clusters,
        "subgroups": subgroups,
        "groups": _groups_context(result),
        "detection": detection,
        "transplant": _transplant_context(result, images),  # issue 22
        "rules": [(k, v) for k, v in result.rules.items()],
        "faithfulness": faith,
        "sanity": sanity,
        "sanity_status": thaw(result.sanity_status) if result.sanity_status else None,
        "reshape_text": _reshape_text(model.get("reshape")),
        "versions": versions,
        "timings": [(str(k), v) for k, v in result.run.timings.items()],
        "config_text": (
            json.dumps(config, indent=2, sort_keys=True, default=str) if config else None
        ),
        "skipped": skipped_all[: limits.skipped],
        "n_skipped": n_skipped,
        "notes": notes,
        "limits": asdict(limits),
        # verdict, compliance record, limitations, clause map, sign-off (issue 25)
        **compliance_context(result, run_dir),
    }
