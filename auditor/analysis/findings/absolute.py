"""Finding rules judged against absolute baselines, not against the other classes (issue 22).

Every rule of :mod:`auditor.analysis.findings` compares a class with the OTHER classes, so a
shortcut that every class shares (each class its own background) leaves them all silent. The
rules here compare each class with a baseline that does not depend on the other classes. The
margins were fixed before any benchmark number was read and are the same for every case
(:class:`AbsoluteRules`):

* **energy lift** (energy in the object ÷ the object's area fraction; 1 = a uniform map): the
  upper bound of the class's interval :math:`\\le 1` means the map is no better than uniform on
  the object (Wang et al. 2020 use the same energy; the lift divides out the area);
* **only-background accuracy** (object removed, the background alone predicted as the class;
  Xiao et al. 2021): Wilson lower bound above chance :math:`1/C` by more than ``margin`` (0.10);
* **only-object accuracy** against the class's OWN accuracy: the paired drop's interval above
  ``margin`` (supporting evidence only; it is ``background_reliance``'s statistic).
  Multi-label (sigmoid) runs: chance is NOT ``1/K`` (labels are independent) but the label's
  positive rate on images without it (``FindingRules.label_chance``, issue 26).

``absolute_background`` (per class) fires when the lift test OR the only-background test holds;
**high** when both hold (the map avoids the object and the background alone carries the
class), medium otherwise, except **low** when only the background test holds while the lift's
interval lies above uniform (the fill keeps the object's silhouette; the evidence disagrees).
A collapsed intervention (:mod:`auditor.analysis.fill_collapse`) is not used.
``shared_shortcut`` (run-wide, high) fires when every class (at least two) with data
has a medium or high ``absolute_background`` finding: the shortcut no relative rule can see.
``intervention_uninformative`` (run-wide, info) names a collapsed intervention and its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor.analysis.fill_collapse import Collapse, only_bg_collapse, only_fg_collapse
from auditor.analysis.findings.registry import FindingRules, RuleContext, finding_rule
from auditor.format import fmt_interval
from auditor.results import ClassResult, Finding
from auditor.stats import wilson_interval

__all__ = [
    "AbsoluteRules",
    "absolute_background_rule",
    "absolute_evidence",
    "collapses",
    "intervention_check_rule",
]


@dataclass(frozen=True)
class AbsoluteRules:
    """Margins of the absolute rules (fixed before the benchmark; module docstring)."""

    #: energy lift: the interval's upper bound must be at most this (1 = uniform map)
    lift_max: float = 1.0
    #: only-background accuracy: Wilson lower bound above chance by more than this
    margin: float = 0.10
    #: fewest samples of a class with a finite value for a test to run
    min_n: int = 5

    def describe(self, confidence: float) -> str:
        return (
            f"Against absolute baselines, not the other classes: a class whose mean energy "
            f"lift has its {confidence:.0%} interval at or below {self.lift_max:.2f} (the map "
            f"is no better than uniform on the object), or whose background alone (object "
            f"removed) is predicted as the class with a Wilson lower bound above chance "
            f"(1 / number of classes; multi-label runs: the label's positive rate on images "
            f"without it) + {self.margin:.2f}: medium, high when both hold, low "
            f"when only the background test holds while the maps lie on the object. "
            f"Interventions that collapse (fill_collapse) are not used. When every class is "
            f"flagged so, a run-wide high 'shared_shortcut' finding."
        )


def collapses(ctx: RuleContext) -> dict[str, Collapse]:
    """The collapse checks of the only-background and only-foreground interventions."""
    p = ctx.samples
    n_classes = len(ctx.classes)
    fg = p.interventions.get("only_fg_correct")
    return {
        "only_bg": only_bg_collapse(
            p.labels, p.preds, p.only_bg_pred, n_classes, confidence=ctx.confidence
        ),
        "only_fg": only_fg_collapse(
            p.labels, p.correct, fg, n_classes, confidence=ctx.confidence, preds=p.preds,
            only_fg_pred=p.only_fg_pred,
        ),
    }


def _absolute(
    ctx: RuleContext, c: ClassResult, rules: AbsoluteRules, bg_ok: bool
) -> dict[str, Any] | None:
    """The evidence of one class (None when no test fires)."""
    lift = c.stat(ctx.primary, "energy_lift")
    lift_fires = bool(
        lift is not None
        and lift.ci_high is not None
        and lift.n is not None
        and lift.n >= rules.min_n
        and lift.ci_high <= rules.lift_max
    )
    chance, basis = _chance(ctx, c)
    bg_fires, bg_rate, bg_n = False, None, 0
    bg_ci: list[float | None] = [None, None]
    obc = ctx.samples.interventions.get("only_bg_correct")
    if bg_ok and obc is not None and chance is not None:
        sel = (ctx.samples.labels == int(c.index or 0)) & np.isfinite(obc)
        bg_n = int(sel.sum())
        if bg_n >= rules.min_n:
            w = wilson_interval(int(obc[sel].sum()), bg_n, confidence=ctx.confidence)
            bg_rate, bg_ci = w.estimate, [w.low, w.high]
            bg_fires = w.low > chance + rules.margin
    if not (lift_fires or bg_fires):
        return None
    return {
        "energy_lift": lift.mean if lift is not None else None,
        "energy_lift_ci": [lift.ci_low, lift.ci_high] if lift is not None else [None, None],
        "lift_max": rules.lift_max,
        "lift_fires": lift_fires,
        "only_bg_accuracy": bg_rate,
        "only_bg_ci": bg_ci,
        "only_bg_n": bg_n,
        "chance": chance,
        "chance_basis": basis,
        "margin": rules.margin,
        "only_bg_fires": bg_fires,
        "method": ctx.primary,
    }


def _chance(ctx: RuleContext, c: ClassResult) -> tuple[float | None, str]:
    """The only-background test's chance baseline of class ``c`` and what it is.

    Exclusive classes (softmax): ``1 / C``. Independent labels (sigmoid, issue 26): no share
    of ``1 / K`` applies (every label may be predicted on any image); the baseline is the
    model's positive rate ``P(p_l >= t | image without l)`` for that label
    (``FindingRules.label_chance``): the background alone must trigger the label more often
    than images that never had it; ``None`` (not judged) without such an image."""
    lc = ctx.rules.label_chance
    if lc is None:
        return 1.0 / max(len(ctx.classes), 1), "1 / number of classes"
    i = int(c.index or 0)
    value = lc[i] if 0 <= i < len(lc) else None
    return value, "the label's positive rate on images without it (independent labels)"

def absolute_evidence(ctx: RuleContext, c: ClassResult) -> dict[str, Any] | None:
    """The absolute tests of one class with the margins of :class:`AbsoluteRules`: energy lift
    no better than uniform (interval's upper bound <= ``lift_max``), or the background alone
    called the class above chance (Wilson lower bound > 1/C + ``margin``; skipped when the
    only-background fill collapsed). None when neither fires; else the evidence with the
    absolute rule's own ``severity`` (:func:`_severity`: low when only the background test
    holds while the map lies on the object, the fill's silhouette ambiguity). Read by the
    relative ``background_focus`` rule as its evidence of dependence."""
    ev = _absolute(ctx, c, AbsoluteRules(), not collapses(ctx)["only_bg"].collapsed)
    if ev is not None:
        ev["severity"] = _severity(ev)
    return ev


def _severity(ev: dict[str, Any]) -> str:
    """High when both tests hold; medium for one; LOW when only the background test holds
    while the map is demonstrably on the object (energy lift's lower bound above
    ``lift_max``): removing the object leaves its silhouette in the fill, so a model that
    reads the object's shape still names the class from "the background alone"; the two
    pieces of evidence disagree and neither is shown to be a shortcut."""
    if ev["lift_fires"] and ev["only_bg_fires"]:
        return "high"
    lo = ev["energy_lift_ci"][0]
    if ev["only_bg_fires"] and lo is not None and lo > ev["lift_max"]:
        ev["silhouette_ambiguous"] = True
        return "low"
    return "medium"


def _message(name: str, ev: dict[str, Any]) -> str:
    parts = []
    if ev["lift_fires"]:
        lo, hi = ev["energy_lift_ci"]
        parts.append(
            f"its maps are no better than uniform on the object (energy lift "
            f"{ev['energy_lift']:.2f}, interval {fmt_interval(lo, hi, '.2f')}, "
            f"≤ {ev['lift_max']:.2f})"
        )
    if ev["only_bg_fires"]:
        lo, hi = ev["only_bg_ci"]
        parts.append(
            f"the background alone is called '{name}' for {ev['only_bg_accuracy']:.0%} of its "
            f"images (interval {fmt_interval(lo, hi)}; chance {ev['chance']:.0%}: "
            f"{ev['chance_basis']})"
        )
    tail = (
        " Its maps lie on the object (energy lift above uniform), so the object's silhouette "
        "left by the fill may be what is recognised: a note, not a shortcut."
        if ev.get("silhouette_ambiguous")
        else ""
    )
    return f"Judged on its own, not against other classes: {' and '.join(parts)}.{tail}"


def _describe_absolute(r: FindingRules, confidence: float) -> str:
    return AbsoluteRules().describe(confidence)


@finding_rule("absolute_background", describe=_describe_absolute)
def absolute_background_rule(ctx: RuleContext) -> list[Finding]:
    """Per class against chance (module docstring); plus ``shared_shortcut`` run-wide."""
    rules = AbsoluteRules()
    bg_ok = not collapses(ctx)["only_bg"].collapsed
    out: list[Finding] = []
    with_data = 0
    for name, c in ctx.classes.items():
        if c.n < rules.min_n:
            continue
        with_data += 1
        ev = _absolute(ctx, c, rules, bg_ok)
        if ev is None:
            continue
        out.append(
            Finding(
                cls=name,
                kind="absolute_background",
                severity=_severity(ev),
                title=f"'{name}': evidence no better than chance on the object",
                message=_message(name, ev),
                evidence=ev,
            )
        )
    if with_data >= 2 and sum(f.severity != "low" for f in out) == with_data:
        out.append(
            Finding(
                cls=None,
                kind="shared_shortcut",
                severity="high",
                title="Every class is predicted from outside its object",
                message=(
                    f"All {with_data} classes fail the absolute test (absolute_background): "
                    "a shortcut every class shares, which no comparison between classes shows."
                ),
                evidence={"classes": [f.cls for f in out], "n_classes": with_data},
            )
        )
    return out


def _describe_check(r: FindingRules, confidence: float) -> str:
    from auditor.analysis.fill_collapse import COLLAPSE_MARGIN

    return (
        "Before an intervention is evidence, its fill is checked: the background-only images "
        "collapse when one class is the modal prediction for every true class and its share's "
        f"Wilson lower bound exceeds the unedited share by more than {COLLAPSE_MARGIN:.2f}; "
        "the background-removed images collapse when every class but at most one falls below "
        "chance at once (at least two were above it unedited). A collapsed intervention is "
        "reported (info) and no class finding rests on it."
    )


@finding_rule("intervention_check", describe=_describe_check)
def intervention_check_rule(ctx: RuleContext) -> list[Finding]:
    """An ``intervention_uninformative`` (info) finding per collapsed intervention."""
    out: list[Finding] = []
    names = list(ctx.classes)
    for key, res in collapses(ctx).items():
        if not res.collapsed:
            continue
        ev = dict(res.evidence)
        top = ev.get("modal_class_index")
        if isinstance(top, int) and 0 <= top < len(names):
            ev["modal_class"] = names[top]
        label = "background-only" if key == "only_bg" else "background-removed (only-object)"
        out.append(
            Finding(
                cls=None,
                kind="intervention_uninformative",
                severity="info",
                title=f"The {label} intervention tests the fill, not the model",
                message=(
                    f"{res.reason}: the fill is out of distribution for this data, so this "
                    "intervention is not used as evidence for any class."
                ),
                evidence=ev | {"rule": "fill_collapse", "fallback": "uninformative"},
            )
        )
    return out
