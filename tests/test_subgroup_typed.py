"""Subgroup details are typed (SubgroupDetail, SubgroupTest) and summary.json is unchanged."""

from __future__ import annotations

import json

from auditor.format import finite_pair
from auditor.results import ClassClusters, SubgroupDetail, SubgroupTest

TEST = {
    "name": "background_focus",
    "subgroup": 0.8,
    "rest": 0.3,
    "diff": 0.5,
    "ci": [0.4, 0.6],
    "n_subgroup": 7,
    "n_rest": 30,
    "method": "bootstrap",
    "confidence": 0.95,
    "margin": 0.1,
    "baseline": 0,
    "separates": True,
    "direction": "higher",
}
SUBGROUP = {
    "cluster": 2,
    "size": 7,
    "class_size": 37,
    "members": ["a", "b"],
    "exemplars": ["a"],
    "rest_exemplars": ["c"],
    "severity": "high",
    "separating": ["background_focus"],
    "elsewhere": True,
    "elsewhere_statistic": "background_focus",
    "needed": True,
    "needed_statistic": "only_bg_hit",
    "interventions": True,
    "where": "background",
    "region_share": 0.7,
    "rest_region_share": 0.2,
    "border_share": 0.1,
    "only_bg_rate": [0.5, 0.2, None],
    "tests": {"background_focus": TEST},
    "gallery": [],
}
BLOCK = {
    "k": 3,
    "eigengap": 0.4,
    "clusters": [
        {"id": 2, "size": 7, "background_focus": 0.8, "exemplars": ["a"], "outlier": True,
         "gallery": [], "separates": ["background_focus"]}
    ],
    "k_rule": "eigengap",
    "stability": {"3": 0.9},
    "confidence": 0.95,
    "subgroups": [SUBGROUP],
}  # fmt: skip


def test_subgroups_are_typed_and_round_trip_key_for_key() -> None:
    cc = ClassClusters.from_json(json.loads(json.dumps(BLOCK)))
    assert cc.subgroups is not None and isinstance(cc.subgroups[0], SubgroupDetail)
    sg = cc.subgroups[0]
    assert sg.severity == "high" and sg.where == "background" and sg.needed
    assert sg.only_bg_rate == (0.5, 0.2, None)
    test = sg.tests["background_focus"]
    assert isinstance(test, SubgroupTest) and test.ci == (0.4, 0.6) and test.separates
    out = cc.to_json()
    assert out == BLOCK
    assert json.dumps(out) == json.dumps(BLOCK)  # same order, ints stay ints
    assert "subgroups" not in cc.extra


def test_a_block_without_subgroups_writes_none() -> None:
    block = {k: v for k, v in BLOCK.items() if k != "subgroups"}
    cc = ClassClusters.from_json(block)
    assert cc.subgroups is None and "subgroups" not in cc.to_json()
    assert ClassClusters.from_json({**block, "subgroups": []}).to_json()["subgroups"] == []


def test_finite_pair() -> None:
    assert finite_pair([1, float("nan")]) == [1.0, None]
    assert finite_pair(None) == [None, None] and finite_pair((1, 2, 3)) == [None, None]
