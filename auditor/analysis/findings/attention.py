"""Per-class attention rules against the other classes: ``right_for_wrong_reasons``,
``border_focus``, and ``method_disagreement`` (two CAM methods disagree on a class).
"""

from __future__ import annotations

import numpy as np

from auditor.analysis.findings.registry import (
    FindingRules,
    RuleContext,
    class_finding,
    finding_rule,
    fmt_or_na,
    pct,
    per_class,
)
from auditor.results import ClassResult, Finding
from auditor.stats import wilson_interval


def _describe_wrong_reasons(r: FindingRules, confidence: float) -> str:
    return (
        f"Among correct predictions, the share with energy lift < 1 (less CAM mass on "
        f"the object than its area) has a Wilson {pct(confidence)} lower bound above "
        f"{r.wrong_reasons_share:.2f}."
    )


@finding_rule("right_for_wrong_reasons", describe=_describe_wrong_reasons)
def right_for_wrong_reasons_rule(ctx: RuleContext) -> list[Finding]:
    """Correct predictions whose maps put less mass on the object than chance."""
    p = ctx.samples

    def check(name: str, c: ClassResult) -> Finding | None:
        cs = (p.labels == c.index) & (p.correct == 1) & np.isfinite(p.energy_lift)
        k_wrong = int(np.sum(p.energy_lift[cs] < 1))
        n_corr = int(cs.sum())
        if n_corr < 5:
            return None
        w = wilson_interval(k_wrong, n_corr, confidence=ctx.confidence)
        if w.low <= ctx.rules.wrong_reasons_share:
            return None
        return class_finding(
            name,
            "right_for_wrong_reasons",
            "medium",
            "right for the wrong reasons",
            f"{k_wrong} of {n_corr} correct predictions put less CAM mass on the "
            f"object than its area would by chance (energy lift < 1).",
            {"share": k_wrong / n_corr, "ci": [w.low, w.high], "n": n_corr},
        )

    return per_class(ctx, check)


def _describe_border_focus(r: FindingRules, confidence: float) -> str:
    return (
        f"Mean CAM mass in the outer band exceeds the other classes' mean by more than "
        f"{r.margin:.2f} (interval lower bound) and the band's area share."
    )


@finding_rule("border_focus", describe=_describe_border_focus)
def border_focus_rule(ctx: RuleContext) -> list[Finding]:
    """CAM mass in the outer band: frames, watermarks, padding (Lapuschkin et al. 2019)."""

    def check(name: str, c: ClassResult) -> Finding | None:
        bb = c.stat(ctx.primary, "border_focus")
        base_b = ctx.baseline(ctx.samples.border_focus, int(c.index or 0))
        if bb is None or bb.ci_low is None or bb.mean is None or base_b is None:
            return None
        if not (bb.ci_low - base_b > ctx.rules.margin and bb.mean > ctx.rules.border_band_share):
            return None
        return class_finding(
            name,
            "border_focus",
            "medium",
            "attention on the image border",
            f"{fmt_or_na(bb.mean)} of the CAM mass lies in the outer band "
            f"(other classes: {fmt_or_na(base_b)}): check for frames, watermarks or "
            f"padding artefacts.",
            {"border_focus": bb.mean, "ci": [bb.ci_low, bb.ci_high], "baseline": base_b},
        )

    return per_class(ctx, check)


def _describe_disagreement(r: FindingRules, confidence: float) -> str:
    return (
        f"Two methods' mean background focus for the class differ by more than "
        f"{r.disagreement:.2f}."
    )


@finding_rule("method_disagreement", describe=_describe_disagreement)
def method_disagreement_rule(ctx: RuleContext) -> list[Finding]:
    """CAM methods that disagree about a class's background focus."""

    def check(name: str, c: ClassResult) -> Finding | None:
        means: dict[str, float] = {}
        for m in ctx.methods:
            s = c.stat(m, "background_focus")
            if s is not None and s.mean is not None:
                means[m] = float(s.mean)
        if len(means) < 2:
            return None
        hi_m, lo_m = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
        if means[hi_m] - means[lo_m] <= ctx.rules.disagreement:
            return None
        return class_finding(
            name,
            "method_disagreement",
            "info",
            "CAM methods disagree",
            f"Background focus is {fmt_or_na(means[hi_m])} with {hi_m} but "
            f"{fmt_or_na(means[lo_m])} with {lo_m}: read this class's maps with care.",
            {"background_focus_by_method": means},
        )

    return per_class(ctx, check)
