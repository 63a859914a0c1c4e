"""From per-sample rows to per-class statistics, findings and gates.

``analyse`` reads the run store's ``samples`` rows (one per sample × method) and returns an
:class:`auditor.results.AuditResult` (statistics, findings, rules, confusion, agreement,
faithfulness, clusters, sanity); the runner adds provenance and gates and writes it as
``summary.json``. Rendering only formats it.

* :mod:`auditor.analysis.aggregate`: means with bootstrap intervals (BCa; Efron 1987) that
  exclude NaN and count it, Wilson intervals for accuracies (Wilson 1927), intervention drops
  with paired bootstrap intervals (Xiao et al. 2021), faithfulness, confusion, agreement;
* :mod:`auditor.analysis.findings`: one function per finding rule with its description;
* :mod:`auditor.analysis.gates`: release gates.
"""

from __future__ import annotations

import sys as _sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from auditor.analysis.aggregate import (
    PrimaryColumns,
    class_results,
    confusion_matrix,
    faithfulness_block,
    method_agreement,
    metric_block,
    null_baselines,
    overall_result,
)
from auditor.analysis.fill_choice import choose_fills
from auditor.analysis.findings import (
    FINDING_RULES,
    SEVERITY_ORDER,
    FindingRules,
    RuleContext,
    apply_flags,
    finding_rule,
    number_findings,
    run_rules,
)
from auditor.analysis.findings import absolute as _absolute
from auditor.analysis.gates import evaluate_gates, gate_result, gate_value
from auditor.config import AuditSettings
from auditor.metrics.names import METRIC_NAMES
from auditor.metrics.registry import sample_metric_names
from auditor.results import (
    AuditResult,
    ClassClusters,
    ClassResult,
    MethodAgreement,
    OverallResult,
    SanityResult,
    Stat,
    freeze,
)

# deprecated alias, kept for one release (CHANGELOG): `auditor.analysis.absolute_rules` is the
# very module object of `auditor.analysis.findings.absolute`
_sys.modules.setdefault(f"{__name__}.absolute_rules", _absolute)

__all__ = [
    "AGG_METRICS",
    "FAITH_METRICS",
    "FINDING_RULES",
    "SEVERITY_ORDER",
    "FindingRules",
    "RuleContext",
    "analyse",
    "assemble",
    "evaluate_gates",
    "finding_rule",
    "gate_result",
    "gate_value",
    "method_agreement",
    "metric_block",
]

#: Built-in localisation metrics aggregated per class (names as in DESIGN 4.3/4.4); metrics
#: added with ``@auditor.metrics.registry.metric`` are aggregated too (``sample_metric_names``).
AGG_METRICS = METRIC_NAMES
FAITH_METRICS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")


def _clusters(value: Mapping[str, Any] | None) -> dict[str, ClassClusters]:
    out: dict[str, ClassClusters] = {}
    for name, res in (value or {}).items():
        out[str(name)] = res if isinstance(res, ClassClusters) else ClassClusters.from_json(res)
    return out


def _sanity(value: Mapping[str, Any] | None) -> dict[str, SanityResult]:
    out: dict[str, SanityResult] = {}
    for name, res in (value or {}).items():
        if str(name).startswith("_"):
            continue
        out[str(name)] = res if isinstance(res, SanityResult) else SanityResult.from_json(res)
    return out


def analyse(
    table: pa.Table,
    *,
    classes: Sequence[str],
    methods: Sequence[str],
    settings: AuditSettings,
    rules: FindingRules | None = None,
    clusters: Mapping[str, Any] | None = None,
    sanity: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Aggregate the sample rows into the statistical part of the audit result.

    ``clusters`` (``{class: ClassClusters}``) and ``sanity`` (``{method: SanityResult}``)
    are other analyses' results (their JSON forms are accepted too); they feed the
    ``strategy_cluster`` and ``sanity_check`` rules and are stored in the result.
    Provenance (run, model, dataset), method/metric metadata and gates are left at their
    defaults for the caller to fill (``result.replace(...)``).
    """
    from auditor.progress import phase

    phase("analysis", f"statistics, intervals and findings over {table.num_rows} rows")
    rules = rules or FindingRules()
    primary = settings.primary
    # a collapsed intervention's outcome is replaced by the first alternative fill that does
    # not collapse, before any statistic or rule reads it (issue 22)
    table, fills = choose_fills(
        table, classes=classes, primary=primary, configured=settings.intervention_fill,
        confidence=settings.confidence,
    )  # fmt: skip
    metrics = [m for m in sample_metric_names() if m in table.column_names]
    overall_m, class_m = metric_block(table, classes, methods, metrics, settings)
    prim = PrimaryColumns.of(table, primary)
    null = null_baselines(table, classes, primary, class_m)
    cls_results = class_results(prim, classes, class_m, settings, null)
    result = assemble(
        cls_results,
        overall=overall_result(table, prim, methods, overall_m, settings),
        prim=prim,
        classes=classes,
        methods=methods,
        settings=settings,
        rules=rules,
        method_agreement=method_agreement(table, methods),
        faithfulness=faithfulness_block(table, methods, FAITH_METRICS, settings),
        clusters=clusters,
        sanity=sanity,
    )
    if fills is None:
        return result
    return result.replace(extra=freeze({**dict(result.extra), "intervention_fills": fills}))


def assemble(
    cls_results: Mapping[str, ClassResult],
    *,
    overall: OverallResult,
    prim: PrimaryColumns,
    classes: Sequence[str],
    methods: Sequence[str],
    settings: AuditSettings,
    rules: FindingRules,
    method_agreement: MethodAgreement | None,
    faithfulness: Mapping[str, Mapping[str, Stat]] | None,
    clusters: Mapping[str, Any] | None = None,
    sanity: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Run the finding rules on the typed statistics and build the :class:`AuditResult`.

    Shared by :func:`analyse` (exact, from one table) and
    :func:`auditor.analysis.streamed.analyse_streamed` (from the shards, one at a time).
    """
    primary = settings.primary
    cl = _clusters(clusters)
    sa = _sanity(sanity)
    ctx = RuleContext(
        classes=MappingProxyType(dict(cls_results)),
        primary=primary,
        methods=tuple(methods),
        samples=prim,
        rules=rules,
        confidence=settings.confidence,
        clusters=MappingProxyType(cl),
        sanity=MappingProxyType(sa),
    )
    raw = run_rules(ctx)
    flagged = apply_flags(dict(cls_results), raw, primary)
    return AuditResult(
        methods=tuple(methods),
        primary_method=primary,
        overall=overall,
        classes=MappingProxyType(flagged),
        findings=tuple(number_findings(raw)),
        rules=freeze(rules.describe(settings.confidence)),
        confusion=confusion_matrix(prim, classes),
        method_agreement=method_agreement,
        faithfulness=freeze(faithfulness),
        sanity=MappingProxyType(sa) if sa else None,
        clusters=MappingProxyType(cl) if cl else None,
    )
