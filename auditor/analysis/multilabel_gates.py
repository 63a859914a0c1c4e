"""Evaluation of the multi-label gates (issue 26): ``min_label_auroc`` and
``min_label_average_precision`` per label.

The value of label ``l`` is summary.json ``labels.labels.<l>.auroc`` (or
``average_precision``): ``value`` for ``stat = "mean"``, else the interval bound ``ci_low`` /
``ci_high`` (AUROC: DeLong 1988; AP: stratified percentile bootstrap;
:mod:`auditor.analysis.multilabel`). A label whose statistic is not estimable (no image
carries it, or every image does) FAILS the gate with that reason as the note, never passes by
being skipped; so does a label named in the rule that the run does not have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auditor.config_multilabel import LABEL_GATE_QUANTITIES
from auditor.results import GateResult

__all__ = ["label_gate_results"]


def label_gate_results(result: Any, rule: Any) -> list[GateResult]:
    """The checks of one label gate ``rule`` over ``result``'s labels (module docstring)."""
    from auditor.analysis.gates import gate_result

    block = result.extra.get("labels")
    labels = block.get("labels") if isinstance(block, Mapping) else None
    if not isinstance(labels, Mapping):
        return [gate_result(rule, None, None, "not a multi-label run: no per-label statistics")]
    key = LABEL_GATE_QUANTITIES[rule.quantity]
    field = {"mean": "value"}.get(rule.stat, rule.stat)
    out: list[GateResult] = []
    for name in rule.classes or tuple(labels):
        entry = labels.get(name)
        if not isinstance(entry, Mapping):
            out.append(gate_result(rule, name, None, "unknown label"))
            continue
        stat = entry.get(key) or {}
        value = stat.get(field)
        why = stat.get("not_estimable") or f"{key} {field} not available"
        out.append(gate_result(rule, name, None if value is None else float(value), why))
    if not out:
        out.append(gate_result(rule, None, None, "the run has no label"))
    return out
