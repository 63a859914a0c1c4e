"""``compare_runs`` for two detection audits (issue 26): the paired box statistics of
:mod:`auditor.compare.detection`, written as ``comparison.json`` (same schema as a classifier
comparison, plus an additive ``detection`` block), ``comparison.parquet`` (one row per paired
ground-truth box and comparison), ``junit.xml`` and ``compare.html``/``compare.pdf``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from auditor._version import __version__
from auditor.compare.core import STATUS_ORDER, LoadedRun, TableSink
from auditor.compare.detection import (
    class_verdict,
    compare_detection_methods,
    detection_metrics_info,
    is_detection_run,
)
from auditor.compare.gates import evaluate_comparison_gates
from auditor.config import GateRule
from auditor.errors import AuditorInputError, ConfigError
from auditor.results import COMPARISON_SCHEMA_VERSION, ComparisonResult

__all__ = ["check_gates_for_task", "check_same_task", "compare_detection_runs", "detection_task"]


def detection_task(ra: LoadedRun, rb: LoadedRun, rules: Sequence[GateRule]) -> bool:
    """Whether the two runs are detection audits (:func:`check_same_task`), with the gates
    checked for that task (:func:`check_gates_for_task`)."""
    detection = check_same_task(ra, rb)
    check_gates_for_task(rules, detection)
    return detection


def check_gates_for_task(rules: Sequence[GateRule], detection: bool) -> None:
    """Refuse a comparison gate that the compared runs' task cannot evaluate (a classifier's
    accuracy gate on detection runs, a detection gate on classifier runs): a ConfigError
    naming the gate, before anything is computed."""
    from auditor.config_detection import DETECTION_COMPARE_QUANTITIES, DETECTION_METRICS

    for rule in rules:
        base = rule.quantity.rsplit("_", 1)[0]
        if detection and base not in DETECTION_COMPARE_QUANTITIES + DETECTION_METRICS:
            raise ConfigError(
                f"[gates] {rule.name}: {base} is not compared between detection runs; "
                f"detection comparison gates: max_<q>_increase / _decrease of "
                f"{', '.join(DETECTION_COMPARE_QUANTITIES + DETECTION_METRICS)}"
            )
        if not detection and base in DETECTION_COMPARE_QUANTITIES:
            raise ConfigError(
                f"[gates] {rule.name}: a detection comparison gate, but the compared runs are "
                f"not detection audits"
            )


def check_same_task(ra: LoadedRun, rb: LoadedRun) -> bool:
    """True when both runs are detection audits, False when neither is; an error naming the
    runs when one is a detection audit and the other is not, or when their IoU thresholds
    differ (recall at IoU 0.5 and at 0.75 are different quantities)."""
    da, db = is_detection_run(ra), is_detection_run(rb)
    if da != db:
        det, other = (ra, rb) if da else (rb, ra)
        raise AuditorInputError(
            f"{det.role.upper()} {det.path} is a detection audit ([model] task = \"detection\") "
            f"but {other.role.upper()} {other.path} is not; compare two runs of the same task"
        )
    if da:
        ia = ra.summary.extra["detection"].get("iou_threshold")
        ib = rb.summary.extra["detection"].get("iou_threshold")
        if ia != ib:
            raise AuditorInputError(
                f"the detection runs matched boxes at different IoU thresholds (RUN_A {ia}, "
                f"RUN_B {ib}); their recalls are not comparable: re-run one with "
                f"[audit] iou_threshold = {ia}"
            )
    return da


def _rank(comparison: dict[str, Any]) -> None:
    """Each class's status, ``class_order`` (worst first: status, then recall change),
    ``regressed`` and ``improved``."""
    classes = comparison["primary"]["classes"]
    for entry in classes.values():
        entry["status"] = class_verdict(entry["metrics"]) if entry["n"] else "n/a"

    def key(name: str) -> tuple[Any, ...]:
        e = classes[name]
        d = (e["metrics"].get("detection_recall") or {}).get("diff")
        return (STATUS_ORDER.get(e["status"], 3), d if d is not None else float("inf"), name)

    ranked = sorted(classes, key=key)
    comparison["class_order"] = ranked
    comparison["regressed"] = [c for c in ranked if classes[c]["status"] == "regressed"]
    comparison["improved"] = [c for c in reversed(ranked) if classes[c]["status"] == "improved"]


def _with_key(table: pa.Table, key: str) -> pa.Table:
    return table.add_column(0, "comparison", pa.array([key] * table.num_rows, pa.string()))


def _blocks(
    ra: LoadedRun, rb: LoadedRun, classes: Sequence[str], kw: Mapping[str, Any],
    sink: TableSink,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The primary block and one per method both runs share (rows written to ``sink``)."""
    prim, table = compare_detection_methods(ra, rb, ra.primary, rb.primary, classes, kw)
    sink.write(_with_key(table, "primary"))
    methods: dict[str, Any] = {}
    shared = [m for m in ra.summary.methods if m in rb.summary.methods]
    for m in shared:
        if m == ra.primary == rb.primary:
            methods[m] = prim
            continue
        methods[m], table = compare_detection_methods(ra, rb, m, m, classes, kw)
        sink.write(_with_key(table, m))
    return prim, methods


def compare_detection_runs(
    ra: LoadedRun,
    rb: LoadedRun,
    classes: Sequence[str],
    out_dir: Path,
    settings: Mapping[str, Any],
    gate_rules: Sequence[GateRule],
    *,
    pdf: bool,
    templates: Path | None,
    render: bool,
) -> ComparisonResult:
    """The comparison of two detection runs (already loaded and checked comparable) into
    ``out_dir``; gates from ``gate_rules`` (``max_<q>_increase`` / ``_decrease``)."""
    from auditor.compare.exact import _metrics_info, _render, _run_info, _write_outputs

    sink = TableSink(out_dir / "comparison.parquet")
    prim, methods = _blocks(ra, rb, classes, settings, sink)
    det_a, det_b = ra.summary.extra["detection"], rb.summary.extra["detection"]
    comparison: dict[str, Any] = {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "kind": "comparison",
        "tool": {"name": "cam-auditor", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_a": _run_info(ra),
        "run_b": _run_info(rb),
        "dataset": {
            "sha256": ra.summary.dataset.sha256, "name": ra.summary.dataset.name,
            "annotation_sha256": ra.summary.dataset.annotation_sha256,
            "n_samples": ra.summary.dataset.n_samples, "classes": list(classes),
        },  # fmt: skip
        "pairing": {"key": ["index", "box"], "unit": "ground-truth box",
                    "n_paired": prim["n"], "n_only_a": prim["n_only_a"],
                    "n_only_b": prim["n_only_b"]},  # fmt: skip
        "settings": {
            **settings,
            "interval": "paired bootstrap (BCa, percentile fallback) of mean(B − A) over "
                        "the paired boxes; precision: paired image bootstrap (percentile)",
            "test": "recall rates: McNemar exact; drop and box metrics: wilcoxon signed-rank",
            "top_n": 0, "overall_interval": "exact",
        },  # fmt: skip
        "primary": prim,
        "methods": methods,
        "detection": {
            "task": "detection",
            "iou_threshold": det_a.get("iou_threshold"),
            "score_threshold_a": det_a.get("score_threshold"),
            "score_threshold_b": det_b.get("score_threshold"),
            "interventions_a": det_a.get("interventions"),
            "interventions_b": det_b.get("interventions"),
        },
    }
    _rank(comparison)
    comparison["gates"] = evaluate_comparison_gates(comparison, gate_rules)
    comparison["moved"] = []
    comparison["metrics_info"] = {**_metrics_info(), **detection_metrics_info()}
    comparison = _write_outputs(out_dir, comparison, sink, ra, rb)
    report = _render(comparison, out_dir, pdf=pdf, templates=templates) if render else {}
    return ComparisonResult.from_json(comparison, out_dir=out_dir, report=report)
