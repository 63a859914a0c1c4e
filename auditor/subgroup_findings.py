"""Finding rules on subgroups and on background sufficiency (one function per rule).

* :func:`subgroup_findings` turns the tested clusters of :mod:`auditor.analysis.spray.subgroups`
  into findings: ``subgroup_shortcut`` ("N of M '<class>' images are predicted from
  <where>", high or medium) and ``strategy_cluster`` (a cluster that separates from its class
  on some statistic but does not look elsewhere, or is not needed: low).
* :func:`sufficiency_findings`: ``background_sufficiency``: the background alone (object
  removed, Xiao, Engstrom, Ilyas & Madry 2021, "Noise or Signal: The Role of Image
  Backgrounds in Object Recognition", ICLR, who report only-BG accuracy for this reason) is
  predicted as the class for the class's images far more often than for other classes'
  images. With :math:`p_c = P(\\hat y_{bg} = c \\mid y = c)` and
  :math:`p_o = P(\\hat y_{bg} = c \\mid y \\ne c)` (the class's baseline: how often any
  background is called ``c``), the rule fires when the Newcombe interval of
  :math:`p_c - p_o` has its lower bound above ``margin`` and the Wilson lower bound of
  :math:`p_c` is above chance (1 / number of classes). High when the lower bound of the
  difference is above ``high_margin``.

Both return :class:`auditor.results.Finding` objects. Every finding carries ``support`` (in
``Finding.extra``, written beside ``evidence`` in summary.json): the statistic, its estimate and
interval, and the baseline its interval excludes, so the report can say which number the
finding rests on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from auditor.format import fmt_interval
from auditor.results import ClassClusters, Finding, SubgroupDetail, SubgroupTest
from auditor.stats import two_proportion_diff_ci, wilson_interval

__all__ = ["STAT_LABELS", "SufficiencyRules", "subgroup_findings", "sufficiency_findings"]

#: Readable names of the subgroup statistics.
STAT_LABELS: dict[str, str] = {
    "background_focus": "background focus",
    "border_focus": "border focus",
    "entropy": "map entropy",
    "peak_distance": "peak distance from the centre",
    "only_fg_drop": "accuracy lost without the background",
    "only_bg_hit": "background alone predicted as the class",
    "correct": "accuracy",
}


def stat_label(key: str) -> str:
    """The readable name of a subgroup statistic (``region:<cell>``: the share of the map in
    that outer cell of the 3 x 3 grid; :mod:`auditor.analysis.spray.evidence_split`)."""
    if key.startswith("region:"):
        return f"share of the map in the {key.split(':', 1)[1]} cell"
    return STAT_LABELS.get(key, key)


@dataclass(frozen=True)
class SufficiencyRules:
    """Margins of the background-sufficiency rule."""

    margin: float = 0.25
    high_margin: float = 0.5
    max_examples: int = 8

    def describe(self, confidence: float) -> str:
        return (
            "The share of a class's images whose background alone (object removed) is "
            "predicted as the class, minus the share of other classes' backgrounds predicted "
            f"as it (the baseline): the {confidence:.0%} Newcombe interval of the difference "
            f"must lie above {self.margin:.2f} and the share's Wilson lower bound above "
            f"chance (1 / number of classes). High severity above {self.high_margin:.2f}."
        )


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.0%}"


def _finding(
    name: str,
    kind: str,
    severity: str,
    title: str,
    message: str,
    evidence: Mapping[str, Any],
    support: Mapping[str, Any],
    examples: Sequence[str],
) -> Finding:
    return Finding(
        cls=name,
        kind=kind,
        severity=severity,
        title=title,
        message=message,
        evidence=evidence,
        examples=tuple(examples),
        extra={"support": dict(support)} if support else {},
    )


def subgroup_findings(
    clusters: Mapping[str, ClassClusters | Mapping[str, Any]] | None,
) -> list[Finding]:
    """Findings from the clusters blocks (typed, or ``summary["clusters"]`` JSON) that carry
    tested ``subgroups``."""
    out: list[Finding] = []
    for name, res in (clusters or {}).items():
        cc = res if isinstance(res, ClassClusters) else ClassClusters.from_json(res)
        for sg in cc.subgroups or ():
            f = _subgroup_finding(name, sg)
            if f is not None:
                out.append(f)
    return out


def _subgroup_finding(name: str, sg: SubgroupDetail) -> Finding | None:
    """The finding of one tested subgroup (None when it carries no test to state)."""
    key = sg.elsewhere_statistic or (sg.separating or (None,))[0]
    t = sg.tests.get(key) if key else None
    if key is None or t is None:
        return None
    support = {
        "statistic": key,
        "label": stat_label(key),
        "estimate": t.diff,
        "ci": list(t.ci),
        "baseline": t.baseline,
        "against": "the rest of the class",
        "subgroup": t.subgroup,
        "rest": t.rest,
        "confidence": t.confidence,
    }
    needed = sg.needed_statistic
    nt = sg.tests.get(needed) if needed else None
    evidence = _subgroup_evidence(sg, key, t, nt)
    split = sg.extra.get("split")
    n, m, where = sg.size, sg.class_size, sg.where
    lo, hi = t.ci
    stat_txt = (
        f"{stat_label(key)} {_pct(t.subgroup)} against {_pct(t.rest)} "
        f"for the rest of the class (difference {_pct(t.diff)}, interval "
        f"{_pct(lo)} to {_pct(hi)})"
    )
    if sg.elsewhere and sg.severity in ("high", "medium"):
        if sg.needed and needed == "only_bg_hit":
            iv_txt = (
                f" With the object removed, the background alone is still called "
                f"'{name}' for {_pct(evidence['only_bg_rate'])} of them (the rest: "
                f"{_pct(nt.rest if nt else None)})."
            )
        elif sg.needed:
            iv_txt = " Removing the background breaks their predictions more than the rest's."
        else:
            iv_txt = " No intervention could test it (no object masks)."
        return _finding(
            name,
            "subgroup_shortcut",
            sg.severity,
            f"{n} of {m} '{name}' images are predicted from the {where}",
            (
                f"A subgroup of {n} of the {m} '{name}' images puts "
                f"{_pct(sg.region_share)} of its CAM mass in the {where} "
                f"(the rest of the class: {_pct(sg.rest_region_share)}); "
                f"{stat_txt}." + iv_txt
            ),
            evidence,
            support,
            sg.exemplars,
        )
    location_only = isinstance(split, Mapping) and bool(split.get("location_only"))
    # an evidence split is not one of the map clusters (the report's cluster list may show
    # "one group of maps" for the class): say which it is
    group = "A group" if isinstance(split, Mapping) else "A cluster"
    message = f"{group} of {n} of the {m} '{name}' images differs from the rest: {stat_txt}."
    if sg.elsewhere:
        message += " The interventions show the model does not need what it looks at there."
    if location_only:
        message += (
            " A mixture in where the maps lie, not yet shown to be used: the transplant tests it."
        )
    return _finding(
        name,
        "strategy_cluster",
        # a location mixture nothing else separates: a candidate for the transplant, not yet
        # a finding (info; evidence split rule 5)
        "info" if location_only else "low",
        f"'{name}': a distinct explanation strategy ({n} of {m})",
        message,
        evidence,
        support,
        sg.exemplars,
    )


def _subgroup_evidence(
    sg: SubgroupDetail, key: str, t: SubgroupTest, nt: SubgroupTest | None
) -> dict[str, Any]:
    """The evidence dict of a subgroup's finding (summary.json ``findings[].evidence``)."""
    evidence: dict[str, Any] = {
        "cluster": sg.cluster,
        "size": sg.size,
        "class_size": sg.class_size,
        "where": sg.where,
        "region_share": sg.region_share,
        "rest_region_share": sg.rest_region_share,
        "border_share": sg.border_share,
        "separating": list(sg.separating),
        "statistic": key,
        "subgroup": t.subgroup,
        "rest": t.rest,
        "diff": t.diff,
        "ci": list(t.ci),
        "only_bg_rate": sg.only_bg_rate[0],
        "only_bg_rate_ci": list(sg.only_bg_rate[1:]),
        "intervention": sg.needed_statistic,
        "intervention_diff": nt.diff if nt else None,
        "intervention_ci": list(nt.ci) if nt else None,
        "members": list(sg.members),
    }
    split = sg.extra.get("split")
    if isinstance(split, Mapping):
        evidence["split"] = dict(split)
    return evidence


def sufficiency_findings(
    labels: np.ndarray,
    only_bg_pred: np.ndarray,
    ids: Sequence[str],
    classes: Sequence[str],
    *,
    confidence: float = 0.95,
    rules: SufficiencyRules | None = None,
) -> list[Finding]:
    """``background_sufficiency`` findings (module docstring); ``only_bg_pred`` -1 = not run."""
    rules = rules or SufficiencyRules()
    lab = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(only_bg_pred, dtype=np.int64)
    if lab.shape != pred.shape or lab.shape != (len(ids),):
        raise ValueError(
            f"`labels`, `only_bg_pred` and `ids` must have the same length, got "
            f"{lab.shape}, {pred.shape}, {len(ids)}"
        )
    ran = pred >= 0
    k_cls = len(classes)
    out: list[Finding] = []
    if k_cls < 2 or not ran.any():
        return out
    for ci, name in enumerate(classes):
        own = ran & (lab == ci)
        other = ran & (lab != ci)
        n_c, n_o = int(own.sum()), int(other.sum())
        if n_c < 5 or n_o < 5:
            continue
        hit = own & (pred == ci)
        k_c, k_o = int(hit.sum()), int((other & (pred == ci)).sum())
        d = two_proportion_diff_ci(k_c, n_c, k_o, n_o, confidence=confidence)
        w = wilson_interval(k_c, n_c, confidence=confidence)
        if not (d.low > rules.margin and w.low > 1.0 / k_cls):
            continue
        examples = [str(ids[int(j)]) for j in np.flatnonzero(hit)[: rules.max_examples]]
        p_c, p_o = k_c / n_c, k_o / n_o
        out.append(
            _finding(
                name,
                "background_sufficiency",
                "high" if d.low > rules.high_margin else "medium",
                f"'{name}': the background alone is predicted as '{name}'",
                (
                    f"With the object removed, {k_c} of {n_c} '{name}' images "
                    f"({p_c:.0%}, interval {fmt_interval(w.low, w.high, sep=' to ')}) are still "
                    f"classified as '{name}', against {p_o:.0%} of other classes' backgrounds: the "
                    f"background carries the class (difference {d.estimate:.0%}, interval "
                    f"{fmt_interval(d.low, d.high, sep=' to ')})."
                ),
                {
                    "only_bg_accuracy": p_c,
                    "only_bg_accuracy_ci": [w.low, w.high],
                    "baseline": p_o,
                    "diff": d.estimate,
                    "ci": [d.low, d.high],
                    "n": n_c,
                    "n_other": n_o,
                    "chance": 1.0 / k_cls,
                },
                {
                    "statistic": "only_bg_accuracy",
                    "label": "background alone predicted as the class",
                    "estimate": d.estimate,
                    "ci": [d.low, d.high],
                    "baseline": 0.0,
                    "against": "other classes' backgrounds predicted as this class",
                    "subgroup": p_c,
                    "rest": p_o,
                    "confidence": confidence,
                },
                examples,
            )
        )
    return out
