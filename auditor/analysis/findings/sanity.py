"""The ``sanity_check`` rule: CAM methods whose maps survive the randomisation of the
weights that produce them (Adebayo et al. 2018, model-randomisation test: by default the head
and the target layer's block, their cascading randomisation; ``[audit] sanity_randomise =
"head"``: the head only; :mod:`auditor.metrics.sanity`).
"""

from __future__ import annotations

from collections.abc import Mapping

from auditor.analysis.findings.registry import FindingRules, RuleContext, finding_rule, fmt_or_na
from auditor.metrics.names import SANITY_THRESHOLD
from auditor.results import Finding, SanityResult


def _sanity_threshold(ctx_sanity: Mapping[str, SanityResult] | None = None) -> float:
    """The threshold the stored sanity results used, else the check's default."""
    for res in (ctx_sanity or {}).values():
        if res.threshold is not None:
            return res.threshold
    return SANITY_THRESHOLD


def _describe_sanity(r: FindingRules, confidence: float) -> str:
    return (
        f"A method whose maps keep a Spearman correlation of at least {_sanity_threshold():g} "
        "with the original maps after the head and the target layer's block are re-initialised "
        "(Adebayo et al. 2018's cascading randomisation; the head only with [audit] "
        'sanity_randomise = "head") is marked untrustworthy; a finding of medium (primary '
        "method) or low "
        f"severity from {r.sanity_strong:.1f}, informational below."
    )


@finding_rule("sanity_check", describe=_describe_sanity)
def sanity_check_rule(ctx: RuleContext) -> list[Finding]:
    """Methods whose maps survive the randomisation (Adebayo et al. 2018)."""
    out: list[Finding] = []
    for method, res in ctx.sanity.items():
        if res.trustworthy:
            continue
        # runs before the cascade became the default recorded no variant: the head only
        cascade = res.extra.get("randomise") == "cascade"
        what = "the head and the target layer's block are" if cascade else "the classifier head is"
        partly = "the image's structure" if cascade else "the activations"
        strong = (res.similarity or 0.0) >= ctx.rules.sanity_strong
        out.append(
            Finding(
                cls=None,
                kind="sanity_check",
                severity=("medium" if method == ctx.primary else "low") if strong else "info",
                title=(
                    f"{method}: fails the randomisation sanity check"
                    if strong
                    else f"{method}: maps change only moderately when {what} randomised"
                ),
                message=(
                    f"{method}'s maps keep a rank correlation of "
                    f"{fmt_or_na(res.similarity, '.2f')} after {what} "
                    + (
                        "randomised: they do not reflect what the model learned."
                        if strong
                        else f"randomised: they depend partly on {partly} alone; "
                        "read them alongside another method or the interventions."
                    )
                ),
                evidence=res.to_json(),
            )
        )
    return out
