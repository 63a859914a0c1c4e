"""Group gates (``[gates] min_group_accuracy``, ``max_group_accuracy_gap``,
``max_group_background_focus_gap``; scope ``"group"``).

Per attribute (``rule.group`` ``None``: every attribute; ``"site"``: that one):

* ``min_group_accuracy``: the worst shown group's accuracy;
* ``max_group_accuracy_gap``: best minus worst group accuracy;
* ``max_group_background_focus_gap``: highest minus lowest group mean background focus.

Per group (``rule.group = "site=B"``): that group's accuracy; its gap to the best group; its
background focus minus the lowest group's. Groups smaller than ``[report] min_group_size`` are
never gated; a gate naming one, or an attribute with no shown group, fails with the reason (a
gate must never pass by default).
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.analysis.gates import gate_result
from auditor.config import GateRule
from auditor.group_results import AttributeResult, GroupsResult, GroupStat
from auditor.results import GateResult

__all__ = ["evaluate_group_gates"]


def _value(quantity: str, attr: AttributeResult, level: GroupStat | None) -> float | None:
    shown = [g for g in attr.levels if not g.suppressed and g.accuracy.value is not None]
    if not shown:
        return None
    accs = [g.accuracy.value for g in shown if g.accuracy.value is not None]
    bfs = [g.background_focus.value for g in shown if g.background_focus.value is not None]
    if quantity == "group_accuracy":
        return min(accs) if level is None else level.accuracy.value
    if quantity == "group_accuracy_gap":
        if level is None:
            return max(accs) - min(accs)
        return None if level.accuracy.value is None else max(accs) - level.accuracy.value
    if quantity == "group_background_focus_gap" and bfs:
        if level is None:
            return max(bfs) - min(bfs)
        bf = level.background_focus.value
        return None if bf is None else bf - min(bfs)
    return None


def evaluate_group_gates(
    groups: GroupsResult | None, rules: Sequence[GateRule]
) -> list[GateResult]:
    """Check the group gates; ``cls`` of each result is ``"attribute"`` or
    ``"attribute=level"``."""
    out: list[GateResult] = []
    for rule in (r for r in rules if r.scope == "group"):
        if groups is None:
            out.append(gate_result(rule, rule.group, None, "no group results ([data] groups)"))
            continue
        attr_name, _, level_name = (rule.group or "").partition("=")
        attr_name, level_name = attr_name.strip(), level_name.strip()
        attrs = [a for a in groups.attributes if rule.group is None or a.name == attr_name]
        if not attrs:
            out.append(gate_result(rule, rule.group, None, "unknown attribute"))
        for attr in attrs:
            if not level_name:
                why = "no group large enough to gate"
                out.append(gate_result(rule, attr.name, _value(rule.quantity, attr, None), why))
                continue
            level = attr.level(level_name)
            where = f"{attr.name}={level_name}"
            if level is None:
                out.append(gate_result(rule, where, None, "unknown group"))
            elif level.suppressed:
                out.append(gate_result(rule, where, None, "group below min_group_size"))
            else:
                out.append(gate_result(rule, where, _value(rule.quantity, attr, level)))
    return out
