"""Issue 22 rules: fill collapse, evidence split (numbers checked by hand on small tables)."""

from __future__ import annotations

import numpy as np

from auditor.analysis.fill_collapse import only_bg_collapse, only_fg_collapse
from auditor.analysis.spray.evidence_split import otsu_threshold
from auditor.analysis.spray.subgroups import SubgroupRules, analyse_class


def test_only_bg_collapse_every_class_to_one_prediction() -> None:
    labels = np.repeat([0, 1, 2], 10)
    preds = labels.copy()  # unedited: each class its own, so 10/30 are class 2
    collapsed = np.full(30, 2)
    res = only_bg_collapse(labels, preds, collapsed, 3)
    # 30/30 edited images are class 2; Wilson low (95%) of 30/30 = 0.886 > 1/3 + 0.25
    assert res.collapsed
    assert res.evidence["k"] == 30 and abs(res.evidence["unedited_share"] - 1 / 3) < 1e-12
    own = only_bg_collapse(labels, preds, labels.copy(), 3)  # each background its own class
    assert not own.collapsed


def test_only_fg_collapse_and_not() -> None:
    labels = np.repeat([0, 1, 2], 20)
    correct = np.ones(60)
    fg = np.where(labels == 2, 1.0, 0.0)  # only class 2 survives: 0/20 elsewhere
    assert only_fg_collapse(labels, correct, fg, 3).collapsed
    # a real reliance of one class: the other two keep their accuracy
    fg2 = np.where(labels == 0, 0.0, 1.0)
    assert not only_fg_collapse(labels, correct, fg2, 3).collapsed


def test_otsu_threshold_by_hand() -> None:
    # values 0,0,0,1,1: best cut between 0 and 1 -> midpoint 0.5
    assert otsu_threshold(np.array([0.0, 0.0, 0.0, 1.0, 1.0])) == 0.5
    assert otsu_threshold(np.array([1.0, 1.0])) is None


def _maps(tagged: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.gamma(0.5, 1.0, (40, 7, 7))
    maps /= maps.sum((1, 2), keepdims=True)
    if tagged:
        maps[:12] *= 0.5
        maps[:12, 6, 6] += 0.5
    band = np.zeros((7, 7), bool)
    band[0, :] = band[-1, :] = band[:, 0] = band[:, -1] = True
    return maps, (maps * band).sum((1, 2))


def test_evidence_split_names_members_when_k_is_one() -> None:
    maps, border = _maps(True)
    res = analyse_class(
        maps,
        {"border_focus": border},
        n_classes=4,
        border_chance_share=24 / 49,
        n_boot=300,
        rules=SubgroupRules(max_k=1),
    )
    assert res.k == 1
    assert len(res.subgroups) == 1
    sg = res.subgroups[0]
    assert sg.split is not None and sg.split["statistic"] == "region:bottom-right corner"
    assert sorted(map(int, sg.members)) == list(range(12))
    assert sg.severity == "medium"  # looks elsewhere (border), no intervention to test it
    clean, border_c = _maps(False)
    res_c = analyse_class(
        clean,
        {"border_focus": border_c},
        n_classes=4,
        border_chance_share=24 / 49,
        n_boot=300,
        rules=SubgroupRules(max_k=1),
    )
    assert res_c.subgroups == ()


def test_absolute_background_severity_weighs_both_tests() -> None:
    """Both tests: high; one: medium; the background test alone while the map is on the object
    (lift interval above uniform, the fill's silhouette): low, never a medium false alarm."""
    from auditor.analysis.absolute_rules import _severity

    def ev(lift_fires: bool, bg_fires: bool, lift_ci: tuple[float, float]) -> dict:
        return {"lift_fires": lift_fires, "only_bg_fires": bg_fires, "lift_max": 1.0,
                "energy_lift_ci": list(lift_ci)}  # fmt: skip

    assert _severity(ev(True, True, (0.25, 0.29))) == "high"  # the demo's shortcut class
    assert _severity(ev(True, False, (0.5, 0.9))) == "medium"
    assert _severity(ev(False, True, (0.8, 1.4))) == "medium"  # the map is not shown on-object
    e = ev(False, True, (4.65, 5.25))  # the demo's clean 'circle': maps on the object
    assert _severity(e) == "low" and e["silhouette_ambiguous"]
