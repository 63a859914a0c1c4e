"""Group audit units (issue 24): config, binning, statistics against hand-computed values and
scikit-learn, disparity tests, small-cell suppression, gates, JSON round trip, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score

from auditor.analysis.groups import analyse_groups, group_findings
from auditor.analysis.groups.gates import evaluate_group_gates
from auditor.analysis.groups.stats import ece, ece_ci, mean_diff_ci
from auditor.config import parse_config
from auditor.data.config import parse_data_section
from auditor.data.groups import bin_values, read_groups
from auditor.errors import ConfigError, DataError
from auditor.group_results import ClassCell, GroupsResult, GroupStat
from auditor.report.groups import forest_plot, groups_context, groups_frame


# -- config and reading -------------------------------------------------------------------
def _manifest(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_groups_read_from_csv_with_bins_and_missing(tmp_path: Path) -> None:
    m = _manifest(
        tmp_path,
        "image,label,Site,age\na.png,x,A,30\nb.png,x,B,\nc.png,y,,70\nc.png,y,B,70\nd.png,y,A,120\n",
    )
    cfg = parse_data_section(
        {"manifest": str(m), "groups": ["site", "age"], "bins": {"age": [0, 40, 65, 120]}},
        tmp_path,
        "t.toml",
    )
    g = read_groups(cfg)
    assert g is not None
    # repeated image rows (boxes): the first row counts
    assert g.column("site", ["a.png", "b.png", "c.png", "zz"]) == ["A", "B", "missing", "missing"]
    assert g.column("age", ["a.png", "b.png", "c.png", "d.png"]) == [
        "[0, 40)",
        "missing",
        "[65, 120]",
        "[65, 120]",
    ]


def test_misspelled_group_names_file_and_suggestion(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "image,label,site\na.png,x,A\n")
    cfg = parse_data_section({"manifest": str(m), "groups": ["stie"]}, tmp_path, "t.toml")
    with pytest.raises(DataError, match=r"m\.csv.*'stie' not found \(did you mean 'site'\?\)"):
        read_groups(cfg)


def test_groups_file_for_imagefolder_and_jsonl_coco(tmp_path: Path) -> None:
    side = _manifest(tmp_path, "id,scanner\ncat/1.png,S1\n", "side.csv")
    (tmp_path / "imgs").mkdir()
    cfg = parse_data_section(
        {"format": "imagefolder", "root": str(tmp_path / "imgs"), "groups": ["scanner"],
         "groups_file": str(side)}, tmp_path, "t.toml",
    )  # fmt: skip
    assert read_groups(cfg).column("scanner", ["cat/1.png", "x"]) == ["S1", "missing"]
    no_file = parse_data_section(
        {"format": "imagefolder", "root": str(tmp_path / "imgs"), "groups": ["scanner"]},
        tmp_path,
        "t.toml",
    )
    with pytest.raises(DataError, match="groups_file"):
        read_groups(no_file)
    lines = '{"image": "a.png", "label": "x", "sex": "F"}\n{"image": "b.png", "label": "x"}\n'
    j = _manifest(tmp_path, lines, "m.jsonl")
    cj = parse_data_section({"manifest": str(j), "groups": ["sex"]}, tmp_path, "t.toml")
    assert read_groups(cj).column("sex", ["a.png", "b.png"]) == ["F", "missing"]
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "site": "B"}],
                                "annotations": [], "categories": []}))  # fmt: skip
    cc = parse_data_section(
        {"format": "coco", "annotations": str(coco), "root": str(tmp_path), "groups": ["site"]},
        tmp_path,
        "t.toml",
    )
    assert read_groups(cc).column("site", ["a.png"]) == ["B"]


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"groups": "site"}, "list of column names"),
        ({"groups": ["site", "Site"]}, "duplicate"),
        ({"groups": ["label"]}, "manifest column"),
        ({"groups": ["age"], "bins": {"aeg": [0, 1]}}, "did you mean 'age'"),
        ({"groups": ["age"], "bins": {"age": [3, 1]}}, "strictly increasing"),
        ({"groups": ["age"], "bins": {"age": "deciles"}}, "quartiles"),
    ],
)
def test_bad_group_config(tmp_path: Path, table: dict, match: str) -> None:
    m = _manifest(tmp_path, "image,label\na.png,x\n")
    with pytest.raises(ConfigError, match=match):
        parse_data_section({"manifest": str(m), **table}, tmp_path, "t.toml")


def test_group_gate_and_report_keys_validated(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "image,label,site\na.png,x,A\n")
    base = {"model": {"factory": "x:y"}, "data": {"manifest": str(m), "groups": ["site"]}}
    cfg = parse_config(
        {**base, "gates": {"min_group_accuracy": {"site": 0.8, "site=B": 0.7}},
         "report": {"min_group_size": 5}}, base_dir=tmp_path,
    )  # fmt: skip
    assert cfg.report.min_group_size == 5
    assert [(r.name, r.group, r.min) for r in cfg.gates if r.scope == "group"] == [
        ("min_group_accuracy[site]", "site", 0.8),
        ("min_group_accuracy[site=B]", "site=B", 0.7),
    ]
    with pytest.raises(ConfigError, match="'stie' is not one of"):
        parse_config(
            {**base, "gates": {"max_group_accuracy_gap": {"stie": 0.1}}}, base_dir=tmp_path
        )
    with pytest.raises(ConfigError, match="min_group_size"):
        parse_config({**base, "report": {"min_group_size": 0}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs \\[data\\] groups"):
        parse_config(
            {"model": base["model"], "data": {"manifest": str(m)},
             "gates": {"min_group_accuracy": 0.5}}, base_dir=tmp_path,
        )  # fmt: skip


def test_bin_values_quartiles_and_text() -> None:
    # numpy linear quartiles of 1..8: 1, 2.75, 4.5, 6.25, 8
    levels = bin_values([1, 2, 3, 4, 5, 6, 7, 8, None], "quartiles")
    assert levels == [
        "[1, 2.75)", "[1, 2.75)", "[2.75, 4.5)", "[2.75, 4.5)", "[4.5, 6.25)", "[4.5, 6.25)",
        "[6.25, 8]", "[6.25, 8]", "missing",
    ]  # fmt: skip
    assert bin_values(["1", "2", "2"], None) == ["1", "2", "2"]  # few numbers: categorical
    assert bin_values([-1, 50, 200, "x"], [0, 100]) == ["< 0", "[0, 100]", "> 100", "not a number"]


# -- statistics -------------------------------------------------------------------------------
def test_ece_hand_computed() -> None:
    # bins of width 0.1: (0.8, 0.9]: conf 0.9, 0.85 -> acc 1/2, mean conf 0.875, gap 0.375
    # (0.2, 0.3]: conf 0.3 -> acc 0, gap 0.3;  (0.9, 1]: 1.0 -> acc 1, gap 0
    conf = np.array([0.9, 0.85, 0.3, 1.0])
    correct = np.array([1, 0, 0, 1])
    assert ece(conf, correct) == pytest.approx((2 * 0.375 + 0.3 + 0) / 4)
    iv = ece_ci(conf, correct, level=0.95, n_boot=200, seed=0)
    assert iv.low is not None and iv.high is not None and iv.low <= iv.value <= iv.high
    assert math.isnan(ece(np.array([np.nan]), np.array([1])))


def test_welch_interval_hand_computed() -> None:
    d = mean_diff_ci(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.0, 1.0]), 0.95)
    # diff = 2 - 0.5 = 1.5; se = sqrt(1/3 + (1/3)/4) = sqrt(5/12)
    se = math.sqrt(5 / 12)
    assert d.value == pytest.approx(1.5)
    assert d.low == pytest.approx(1.5 - 1.959964 * se, abs=1e-5)


def _frame(n_a: int, n_b: int, acc_a: float, acc_b: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    label = rng.integers(0, 2, n)
    correct = np.r_[np.arange(n_a) < round(acc_a * n_a), np.arange(n_b) < round(acc_b * n_b)]
    pred = np.where(correct, label, 1 - label)
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "label": label, "pred": pred, "correct": correct,
        "pred_confidence": rng.uniform(0.5, 1.0, n),
        "background_focus": np.r_[rng.uniform(0.2, 0.4, n_a), rng.uniform(0.2, 0.4, n_b)],
        "group_site": ["A"] * n_a + ["B"] * n_b,
    })  # fmt: skip


def test_accuracy_wilson_and_class_cells_against_sklearn() -> None:
    f = _frame(100, 60, 0.9, 0.6)
    res = analyse_groups(f, ["site"], ["neg", "pos"], n_boot=200)
    a = res.attribute("site")
    b = a.level("B")
    assert b.n == 60 and b.accuracy.value == pytest.approx(0.6)
    # Wilson 36/60 at 95 %: centre (0.6 + z²/120)/(1 + z²/60)
    z = 1.959963984540054
    centre = (0.6 + z * z / 120) / (1 + z * z / 60)
    half = z * math.sqrt(0.24 / 60 + z * z / (4 * 3600)) / (1 + z * z / 60)
    assert (b.accuracy.low, b.accuracy.high) == pytest.approx((centre - half, centre + half))
    sub = f[f.group_site == "B"]
    for cell in (c for c in a.classes if c.level == "B"):
        c = ["neg", "pos"].index(cell.cls)
        sens = recall_score(sub.label == c, sub.pred == c)
        spec = recall_score(sub.label != c, sub.pred != c)
        assert cell.sensitivity.value == pytest.approx(sens)
        assert cell.specificity.value == pytest.approx(spec)
    # B is worse than A by 0.3: flagged, named; A silent
    assert b.flagged and not a.level("A").flagged and a.worst == "B"
    assert res.n_tests == 4 and res.adjustment == "bonferroni"
    assert a.largest_gap.value == pytest.approx(0.3)
    (finding,) = group_findings(res)
    assert finding.message.startswith("'site = B' (n = 60): accuracy 0.60 [")
    assert "vs 0.90 for the rest" in finding.message


def test_no_difference_stays_silent() -> None:
    res = analyse_groups(_frame(100, 100, 0.8, 0.78), ["site"], ["neg", "pos"], n_boot=200)
    assert not group_findings(res)
    assert not any(g.flagged for g in res.attributes[0].levels)


def test_small_groups_suppressed_never_named_or_gated() -> None:
    f = _frame(100, 6, 0.9, 0.0)  # site B: 6 samples, all wrong
    res = analyse_groups(f, ["site"], ["neg", "pos"], min_group_size=10, n_boot=200)
    b = res.attribute("site").level("B")
    assert b.suppressed and b.accuracy.value is None
    assert not group_findings(res)
    text = json.dumps(res.to_json())
    assert '"level": "B", "n": null, "suppressed": true}' in text
    # A's test against a "rest" of 6 samples is not run either (it would reveal B)
    assert res.attribute("site").level("A").accuracy_vs_rest.value is None
    from auditor.config import GateRule

    rules = [
        GateRule(name="g1", quantity="group_accuracy", scope="group", min=0.5, group="site=B"),
        GateRule(name="g2", quantity="group_accuracy", scope="group", min=0.5),
    ]
    r1, r2 = evaluate_group_gates(res, rules)
    assert not r1.passed and r1.note == "group below min_group_size"
    assert r2.passed and r2.value == pytest.approx(0.9)  # B is not gated
    ctx = groups_context({"groups": res.to_json()})
    row = next(r for r in ctx["attributes"][0]["rows"] if r["level"] == "B")
    assert row["suppressed"] and row["n"] is None
    frame = groups_frame({"groups": res.to_json()})
    assert math.isnan(frame.set_index("level").loc["B", "accuracy"])


def test_group_gates_values() -> None:
    from auditor.config import GateRule

    res = analyse_groups(_frame(100, 60, 0.9, 0.6), ["site"], ["neg", "pos"], n_boot=200)
    rules = [
        GateRule(name="a", quantity="group_accuracy", scope="group", min=0.7),
        GateRule(name="b", quantity="group_accuracy_gap", scope="group", max=0.2, group="site"),
        GateRule(name="c", quantity="group_accuracy_gap", scope="group", max=0.5, group="site=B"),
        GateRule(name="d", quantity="group_background_focus_gap", scope="group", max=0.5),
    ]
    got = {r.rule: r for r in evaluate_group_gates(res, rules)}
    assert got["a"].value == pytest.approx(0.6) and not got["a"].passed
    assert got["b"].value == pytest.approx(0.3) and not got["b"].passed
    assert got["c"].value == pytest.approx(0.3) and got["c"].passed
    assert got["d"].passed
    assert evaluate_group_gates(None, rules[:1])[0].passed is False


def test_json_round_trip_and_forest_plot() -> None:
    res = analyse_groups(_frame(100, 60, 0.9, 0.6), ["site"], ["neg", "pos"], n_boot=200)
    back = GroupsResult.from_json(json.loads(json.dumps(res.to_json())))
    assert back.to_json() == res.to_json()
    png = forest_plot(["a", "b"], [0.9, 0.6], [0.8, 0.5], [0.95, 0.7], overall=0.8, worst=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="labels"):
        forest_plot([], [], [], [], overall=None, worst=None)


#: a ``groups`` block with suppressed levels and class cells, as the hand-written pairs (before
#: the codec, issue 21) wrote it: ``dumps_json`` bytes, key order included
_SUPPRESSED_BLOCK = {
    "overall_accuracy": 0.75,
    "overall_background_focus": None,
    "min_group_size": 5,
    "confidence": 0.9,
    "adjustment": "holm",
    "n_tests": 4,
    "accuracy_margin": 0.05,
    "background_focus_margin": 0.1,
    "attributes": [
        {
            "name": "site",
            "levels": [
                {
                    "level": "A",
                    "n": 12,
                    "suppressed": False,
                    **{
                        k: {"value": 0.5, "ci_low": 0.25, "ci_high": None}
                        for k in (
                            "accuracy",
                            "background_focus",
                            "energy_in_mask",
                            "only_bg_accuracy",
                            "only_fg_accuracy",
                            "ece",
                            "accuracy_vs_rest",
                            "background_focus_vs_rest",
                            "accuracy_vs_best",
                        )
                    },
                    "flagged": True,
                },
                {"level": "B", "n": None, "suppressed": True},
            ],
            "worst": "A",
            "worst_accuracy": 0.5,
            "largest_gap": {"value": None, "ci_low": None, "ci_high": None},
            "classes": [
                {
                    "class": "cat",
                    "level": "A",
                    "n": 6,
                    "suppressed": False,
                    "sensitivity": {"value": 1.0, "ci_low": 0.6, "ci_high": 1.0},
                    "specificity": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.8},
                    "n_negative": 6,
                    "auroc": {"value": None, "ci_low": None, "ci_high": None},
                    "auroc_note": "not estimable: one class only",
                    "ece": {"value": 0.1, "ci_low": 0.0, "ci_high": 0.3},
                },
                {"class": "cat", "level": "B", "n": None, "suppressed": True},
            ],
        }
    ],
    "slices": [
        {
            "where": [["site", "A"], ["class", "cat"]],
            "n": 6,
            "accuracy": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.8},
            "accuracy_vs_rest": {"value": -0.3, "ci_low": -0.6, "ci_high": -0.01},
            "background_focus": {"value": None, "ci_low": None, "ci_high": None},
            "background_focus_vs_rest": {"value": None, "ci_low": None, "ci_high": None},
            "accuracy_gap": True,
            "attention_gap": False,
        }
    ],
}


def test_groups_block_with_suppressed_groups_round_trips_byte_identically() -> None:
    from auditor.audit.store import dumps_json

    text = dumps_json(_SUPPRESSED_BLOCK)
    typed = GroupsResult.from_json(json.loads(text))
    assert dumps_json(typed.to_json()) == text
    site = typed.attribute("site")
    assert site is not None
    b = site.level("B")
    assert b is not None and b.suppressed and b.n == 0 and b.accuracy.value is None
    assert [c.suppressed for c in site.classes] == [False, True]
    # a suppressed object is written with no number (not even n), whatever the object holds
    assert GroupStat(level="B", n=3, suppressed=True, flagged=True).to_json() == {
        "level": "B",
        "n": None,
        "suppressed": True,
    }
    assert ClassCell(cls="x", level="B", n=3, suppressed=True).to_json() == {
        "class": "x",
        "level": "B",
        "n": None,
        "suppressed": True,
    }
    # numbers in a suppressed level object are not read back
    leaked = dict(_SUPPRESSED_BLOCK["attributes"][0]["levels"][0], suppressed=True)  # type: ignore[index]
    back = GroupStat.from_json(leaked)
    assert back.n == 0 and back.accuracy.value is None and not back.flagged
    # the old reading rules: non-finite numbers read as None, a missing name is an error
    nan = json.loads('{"attributes": [], "overall_accuracy": NaN, "min_group_size": null}')
    assert GroupsResult.from_json(nan).overall_accuracy is None
    assert GroupsResult.from_json(nan).min_group_size == 10
    with pytest.raises(KeyError, match="name"):
        GroupsResult.from_json({"attributes": [{"levels": []}]})
    with pytest.raises(ValueError):
        GroupsResult.from_json({"attributes": [], "confidence": "high"})
