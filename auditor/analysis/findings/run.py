"""Run-wide rules on the model's outputs: ``nonfinite_logits``."""

from __future__ import annotations

import numpy as np

from auditor.analysis.findings.registry import FindingRules, RuleContext, finding_rule
from auditor.results import Finding

#: share of the evaluated samples with NaN/Inf logits from which a finding is made, and from
#: which it is high
NONFINITE_SHARE = 0.01
NONFINITE_HIGH_SHARE = 0.05


def _describe_nonfinite(r: FindingRules, confidence: float) -> str:
    return (
        f"Samples whose logits are NaN or infinite get no prediction and no map: they count as "
        f"incorrect and their metrics are NaN. A finding when they are at least "
        f"{NONFINITE_SHARE:.0%} of the evaluated samples, high from {NONFINITE_HIGH_SHARE:.0%}."
    )


@finding_rule("nonfinite_logits", describe=_describe_nonfinite)
def nonfinite_logits_rule(ctx: RuleContext) -> list[Finding]:
    """Samples whose logits were NaN/Inf (status ``nonfinite_logits``), when they are
    >= 1 % of the run (high from 5 %)."""
    bad = ctx.samples.nonfinite
    if bad is None or bad.size == 0:
        return []
    n_bad, n = int(bad.sum()), int(bad.size)
    if n_bad == 0 or n_bad / n < NONFINITE_SHARE:
        return []
    ids = [str(ctx.samples.ids[int(i)]) for i in np.flatnonzero(bad)[:20]]
    return [
        Finding(
            kind="nonfinite_logits",
            severity="high" if n_bad / n >= NONFINITE_HIGH_SHARE else "medium",
            title="The model returned NaN/Inf logits",
            message=(
                f"{n_bad} of {n} images ({n_bad / n:.0%}) got NaN/Inf logits from the model: "
                "no prediction, no map; they count as incorrect and their metrics are NaN"
            ),
            cls=None,
            evidence={"n": n_bad, "share": n_bad / n, "ids": ids},
            examples=tuple(ids[:4]),
        )
    ]
