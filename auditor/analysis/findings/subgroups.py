"""Rules on SpRAy's subgroups and on background sufficiency: ``subgroup_shortcut``,
``strategy_cluster`` (:mod:`auditor.subgroup_findings` turns the tested clusters into
findings) and ``background_sufficiency`` (Xiao et al. 2021, only-background).
"""

from __future__ import annotations

from auditor.analysis.findings.registry import FindingRules, RuleContext, collapsed, finding_rule
from auditor.results import Finding


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
    if p.only_bg_pred is None or len(p.ids) != len(p.labels) or collapsed(ctx, "only_bg"):
        return []
    return sufficiency_findings(
        p.labels, p.only_bg_pred, p.ids, list(ctx.classes), confidence=ctx.confidence
    )
