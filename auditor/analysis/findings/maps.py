"""Rules on the maps themselves: ``empty_maps`` (issue 27).

A class whose maps are mostly empty (zero, constant, non-finite or failed; see
:mod:`auditor.analysis.empty_maps`) has statistics built on nothing: its row must say so, not
stay blank. Finer-CAM on a very confident model, a dead head (all logits equal) or a layer the
gradient does not reach produce such maps.
"""

from __future__ import annotations

from auditor.analysis.findings.registry import FindingRules, RuleContext, finding_rule
from auditor.results import Finding

#: share of a class's maps (one method) that are empty from which a finding is made
EMPTY_SHARE = 0.5
#: share of the PRIMARY method's maps from which the finding is high (the class's statistics
#: rest on almost no map)
EMPTY_HIGH_SHARE = 0.9


def _describe_empty(r: FindingRules, confidence: float) -> str:
    return (
        f"A class where at least {EMPTY_SHARE:.0%} of one method's maps are empty (status "
        f"zero_map, zero_cam, constant_activation, constant_cam, zero_gradient, nonfinite or "
        f"method_failed): its statistics rest on few or no maps. High when at least "
        f"{EMPTY_HIGH_SHARE:.0%} of the primary method's maps are empty."
    )


@finding_rule("empty_maps", describe=_describe_empty)
def empty_maps_rule(ctx: RuleContext) -> list[Finding]:
    """One finding per class and method whose share of empty maps is >= :data:`EMPTY_SHARE`:
    ``share = n_empty / n`` over the class's samples with finite logits."""
    findings: list[Finding] = []
    for name, c in ctx.classes.items():
        ci = int(c.index or 0)
        for method in ctx.methods:
            pair = ctx.samples.empty_maps.get(method)
            if pair is None:
                continue
            labels, empty = pair
            sel = labels == ci
            n = int(sel.sum())
            k = int(empty[sel].sum())
            if n == 0 or k / n < EMPTY_SHARE:
                continue
            high = method == ctx.primary and k / n >= EMPTY_HIGH_SHARE
            findings.append(
                Finding(
                    kind="empty_maps",
                    severity="high" if high else "medium",
                    title=f"{name!r}: most {method} maps are empty",
                    message=(
                        f"{k} of {n} {method} maps of this class ({k / n:.0%}) are zero, "
                        f"constant, non-finite or failed: its {method} statistics rest on "
                        f"{n - k} map(s). Try another method or target layer"
                    ),
                    cls=name,
                    evidence={"method": method, "n": n, "n_empty": k, "share": k / n},
                )
            )
    return findings
