"""`auditor compare` per group (issue 24): the comparison gates on groups (registry, config,
evaluation against hand-made comparison.json blocks) and the compare report's section."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.analysis.gate_registry import GATES, gate_spec
from auditor.compare.gates import evaluate_comparison_gates, load_compare_gates
from auditor.config import GateRule
from auditor.errors import ConfigError
from auditor.report.groups import compare_groups_context

GROUPS = {
    "min_group_size": 10,
    "confidence": 0.95,
    "attributes": [
        {
            "name": "site",
            "gap_a": 0.30,
            "gap_b": 0.05,
            "gap_change": -0.25,
            "levels": [
                {"level": "A", "n": 60, "suppressed": False, "accuracy_a": 0.9,
                 "accuracy_b": 0.85,
                 "accuracy_diff": {"value": -0.05, "ci_low": -0.1, "ci_high": 0.0},
                 "background_focus_diff": {"value": 0.02, "ci_low": 0.0, "ci_high": 0.04}},
                {"level": "B", "n": 60, "suppressed": False, "accuracy_a": 0.6,
                 "accuracy_b": 0.8,
                 "accuracy_diff": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3},
                 "background_focus_diff": {"value": -0.3, "ci_low": -0.4, "ci_high": -0.2}},
                {"level": "C", "n": None, "suppressed": True},
            ],
        }
    ],
}  # fmt: skip


def _comparison(groups: dict | None) -> dict:
    out: dict = {"primary": {"classes": {}}}
    if groups is not None:
        out["groups"] = groups
    return out


def _rule(key: str, t: float) -> GateRule:
    spec = gate_spec(key)
    assert spec is not None and spec.applies == ("compare",) and spec.level == "group"
    return GateRule(name=key, quantity=spec.quantity, scope="compare", max=t)


def test_group_gates_registered_where_they_apply() -> None:
    for key in ("min_group_accuracy", "max_group_accuracy_gap", "max_group_background_focus_gap"):
        assert GATES[key].applies == ("run",) and GATES[key].level == "group"
    for key in ("max_group_accuracy_gap_increase", "max_group_accuracy_decrease",
                "max_group_background_focus_increase"):  # fmt: skip
        assert GATES[key].applies == ("compare",) and "baseline" in GATES[key].needs


def test_group_comparison_gates_values() -> None:
    rules = [
        _rule("max_group_accuracy_gap_increase", 0.0),
        _rule("max_group_accuracy_decrease", 0.02),
        _rule("max_group_background_focus_increase", 0.01),
    ]
    res = evaluate_comparison_gates(_comparison(GROUPS), rules)["results"]
    got = {(r["rule"], r["class"]): r for r in res}
    gap = got[("max_group_accuracy_gap_increase", "site")]
    assert gap["value"] == pytest.approx(-0.25) and gap["passed"]
    drop_a = got[("max_group_accuracy_decrease", "site=A")]
    assert drop_a["value"] == pytest.approx(0.05) and not drop_a["passed"]
    assert got[("max_group_accuracy_decrease", "site=B")]["value"] == pytest.approx(-0.2)
    assert not got[("max_group_background_focus_increase", "site=A")]["passed"]
    assert got[("max_group_background_focus_increase", "site=B")]["passed"]
    assert not any(r["class"] == "site=C" for r in res)  # suppressed: never gated


def test_group_comparison_gate_fails_without_groups() -> None:
    res = evaluate_comparison_gates(_comparison(None), [_rule("max_group_accuracy_decrease", 1)])
    (r,) = res["results"]
    assert r["passed"] is False and "no group results" in r["note"]


def test_group_comparison_gates_in_config_files(tmp_path: Path) -> None:
    p = tmp_path / "gates.toml"
    p.write_text("[gates]\nmax_group_accuracy_decrease = 0.05\n")
    (rule,) = load_compare_gates(p)
    assert rule.quantity == "group_accuracy_decrease" and rule.max == 0.05
    p.write_text("[gates]\nmin_group_accuracy = 0.8\n")
    with pytest.raises(ConfigError, match="not a comparison gate"):
        load_compare_gates(p)
    p.write_text("[gates]\nmax_group_acuracy_decrease = 0.05\n")
    with pytest.raises(ConfigError, match="max_group_accuracy_decrease"):
        load_compare_gates(p)


def test_compare_report_section_renders() -> None:
    ctx = compare_groups_context(GROUPS)
    assert ctx is not None and compare_groups_context(None) is None
    rows = {r["label"]: r for r in ctx["attributes"][0]["rows"]}
    assert rows["site = B"]["improved"] and not rows["site = A"]["regressed"]
    assert rows["site = C"]["suppressed"]
    from auditor.report.html import make_environment

    html = make_environment().get_template("_compare_groups.html.j2").render(groups=ctx)
    assert "Per-group differences" in html and "the gap closed" in html
    assert "&lt; 10" in html and "site = C" in html
    assert "0.200 [0.100, 0.300]" in html
