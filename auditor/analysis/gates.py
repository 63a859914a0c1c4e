"""Release gates: every ``[gates]`` rule checked against an :class:`~auditor.results.AuditResult`.

A gate whose value is missing (the quantity was not measured for that class, or the class has
no intervention results) FAILS, with the reason in ``note``: a gate must never pass by
default. Classes without samples are not checked, but a gate that names a class that is
unknown or has no sample, or that checks no class at all, fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.config import GATE_EXTRA_QUANTITIES, GateRule
from auditor.results import AuditResult, ClassResult, GateResult, Gates, OverallResult

__all__ = ["evaluate_gates", "gate_result", "gate_value"]

#: Gate quantities read from a class's interventions (the rest of GATE_EXTRA_QUANTITIES is
#: accuracy).
INTERVENTION_QUANTITIES = tuple(q for q in GATE_EXTRA_QUANTITIES if q != "accuracy")


def gate_value(block: ClassResult | OverallResult, rule: GateRule, primary: str) -> float | None:
    """The value ``rule`` checks in one class (or overall), ``None`` if not available."""
    q = rule.quantity
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
            results.append(gate_result(rule, None, gate_value(result.overall, rule, primary)))
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
