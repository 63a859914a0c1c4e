"""Finding rules: one function per rule, its description (printed verbatim in the report's
methodology and in ``summary["rules"]``) beside it.

A rule is ``fn(ctx: RuleContext) -> list[Finding]`` registered with :func:`finding_rule`
together with ``describe(rules: FindingRules, confidence: float) -> str``. Rules run in
registration order; their findings are then sorted by severity, class and kind and numbered
``F1``, ``F2``, … (:func:`run_rules`). Adding a rule: write the function with
``@finding_rule("my_rule", describe=...)`` in this module (or any module imported before the
analysis runs) and add a test with a table that triggers it and one that must not.

Rules (the thresholds are fields of :class:`FindingRules`; those of SpRAy and the sanity check
are read from :func:`auditor.analysis.spray.clusters.spray_clusters` and the sanity results):

* ``background_focus``: the class's mean background focus (primary method) has its whole
  confidence interval above the baseline of the other classes by at least ``margin`` and its
  size-adjusted energy lift is clearly lower. High when the interventions confirm it or the
  lift is below chance; a low-severity disagreement when the interventions refute it.
* ``background_reliance``: accuracy on only-foreground images (background removed, Xiao et
  al. 2021) drops by more than ``drop_margin`` with the interval's lower bound > 0. Without
  attention evidence it is a disagreement: medium when mixed-rand or only-background (natural
  pixels) agree, low when only the synthetic fill shows it.
* ``right_for_wrong_reasons``: among correct predictions, the share whose CAM puts less mass
  on the object than its area (energy lift < 1) has a Wilson lower bound above 0.5.
* ``border_focus``: mean CAM mass in the outer band above the other classes' baseline.
* ``method_disagreement``: two methods' mean background focus differ by > ``disagreement``.
* ``subgroup_shortcut`` / ``strategy_cluster``: a SpRAy cluster of a class tested against the
  rest of its class (:mod:`auditor.analysis.spray.subgroups`, :mod:`auditor.subgroup_findings`).
* ``background_sufficiency``: the background alone is predicted as the class far more often
  than other classes' backgrounds are (Xiao et al. 2021).
* ``sanity_check``: a method whose maps barely change when the head is randomised.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from auditor.analysis.aggregate import PrimaryColumns
from auditor.format import fmt
from auditor.results import (
    SEVERITIES,
    ClassClusters,
    ClassResult,
    Finding,
    Interventions,
    SanityResult,
)
from auditor.stats import wilson_interval

__all__ = [
    "FINDING_RULES",
    "FindingRule",
    "FindingRules",
    "RuleContext",
    "apply_flags",
    "describe_rules",
    "finding_rule",
    "number_findings",
    "run_rules",
]

SEVERITY_ORDER = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class FindingRules:
    """Thresholds of the finding rules (printed in the report's methodology)."""

    margin: float = 0.05
    lift_ratio: float = 0.75
    drop_margin: float = 0.10
    sanity_strong: float = 0.8
    disagreement: float = 0.25
    wrong_reasons_share: float = 0.5
    border_band_share: float = 0.36

    def describe(self, confidence: float) -> dict[str, str]:
        """``{rule name: description}`` for every registered rule, in order."""
        return describe_rules(self, confidence)


@dataclass(frozen=True)
class RuleContext:
    """What a finding rule may read: the class results (before flags), the primary method's
    per-sample columns, the other analyses' results and the thresholds."""

    classes: Mapping[str, ClassResult]
    primary: str
    methods: tuple[str, ...]
    samples: PrimaryColumns
    rules: FindingRules
    confidence: float
    clusters: Mapping[str, ClassClusters]
    sanity: Mapping[str, SanityResult]

    def baseline(self, values: np.ndarray, ci: int) -> float | None:
        """Mean of ``values`` over the samples of every other class (finite values only)."""
        others = values[(self.samples.labels != ci) & np.isfinite(values)]
        return float(others.mean()) if len(others) else None


@dataclass(frozen=True)
class FindingRule:
    name: str
    fn: Callable[[RuleContext], list[Finding]]
    describe: Callable[[FindingRules, float], str]


_RULES: dict[str, FindingRule] = {}
#: Registered rules by name, in the order they run (read-only).
FINDING_RULES: Mapping[str, FindingRule] = MappingProxyType(_RULES)


def finding_rule(
    name: str, *, describe: Callable[[FindingRules, float], str]
) -> Callable[[Callable[[RuleContext], list[Finding]]], Callable[[RuleContext], list[Finding]]]:
    """Register ``fn`` as the finding rule ``name`` with its methodology ``describe``."""

    def deco(fn: Callable[[RuleContext], list[Finding]]) -> Callable[[RuleContext], list[Finding]]:
        if name in _RULES:
            raise ValueError(f"finding rule {name!r} is already registered")
        _RULES[name] = FindingRule(name, fn, describe)
        return fn

    return deco


def describe_rules(rules: FindingRules, confidence: float) -> dict[str, str]:
    return {name: r.describe(rules, confidence) for name, r in _RULES.items()}


def _pct(confidence: float) -> str:
    return f"{confidence:.0%}"


def _fmt(v: Any, spec: str = ".0%") -> str:
    return fmt(v, spec, missing="n/a")


def _collapsed(ctx: RuleContext, intervention: str) -> bool:
    """Whether the intervention's fill collapsed (:mod:`auditor.analysis.fill_collapse`)."""
    from auditor.analysis import fill_collapse as fc

    p, n_classes = ctx.samples, len(ctx.classes)
    if intervention == "only_bg":
        res = fc.only_bg_collapse(
            p.labels, p.preds, p.only_bg_pred, n_classes, confidence=ctx.confidence
        )
    else:
        fg = p.interventions.get("only_fg_correct")
        res = fc.only_fg_collapse(
            p.labels, p.correct, fg, n_classes, confidence=ctx.confidence, preds=p.preds,
            only_fg_pred=p.only_fg_pred,
        )  # fmt: skip
    return res.collapsed


# --------------------------------------------------------------------------------------------
# background focus and reliance (the two rules share their evidence)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Background:
    flagged: bool
    reliance: bool
    refuted: bool
    baseline: float | None
    baseline_lift: float | None


def _background(ctx: RuleContext, c: ClassResult) -> _Background:
    r = ctx.rules
    ci = int(c.index or 0)
    bf = c.stat(ctx.primary, "background_focus")
    lift = c.stat(ctx.primary, "energy_lift")
    baseline = ctx.baseline(ctx.samples.background_focus, ci)
    baseline_lift = ctx.baseline(ctx.samples.energy_lift, ci)
    # (a) more mass off the object than the other classes (interval rule), and (b) not
    # explained by a smaller object: the size-adjusted lift is also clearly lower
    flagged = bool(
        bf is not None
        and bf.ci_low is not None
        and baseline is not None
        and bf.ci_low - baseline > r.margin
        and lift is not None
        and lift.ci_high is not None
        and baseline_lift is not None
        and lift.ci_high < r.lift_ratio * baseline_lift
    )
    iv = c.interventions
    reliance = refuted = False
    if iv is not None and iv.only_fg_drop is not None:
        lo, hi = iv.only_fg_drop_ci
        reliance = iv.only_fg_drop > r.drop_margin and lo is not None and lo > 0
        refuted = hi is not None and hi < r.drop_margin
    return _Background(flagged, reliance, refuted, baseline, baseline_lift)


def _describe_background_focus(r: FindingRules, confidence: float) -> str:
    return (
        f"Flag a class when the lower bound of the {_pct(confidence)} interval of its mean "
        f"background focus exceeds the mean of all other classes by more than {r.margin:.2f} "
        f"AND the upper bound of its mean energy lift (energy in object ÷ object area, "
        f"which removes the effect of object size) is below {r.lift_ratio:.2f}× the "
        f"other classes' mean lift. High severity when the interventions confirm it or "
        f"the lift is below chance (< 1); when the interventions refute it (accuracy "
        f"without background stays within {r.drop_margin:.2f}) it is reported as a "
        f"low-severity disagreement instead."
    )


@finding_rule("background_focus", describe=_describe_background_focus)
def background_focus_rule(ctx: RuleContext) -> list[Finding]:
    """More CAM mass off the object than the other classes, not explained by object size."""
    out: list[Finding] = []
    for name, c in ctx.classes.items():
        b = _background(ctx, c)
        if not b.flagged:
            continue
        bf = c.stat(ctx.primary, "background_focus")
        lift = c.stat(ctx.primary, "energy_lift")
        if bf is None or lift is None or b.baseline is None or b.baseline_lift is None:
            continue
        evidence: dict[str, Any] = {
            "background_focus": bf.mean,
            "ci": [bf.ci_low, bf.ci_high],
            "baseline": b.baseline,
            "energy_lift": lift.mean,
            "baseline_lift": b.baseline_lift,
            "method": ctx.primary,
        }
        message = (
            f"{ctx.primary} puts {_fmt(bf.mean)} of its mass outside the object (interval "
            f"{_fmt(bf.ci_low)}–{_fmt(bf.ci_high)}) against {_fmt(b.baseline)} for the "
            f"other classes; size-adjusted (energy lift) {_fmt(lift.mean, '.2f')} against "
            f"{_fmt(b.baseline_lift, '.2f')}."
        )
        iv = c.interventions
        if b.refuted and iv is not None:
            out.append(
                Finding(
                    cls=name,
                    kind="evidence_disagreement",
                    severity="low",
                    title=f"'{name}': attention on the background, but accuracy holds without it",
                    message=message
                    + (
                        f" Yet accuracy on only-foreground images stays at "
                        f"{_fmt(iv.only_fg_accuracy)} (from {_fmt(iv.accuracy)}): the "
                        f"background is looked at without being needed."
                    ),
                    evidence=evidence
                    | {
                        "only_fg_accuracy": iv.only_fg_accuracy,
                        "only_fg_drop": iv.only_fg_drop,
                        "only_fg_drop_ci": list(iv.only_fg_drop_ci),
                    },
                )
            )
        else:
            # confirmed by the interventions, or below chance (lift < 1) → high
            strong = b.reliance or (lift.ci_high is not None and lift.ci_high < 1)
            out.append(
                Finding(
                    cls=name,
                    kind="background_focus",
                    severity="high" if strong else "medium",
                    title=f"'{name}': attention on the background",
                    message=message,
                    evidence=evidence,
                )
            )
    return out


def _describe_background_reliance(r: FindingRules, confidence: float) -> str:
    return (
        f"Accuracy on only-foreground images drops by more than {r.drop_margin:.2f} "
        f"with a {_pct(confidence)} paired-bootstrap interval above 0. Confirmed (high) when the "
        f"background-focus rule also fires; otherwise reported as a disagreement: medium when "
        f"an intervention with natural pixels agrees (mixed-rand accuracy lower by more than "
        f"{r.drop_margin:.2f}, or only-background still predicted as the class for more than "
        f"{r.drop_margin:.2f}), low when only the synthetic fill shows it."
    )


def _natural_background_agrees(r: FindingRules, iv: Interventions) -> bool:
    """Whether an intervention with natural pixels supports background reliance.

    Mixed-rand (Xiao et al. 2021: the object pasted on another image's background) loses more
    than ``drop_margin`` of accuracy, or only-background still predicts the class for more than
    ``drop_margin`` of the images. Unknown values count as no support.
    """
    acc, mixed, only_bg = iv.accuracy, iv.mixed_rand_accuracy, iv.only_bg_accuracy
    mixed_drop = acc is not None and mixed is not None and acc - mixed > r.drop_margin
    sufficient = only_bg is not None and only_bg > r.drop_margin
    return bool(mixed_drop or sufficient)


@finding_rule("background_reliance", describe=_describe_background_reliance)
def background_reliance_rule(ctx: RuleContext) -> list[Finding]:
    """Accuracy falls when the background is removed (Xiao et al. 2021)."""
    out: list[Finding] = []
    if _collapsed(ctx, "only_fg"):  # the fill, not the model, moved the predictions
        return out
    for name, c in ctx.classes.items():
        b = _background(ctx, c)
        iv = c.interventions
        if not b.reliance or iv is None:
            continue
        # Attention on the object, accuracy falls without the background: medium only when an
        # intervention that keeps natural pixels agrees (the object on another image's
        # background loses accuracy too, or the background alone is still called the class).
        # Otherwise the drop may come from the synthetic fill being out of distribution (a
        # flat or blurred surround the model never saw), so it is a low-severity note.
        corroborated = b.flagged or _natural_background_agrees(ctx.rules, iv)
        out.append(
            Finding(
                cls=name,
                kind="background_reliance" if b.flagged else "evidence_disagreement",
                severity="high" if b.flagged else ("medium" if corroborated else "low"),
                title=(
                    f"'{name}': confirmed reliance on the background"
                    if b.flagged
                    else f"'{name}': accuracy depends on the background, attention does not show it"
                ),
                message=(
                    f"Accuracy falls from {_fmt(iv.accuracy)} to "
                    f"{_fmt(iv.only_fg_accuracy)} when the background is removed"
                    + (
                        f"; on background alone the model still says '{name}' for "
                        f"{_fmt(iv.only_bg_accuracy)} of the images"
                        if iv.only_bg_accuracy is not None
                        else ""
                    )
                    + "."
                    + (
                        ""
                        if corroborated
                        else " On other images' backgrounds it keeps "
                        f"{_fmt(iv.mixed_rand_accuracy)}, so the drop may come from the "
                        "synthetic fill rather than from this class's background."
                    )
                ),
                evidence={
                    "accuracy": iv.accuracy,
                    "only_fg_accuracy": iv.only_fg_accuracy,
                    "only_bg_accuracy": iv.only_bg_accuracy,
                    "mixed_rand_accuracy": iv.mixed_rand_accuracy,
                    "only_fg_drop": iv.only_fg_drop,
                    "only_fg_drop_ci": list(iv.only_fg_drop_ci),
                },
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# the other per-class rules
# --------------------------------------------------------------------------------------------
def _describe_wrong_reasons(r: FindingRules, confidence: float) -> str:
    return (
        f"Among correct predictions, the share with energy lift < 1 (less CAM mass on "
        f"the object than its area) has a Wilson {_pct(confidence)} lower bound above "
        f"{r.wrong_reasons_share:.2f}."
    )


@finding_rule("right_for_wrong_reasons", describe=_describe_wrong_reasons)
def right_for_wrong_reasons_rule(ctx: RuleContext) -> list[Finding]:
    """Correct predictions whose maps put less mass on the object than chance."""
    out: list[Finding] = []
    p = ctx.samples
    for name, c in ctx.classes.items():
        cs = (p.labels == c.index) & (p.correct == 1) & np.isfinite(p.energy_lift)
        k_wrong = int(np.sum(p.energy_lift[cs] < 1))
        n_corr = int(cs.sum())
        if n_corr < 5:
            continue
        w = wilson_interval(k_wrong, n_corr, confidence=ctx.confidence)
        if w.low > ctx.rules.wrong_reasons_share:
            out.append(
                Finding(
                    cls=name,
                    kind="right_for_wrong_reasons",
                    severity="medium",
                    title=f"'{name}': right for the wrong reasons",
                    message=(
                        f"{k_wrong} of {n_corr} correct predictions put less CAM mass on the "
                        f"object than its area would by chance (energy lift < 1)."
                    ),
                    evidence={"share": k_wrong / n_corr, "ci": [w.low, w.high], "n": n_corr},
                )
            )
    return out


def _describe_border_focus(r: FindingRules, confidence: float) -> str:
    return (
        f"Mean CAM mass in the outer band exceeds the other classes' mean by more than "
        f"{r.margin:.2f} (interval lower bound) and the band's area share."
    )


@finding_rule("border_focus", describe=_describe_border_focus)
def border_focus_rule(ctx: RuleContext) -> list[Finding]:
    """CAM mass in the outer band: frames, watermarks, padding (Lapuschkin et al. 2019)."""
    out: list[Finding] = []
    for name, c in ctx.classes.items():
        bb = c.stat(ctx.primary, "border_focus")
        base_b = ctx.baseline(ctx.samples.border_focus, int(c.index or 0))
        if bb is None or bb.ci_low is None or bb.mean is None or base_b is None:
            continue
        if bb.ci_low - base_b > ctx.rules.margin and bb.mean > ctx.rules.border_band_share:
            out.append(
                Finding(
                    cls=name,
                    kind="border_focus",
                    severity="medium",
                    title=f"'{name}': attention on the image border",
                    message=(
                        f"{_fmt(bb.mean)} of the CAM mass lies in the outer band "
                        f"(other classes: {_fmt(base_b)}): check for frames, watermarks or "
                        f"padding artefacts."
                    ),
                    evidence={
                        "border_focus": bb.mean,
                        "ci": [bb.ci_low, bb.ci_high],
                        "baseline": base_b,
                    },
                )
            )
    return out


def _describe_disagreement(r: FindingRules, confidence: float) -> str:
    return (
        f"Two methods' mean background focus for the class differ by more than "
        f"{r.disagreement:.2f}."
    )


@finding_rule("method_disagreement", describe=_describe_disagreement)
def method_disagreement_rule(ctx: RuleContext) -> list[Finding]:
    """CAM methods that disagree about a class's background focus."""
    out: list[Finding] = []
    for name, c in ctx.classes.items():
        means: dict[str, float] = {}
        for m in ctx.methods:
            s = c.stat(m, "background_focus")
            if s is not None and s.mean is not None:
                means[m] = float(s.mean)
        if len(means) < 2:
            continue
        hi_m, lo_m = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
        if means[hi_m] - means[lo_m] > ctx.rules.disagreement:
            out.append(
                Finding(
                    cls=name,
                    kind="method_disagreement",
                    severity="info",
                    title=f"'{name}': CAM methods disagree",
                    message=(
                        f"Background focus is {_fmt(means[hi_m])} with {hi_m} but "
                        f"{_fmt(means[lo_m])} with {lo_m}: read this class's maps with care."
                    ),
                    evidence={"background_focus_by_method": means},
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# run-wide rules on other analyses' results
# --------------------------------------------------------------------------------------------
def _subgroup_rule_findings(ctx: RuleContext) -> list[Finding]:
    from auditor.subgroup_findings import subgroup_findings

    return subgroup_findings(ctx.clusters)


def _describe_subgroup(r: FindingRules, confidence: float) -> str:
    from auditor.analysis.spray.subgroups import SubgroupRules

    return SubgroupRules().describe(confidence)


@finding_rule("subgroup_shortcut", describe=_describe_subgroup)
def subgroup_shortcut_rule(ctx: RuleContext) -> list[Finding]:
    """A subgroup of a class that looks elsewhere, tested against the rest of its class
    (SpRAy, Lapuschkin et al. 2019; :mod:`auditor.analysis.spray.subgroups`): high or medium."""
    return [f for f in _subgroup_rule_findings(ctx) if f.kind == "subgroup_shortcut"]


def _describe_cluster(r: FindingRules, confidence: float) -> str:
    return (
        "A SpRAy cluster that separates from the rest of its class on some statistic (the "
        "intervals of subgroup_shortcut) but does not look elsewhere, or that the "
        "interventions show is not needed: low severity. Clusters that separate on no "
        "statistic are not reported."
    )


@finding_rule("strategy_cluster", describe=_describe_cluster)
def strategy_cluster_rule(ctx: RuleContext) -> list[Finding]:
    """A SpRAy cluster that differs from its class without a shortcut verdict (low)."""
    return [f for f in _subgroup_rule_findings(ctx) if f.kind == "strategy_cluster"]


def _describe_sufficiency(r: FindingRules, confidence: float) -> str:
    from auditor.subgroup_findings import SufficiencyRules

    return SufficiencyRules().describe(confidence)


@finding_rule("background_sufficiency", describe=_describe_sufficiency)
def background_sufficiency_rule(ctx: RuleContext) -> list[Finding]:
    """The background alone is predicted as the class (Xiao et al. 2021, only-BG)."""
    from auditor.subgroup_findings import sufficiency_findings

    p = ctx.samples
    if p.only_bg_pred is None or len(p.ids) != len(p.labels) or _collapsed(ctx, "only_bg"):
        return []
    return sufficiency_findings(
        p.labels, p.only_bg_pred, p.ids, list(ctx.classes), confidence=ctx.confidence
    )


def _sanity_threshold(ctx_sanity: Mapping[str, SanityResult] | None = None) -> float:
    for res in (ctx_sanity or {}).values():
        if res.threshold is not None:
            return res.threshold
    try:
        from auditor.metrics.sanity import randomisation_sanity_check

        value = inspect.signature(randomisation_sanity_check).parameters["threshold"].default
    except (ImportError, KeyError):  # pragma: no cover - sanity module changed
        return 0.5
    return float(value) if isinstance(value, int | float) else 0.5


def _describe_sanity(r: FindingRules, confidence: float) -> str:
    return (
        f"A method whose maps keep a Spearman correlation of at least {_sanity_threshold():g} "
        "with the original maps after the classifier head is re-initialised (Adebayo et al. "
        "2018) is marked untrustworthy; a finding of medium (primary method) or low "
        f"severity from {r.sanity_strong:.1f}, informational below."
    )


@finding_rule("sanity_check", describe=_describe_sanity)
def sanity_check_rule(ctx: RuleContext) -> list[Finding]:
    """Methods whose maps survive the randomisation of the head (Adebayo et al. 2018)."""
    out: list[Finding] = []
    for method, res in ctx.sanity.items():
        if res.trustworthy:
            continue
        strong = (res.similarity or 0.0) >= ctx.rules.sanity_strong
        out.append(
            Finding(
                cls=None,
                kind="sanity_check",
                severity=("medium" if method == ctx.primary else "low") if strong else "info",
                title=(
                    f"{method}: fails the randomisation sanity check"
                    if strong
                    else f"{method}: maps change only moderately when the head is randomised"
                ),
                message=(
                    f"{method}'s maps keep a rank correlation of "
                    f"{_fmt(res.similarity, '.2f')} after the classifier head is "
                    + (
                        "randomised: they do not reflect what the model learned."
                        if strong
                        else "randomised: they depend partly on the activations alone; "
                        "read them alongside another method or the interventions."
                    )
                ),
                evidence=res.to_json(),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# running the rules
# --------------------------------------------------------------------------------------------
def run_rules(ctx: RuleContext, rules: Sequence[str] | None = None) -> list[Finding]:
    """The findings of every registered rule (or of those named), in the order produced."""
    findings: list[Finding] = []
    for name in rules or list(_RULES):
        findings.extend(_RULES[name].fn(ctx))
    return findings


def number_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Sorted by severity, class and kind (stable), with ids ``F1``, ``F2``, …"""
    order = sorted(
        range(len(findings)),
        key=lambda i: (
            SEVERITY_ORDER[findings[i].severity],
            str(findings[i].cls),
            findings[i].kind,
            i,
        ),
    )
    return [replace(findings[i], id=f"F{k + 1}") for k, i in enumerate(order)]


def apply_flags(
    classes: Mapping[str, ClassResult], findings: Sequence[Finding], primary: str
) -> dict[str, ClassResult]:
    """Classes with their ``flags`` (kinds of their findings, in the order the rules produced
    them), ``flagged`` (a high or medium finding) and ``risk`` = mean background focus +
    max(only-foreground drop, 0) + 0.25 × number of flags (the report's ordering key).
    """
    flags: dict[str, list[str]] = {name: [] for name in classes}
    flagged: dict[str, bool] = {name: False for name in classes}
    for f in findings:
        if f.cls is None or f.cls not in classes:
            continue
        if f.severity in ("high", "medium"):
            flagged[f.cls] = True
        if f.kind not in flags[f.cls]:
            flags[f.cls].append(f.kind)
    out: dict[str, ClassResult] = {}
    for name, c in classes.items():
        bf = c.stat(primary, "background_focus")
        drop = c.interventions.only_fg_drop if c.interventions is not None else None
        risk = float(
            ((bf.mean if bf is not None else None) or 0.0)
            + max(drop or 0.0, 0.0)
            + 0.25 * len(flags[name])
        )
        out[name] = replace(c, flags=tuple(flags[name]), flagged=flagged[name], risk=risk)
    return out
