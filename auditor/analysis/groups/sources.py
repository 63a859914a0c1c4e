"""Join the explanation subgroups with the group attributes: a shortcut gets a source.

A subgroup found from the maps (SpRAy clusters and evidence splits,
:mod:`auditor.analysis.spray`; findings ``subgroup_shortcut`` and ``strategy_cluster`` with
their ``members``) is *concentrated* in an attribute level when more of its members carry the
level than the class's base rate explains. For each subgroup, attribute and shown level:

* ``N`` = the class's samples (the subgroup is drawn from them), ``K`` = those in the level,
  ``n`` = the subgroup's members, ``k`` = members in the level;
* one-sided Fisher exact test (the hypergeometric tail; Fisher 1922): ``p = P(X >= k)``,
  ``X ~ Hypergeometric(N, K, n)`` (``scipy.stats.hypergeom.sf(k - 1, N, K, n)``);
* **Bonferroni** over every (subgroup, attribute, level) test of the run: ``p · m <= alpha``
  (``alpha = 1 - confidence``);
* and a margin fixed before measuring: the level holds at least :data:`MIN_SHARE` of the
  subgroup (a *concentration*, not merely an excess).

The most significant level per subgroup (one per attribute at most) is added to the finding:
"15 of the 15 images in this subgroup are from 'site = B' (the class: 15 of 30 ...)" and
``evidence["group_sources"]``. Privacy: a level below ``[report] min_group_size`` in the data,
or a count ``k`` below it, is never named. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from auditor.results import Finding

__all__ = ["MIN_SHARE", "SUBGROUP_KINDS", "concentration_tests", "subgroup_sources"]

MIN_SHARE = 0.5
"""A subgroup's source must hold at least this share of its members."""
SUBGROUP_KINDS = ("subgroup_shortcut", "strategy_cluster")
"""Findings that describe a subgroup of a class found from the maps."""


def _hypergeom_sf(k: int, n_pop: int, k_pop: int, n_draw: int) -> float:
    """``P(X >= k)`` for ``X ~ Hypergeometric(N = n_pop, K = k_pop, n = n_draw)``."""
    from scipy.stats import hypergeom

    return float(hypergeom.sf(k - 1, n_pop, k_pop, n_draw))


def concentration_tests(
    member: np.ndarray, levels: np.ndarray, shown: set[str], min_size: int
) -> list[dict[str, Any]]:
    """One test per shown level of one attribute within one class (rows = the class's
    samples; ``member`` bool, ``levels`` str): counts, shares and the one-sided p-value."""
    n_pop, n_draw = int(levels.size), int(member.sum())
    out = []
    for lev in sorted(set(levels.tolist()) & shown):
        inside = levels == lev
        k_pop, k = int(inside.sum()), int((inside & member).sum())
        if n_draw == 0 or k < min_size:
            continue
        out.append({
            "level": lev, "count": k, "size": n_draw, "class_count": k_pop,
            "class_size": n_pop, "share": k / n_draw, "base_rate": k_pop / n_pop,
            "p_value": _hypergeom_sf(k, n_pop, k_pop, n_draw),
        })  # fmt: skip
    return out


def subgroup_sources(
    findings: Sequence[Finding],
    frame: pd.DataFrame,
    attributes: Sequence[str],
    classes: Sequence[str],
    *,
    min_group_size: int,
    confidence: float,
) -> list[Finding]:
    """``findings`` with each subgroup finding's source added where one is found (module
    docstring); every other finding unchanged, in order."""
    shown = {}
    for a in attributes:
        counts = frame[f"group_{a}"].astype(str).value_counts()
        shown[a] = {str(k) for k, c in counts.items() if c >= min_group_size}
    ids = frame["id"].astype(str).to_numpy()
    label = frame["label"].to_numpy()
    tests: list[tuple[int, str, dict[str, Any]]] = []
    for fi, f in enumerate(findings):
        members = f.evidence.get("members") if f.kind in SUBGROUP_KINDS else None
        if not members or f.cls is None or f.cls not in classes:
            continue
        in_class = label == list(classes).index(f.cls)
        member = np.isin(ids[in_class], np.asarray([str(m) for m in members]))
        for a in attributes:
            levels = frame[f"group_{a}"].astype(str).to_numpy()[in_class]
            for t in concentration_tests(member, levels, shown.get(a, set()), min_group_size):
                tests.append((fi, a, t))
    m = len(tests)
    alpha = 1.0 - confidence
    best: dict[int, dict[str, dict[str, Any]]] = {}
    for fi, a, t in tests:
        t = {**t, "attribute": a, "p_adjusted": min(1.0, t["p_value"] * m), "n_tests": m}
        if t["p_adjusted"] > alpha or t["share"] < MIN_SHARE:
            continue
        cur = best.setdefault(fi, {}).get(a)
        if cur is None or (t["p_value"], -t["share"]) < (cur["p_value"], -cur["share"]):
            best[fi][a] = t
    out = list(findings)
    for fi, per_attr in best.items():
        out[fi] = _with_sources(out[fi], sorted(per_attr.values(), key=lambda t: t["p_value"]))
    return out


def _sentence(t: dict[str, Any]) -> str:
    return (
        f"{t['count']} of the {t['size']} images in this subgroup are from "
        f"'{t['attribute']} = {t['level']}' (the class: {t['class_count']} of "
        f"{t['class_size']}; one-sided Fisher exact test p = {t['p_value']:.2g}, "
        f"Bonferroni over {t['n_tests']} tests)"
    )


def _with_sources(f: Finding, sources: list[dict[str, Any]]) -> Finding:
    evidence = dict(f.evidence)
    evidence["group_sources"] = sources
    text = "; ".join(_sentence(t) for t in sources)
    return replace(
        f, message=f"{f.message} Source: {text}: the subgroup has a source.", evidence=evidence
    )
