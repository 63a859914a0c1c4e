"""The report's first screen: "can this model ship, and why not?" as sentences.

Each failed gate becomes one sentence naming the quantity, the class, the measured value and
the threshold it crossed; the most severe findings follow as sentences with their evidence.
Nothing here computes a statistic: values are copied from the typed result and worded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auditor.format import finite_or_none, fmt_num, fmt_pct
from auditor.report.view import FailedGate, TopFinding, Verdict
from auditor.results import AuditResult, GateResult
from auditor.results.vocab import BLOCKING_SEVERITIES, severity_rank

__all__ = ["failed_gate_sentence", "finding_sentence", "verdict_block"]

#: Severities that can block a release, most severe first.
_BLOCKING = BLOCKING_SEVERITIES


#: Quantities that count findings (the ``max_findings_<severity>`` gates): whole numbers.
_COUNT_PREFIX = "findings_"


def _quantity(g: GateResult) -> tuple[str, str | None]:
    """(readable quantity, bound) for a gate: ``max_background_focus`` → ("background focus",
    "max")."""
    rule = g.rule or ""
    bound = g.bound
    quantity = g.quantity
    if quantity is None:
        for prefix in ("max_", "min_"):
            if rule.startswith(prefix):
                quantity, bound = rule[len(prefix) :], bound or prefix[:-1]
                break
    if bound is None:
        bound = "max" if rule.startswith("max") else "min" if rule.startswith("min") else None
    if quantity and quantity.startswith(_COUNT_PREFIX):  # max_findings_<severity>: a count
        return f"the number of {quantity[len(_COUNT_PREFIX) :]}-severity findings", bound
    text = (quantity or rule).replace("_", " ")
    if g.stat and g.stat not in ("mean",):
        text = f"{text} ({g.stat.replace('_', ' ')})"
    return text, bound


def failed_gate_sentence(g: GateResult) -> str:
    """One sentence: what a failed gate measured, on which class, against which threshold.

    Example: ``Background focus of class 'triangle' is 0.769, above the maximum of 0.600 set
    by gate max_background_focus.``
    """
    what, bound = _quantity(g)
    where = f" of class '{g.cls}'" if g.cls is not None else " over the whole dataset"
    value = finite_or_none(g.value)
    if value is None:
        why = f" ({g.note})" if g.note else ""
        return (
            f"{what[:1].upper()}{what[1:]}{where} could not be measured{why}, so gate "
            f"{g.rule} fails."
        )
    side = {"max": "above the maximum of", "min": "below the minimum of"}.get(
        bound or "", "against the threshold"
    )
    digits = 0 if what.startswith("the number of") else 3  # counts print as whole numbers
    return (
        f"{what[:1].upper()}{what[1:]}{where} is {fmt_num(value, digits)}, {side} "
        f"{fmt_num(g.threshold, digits)} set by gate {g.rule}."
    )


def finding_sentence(kind: str, message: str, title: str, evidence: Mapping[str, Any]) -> str:
    """A finding as one or two sentences: its message (which carries the main number) and,
    when the evidence has an interval for it, that interval."""
    text = (message or title or kind).strip()
    if text and text[-1] not in ".!?":
        text += "."
    ci = evidence.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = finite_or_none(ci[0]), finite_or_none(ci[1])
        if lo is not None and hi is not None:
            text += f" 95% interval {fmt_pct(lo)} to {fmt_pct(hi)}"
            n = evidence.get("n")
            text += f" over {fmt_num(n)} images." if isinstance(n, int) else "."
    return text


def verdict_block(result: AuditResult, *, top_findings: int = 3) -> Verdict:
    """The cover's verdict: ``ship`` (True / False / None when no gate is configured), a
    headline, the failed gates as sentences, the top findings as sentences, and counts.

    A run that is not interpretable (:mod:`auditor.analysis.interpretability`) says so FIRST:
    the headline starts with "Not interpretable", ``not_interpretable_reasons`` lists why, and
    ``interpretable`` is False (``None`` for runs written before the check existed)."""
    gates = result.gates
    failed = [g for g in (gates.results if gates else ()) if not g.passed]
    ranked = sorted(
        result.findings,
        key=lambda f: severity_rank(f.severity),
    )
    blocking = [f for f in ranked if f.severity in _BLOCKING]
    if gates is None or not gates.results:
        ship: bool | None = None
        headline = (
            "No release gate is configured: read the findings below before deciding."
            if blocking
            else "No release gate is configured, and no finding of medium or higher severity."
        )
    elif failed:
        ship = False
        headline = (
            f"Do not ship as is: {len(failed)} of {len(gates.results)} release gate checks failed."
        )
    else:
        ship = True
        headline = f"The release gates pass: all {len(gates.results)} checks."
        if blocking:
            headline += " Read the findings below before release."
    from auditor.analysis.interpretability import from_result

    precondition = from_result(result)
    not_interpretable = precondition is not None and not precondition.interpretable
    if not_interpretable:
        ship = False if ship is not True else ship  # a disabled gate leaves the gates' word
        headline = (
            "Not interpretable: the preconditions of this audit do not hold, so its maps and "
            "findings are no evidence about this model. " + headline
        )
    return Verdict(
        ship=ship,
        headline=headline,
        interpretable=None if precondition is None else precondition.interpretable,
        not_interpretable_reasons=(
            tuple(precondition.reasons) if precondition is not None and not_interpretable else ()
        ),
        failed_gates=tuple(
            FailedGate(sentence=failed_gate_sentence(g), cls=g.cls, rule=g.rule)
            for g in failed[:10]
        ),
        n_failed_gates_hidden=max(0, len(failed) - 10),
        top_findings=tuple(
            TopFinding(
                id=f.id,
                severity=f.severity,
                cls=f.cls,
                sentence=finding_sentence(f.kind, f.message, f.title, f.evidence),
            )
            for f in blocking[:top_findings]
        ),
    )
