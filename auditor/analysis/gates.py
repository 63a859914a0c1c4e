"""Release gates: every ``[gates]`` rule checked against an :class:`~auditor.results.AuditResult`.

A gate whose value is missing (the quantity was not measured for that class, or the class has
no intervention results) FAILS, with the reason in ``note``: a gate must never pass by
default. Classes without samples are not checked, but a gate that names a class that is
unknown or has no sample, or that checks no class at all, fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.analysis.gate_registry import FAITHFULNESS_QUANTITIES
from auditor.config import GATE_EXTRA_QUANTITIES, GateRule
from auditor.config_detection import DETECTION_QUANTITIES
from auditor.config_multilabel import LABEL_GATE_QUANTITIES
from auditor.results import AuditResult, ClassResult, GateResult, Gates, OverallResult

__all__ = ["evaluate_gates", "gate_result", "gate_value", "overall_intervention", "overall_value"]

#: Gate quantities read from a class's interventions (the rest of GATE_EXTRA_QUANTITIES is
#: accuracy).
INTERVENTION_QUANTITIES = tuple(q for q in GATE_EXTRA_QUANTITIES if q != "accuracy")


def overall_intervention(
    classes: Mapping[str, ClassResult], quantity: str
) -> float | None:
    """An intervention quantity over the whole set: the class values weighted by their n.

    Each class value is a mean over that class's intervened samples (accuracies, and the
    differences ``only_fg_drop`` = acc − only_fg_acc, ``background_gap`` = acc −
    mixed_rand_acc), so ``Σ n_c · v_c / Σ n_c`` is the same mean over all intervened samples.
    ``None`` when no class has the quantity.
    """
    num, den = 0.0, 0
    for block in classes.values():
        iv = block.interventions
        if iv is None or not iv.n:
            continue
        value = iv.get(quantity)
        if value is None:
            continue
        num += float(value) * iv.n
        den += iv.n
    return num / den if den else None


def _faithfulness_value(result: AuditResult, rule: GateRule) -> float | None:
    """A faithfulness mean (or interval bound) of the seeded subset, ``None`` if not run."""
    block = (result.faithfulness or {}).get(rule.method or result.primary_method) or {}
    stat = block.get(rule.quantity)
    value = None if stat is None else getattr(stat, rule.stat, None)
    return None if value is None else float(value)


def gate_value(block: ClassResult | OverallResult, rule: GateRule, primary: str) -> float | None:
    """The value ``rule`` checks in one class (or overall), ``None`` if not available.

    Overall intervention and faithfulness quantities need the whole result: see
    :func:`overall_value`.
    """
    q = rule.quantity
    if q in DETECTION_QUANTITIES:  # detection audits: classes.<c>.detection (issue 26)
        det = block.extra.get("detection") if isinstance(block, ClassResult) else None
        value = det.get(q) if isinstance(det, Mapping) else None
        return None if value is None else float(value)
    if q == "accuracy":
        if rule.stat == "mean":
            return block.accuracy
        lo, hi = block.accuracy_ci
        return lo if rule.stat == "ci_low" else hi
    if q in INTERVENTION_QUANTITIES:
        iv = block.interventions if isinstance(block, ClassResult) else None
        if iv is None:
            return None
        if q == "only_fg_drop" and rule.stat != "mean":
            lo, hi = iv.only_fg_drop_ci
            return lo if rule.stat == "ci_low" else hi
        value = iv.get(q)
        return None if value is None else float(value)
    stat = block.stat(rule.method or primary, q)
    if stat is None:
        return None
    value = getattr(stat, rule.stat, None)
    return None if value is None else float(value)


def gate_result(
    rule: GateRule, cls: str | None, value: float | None, missing: str = "value not available"
) -> GateResult:
    """One gate check; a missing value fails with ``note = missing``."""
    if value is None:
        passed, note = False, missing
    else:
        passed = (rule.max is None or value <= rule.max) and (rule.min is None or value >= rule.min)
        note = ""
    return GateResult(
        rule=rule.name,
        cls=cls,
        quantity=rule.quantity,
        stat=rule.stat,
        value=value,
        threshold=rule.max if rule.max is not None else rule.min,
        bound="max" if rule.max is not None else "min",
        passed=bool(passed),
        note=note,
    )


def overall_value(result: AuditResult, rule: GateRule) -> float | None:
    """The value of an overall gate: intervention quantities pooled over the classes
    (:func:`overall_intervention`; ``mean`` only), faithfulness from the seeded subset, the
    rest from ``result.overall``."""
    if rule.quantity == "interpretable":  # the precondition gate (issue 22)
        verdict = result.extra.get("interpretability")
        if not isinstance(verdict, Mapping) or "interpretable" not in verdict:
            return None
        return 1.0 if verdict["interpretable"] else 0.0
    if rule.quantity in FAITHFULNESS_QUANTITIES:
        return _faithfulness_value(result, rule)
    if rule.quantity in INTERVENTION_QUANTITIES:
        if rule.stat != "mean":
            return None
        return overall_intervention(result.classes, rule.quantity)
    return gate_value(result.overall, rule, result.primary_method)


def evaluate_gates(result: AuditResult | Mapping[str, Any], rules: Sequence[GateRule]) -> Gates:
    """Check every gate rule (``scope == "compare"`` ones are left to ``compare``).

    ``result`` is the audit result (a ``summary.json`` mapping is parsed first).
    """
    if not isinstance(result, AuditResult):
        result = AuditResult.from_json(result)
    primary = result.primary_method
    results: list[GateResult] = []
    for rule in rules:
        if rule.scope in ("compare", "group"):  # group gates: auditor.analysis.groups.gates
            continue
        if rule.scope == "findings":
            sev = rule.quantity.split("_", 1)[1]
            count = sum(1 for f in result.findings if f.severity == sev)
            results.append(gate_result(rule, None, float(count)))
        elif rule.scope == "overall":
            results.append(gate_result(rule, None, overall_value(result, rule)))
        elif rule.quantity in LABEL_GATE_QUANTITIES:  # multi-label (issue 26): per label
            from auditor.analysis.multilabel_gates import label_gate_results

            results.extend(label_gate_results(result, rule))
        else:
            checked = 0
            for cls, block in result.classes.items():
                if rule.classes and cls not in rule.classes:
                    continue
                if not block.n:
                    continue
                results.append(gate_result(rule, cls, gate_value(block, rule, primary)))
                checked += 1
            # a gate that checked nothing must not pass by disappearing ("0/0 passed")
            for cls in rule.classes or ():
                named = result.classes.get(cls)
                if named is None or not named.n:
                    why = "unknown class" if named is None else "no evaluated sample"
                    results.append(gate_result(rule, cls, None, why))
            if not checked and not rule.classes:
                results.append(gate_result(rule, None, None, "no class has evaluated samples"))
    return Gates.of(results)
