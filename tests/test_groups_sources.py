"""The explanation subgroups joined with the group attributes (issue 24): the one-sided Fisher
exact test against hand-computed and scipy values, Bonferroni, the share margin, privacy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from auditor.analysis.groups.sources import MIN_SHARE, concentration_tests, subgroup_sources
from auditor.results import Finding


def _frame(sites: list[str], labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(len(sites))], "label": labels, "group_site": sites,
    })  # fmt: skip


def _finding(members: list[str], cls: str = "a", kind: str = "subgroup_shortcut") -> Finding:
    return Finding(kind=kind, severity="high", title="t", message="A subgroup.", cls=cls,
                   evidence={"members": members})  # fmt: skip


def test_fisher_p_hand_computed_and_scipy() -> None:
    # class of 30: 15 from B; the subgroup = those 15: p = 1 / C(30, 15)
    levels = np.array(["A"] * 15 + ["B"] * 15)
    member = levels == "B"
    (a, b) = concentration_tests(member, levels, {"A", "B"}, min_size=0)
    assert a["level"] == "A" and a["count"] == 0 and a["p_value"] == pytest.approx(1.0)
    assert b["count"] == 15 and b["share"] == 1.0 and b["base_rate"] == 0.5
    assert b["p_value"] == pytest.approx(1 / math.comb(30, 15))
    # 18 of a 20-member subgroup from B, the class 40 of 100 from B: scipy's one-sided Fisher
    levels = np.array(["B"] * 40 + ["A"] * 60)
    member = np.zeros(100, bool)
    member[:18] = True
    member[40:42] = True
    (_, b) = concentration_tests(member, levels, {"A", "B"}, min_size=0)
    table = [[18, 2], [40 - 18, 60 - 2]]
    assert b["p_value"] == pytest.approx(fisher_exact(table, alternative="greater")[1])


def test_source_named_with_counts_and_evidence() -> None:
    f = _frame(["A"] * 20 + ["B"] * 20 + ["A"] * 40, [0] * 40 + [1] * 40)
    members = [f"s{i}" for i in range(20, 40)]  # class a's site-B images
    other = _finding(["s40", "s41"], cls="b", kind="strategy_cluster")
    plain = Finding(kind="background_focus", severity="high", title="t", message="m", cls="a")
    out = subgroup_sources([_finding(members), other, plain], f, ["site"], ["a", "b"],
                           min_group_size=10, confidence=0.95)  # fmt: skip
    assert out[2] == plain and out[1] == other  # no source for a 2-member cluster
    msg = out[0].message
    assert "20 of the 20 images in this subgroup are from 'site = B' (the class: 20 of 40" in msg
    (src,) = out[0].evidence["group_sources"]
    assert src["attribute"] == "site" and src["level"] == "B"
    assert src["p_value"] == pytest.approx(1 / math.comb(40, 20))
    assert src["p_adjusted"] == pytest.approx(min(1.0, src["p_value"] * src["n_tests"]))
    assert out[0].to_json()["evidence"]["group_sources"][0]["level"] == "B"


def test_no_source_at_the_base_rate_or_below_the_margin() -> None:
    rng = np.random.default_rng(0)
    sites = rng.choice(["A", "B"], 200).tolist()
    f = _frame(sites, [0] * 200)
    members = [f"s{i}" for i in rng.choice(200, 60, replace=False)]  # random: base rate
    (out,) = subgroup_sources([_finding(members)], f, ["site"], ["a"], min_group_size=10,
                              confidence=0.95)  # fmt: skip
    assert "group_sources" not in out.evidence and "Source" not in out.message
    # significant excess but not a concentration: 30 % of members from a 5 % level
    sites = ["C"] * 30 + ["A"] * 970
    f = _frame(sites, [0] * 1000)
    members = [f"s{i}" for i in range(30)] + [f"s{i}" for i in range(30, 100)]
    (out,) = subgroup_sources([_finding(members)], f, ["site"], ["a"], min_group_size=10,
                              confidence=0.95)  # fmt: skip
    assert 30 / 100 < MIN_SHARE and "group_sources" not in out.evidence


def test_small_levels_and_small_counts_never_named() -> None:
    # site C has 8 samples in the data (< min_group_size 10): never named although all 8 are
    # members of the subgroup
    f = _frame(["C"] * 8 + ["A"] * 92, [0] * 100)
    (out,) = subgroup_sources([_finding([f"s{i}" for i in range(8)])], f, ["site"], ["a"],
                              min_group_size=10, confidence=0.95)  # fmt: skip
    assert "group_sources" not in out.evidence and "'site = C'" not in out.message
    # site B is large, but only 9 members carry it (< 10): not named either
    f = _frame(["B"] * 50 + ["A"] * 950, [0] * 1000)
    (out,) = subgroup_sources([_finding([f"s{i}" for i in range(9)])], f, ["site"], ["a"],
                              min_group_size=10, confidence=0.95)  # fmt: skip
    assert "group_sources" not in out.evidence
