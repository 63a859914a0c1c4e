"""Hostile round 3 (issues 23 and 27): what a careless or hostile user meets at the CLI.

Each case asserts the documented exit code (0 ok, 1 gate, 2 bad input, 3 report, 4 bug) and
the message naming the culprit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auditor.analysis.gate_registry import GATES, gate_spec, group_gate_keys, suggest_gates
from auditor.analysis.groups import analyse_groups
from auditor.analysis.groups.gates import evaluate_group_gates
from auditor.cli import main
from auditor.config import parse_config
from auditor.errors import ConfigError


# -- 1. one gate registry, group gates included ---------------------------------------------
def _group_frame() -> pd.DataFrame:
    """Site A: 100 samples, 90 right; site B: 60 samples, 36 right (hand-countable)."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 160)
    correct = np.r_[np.arange(100) < 90, np.arange(60) < 36]
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(160)], "label": label,
        "pred": np.where(correct, label, 1 - label), "correct": correct,
        "pred_confidence": rng.uniform(0.5, 1.0, 160),
        "background_focus": np.r_[np.full(100, 0.25), np.full(60, 0.40)],
        "group_site": ["A"] * 100 + ["B"] * 60,
    })  # fmt: skip


def _groups_config(tmp_path: Path, gates: dict) -> object:
    m = tmp_path / "m.csv"
    m.write_text("image,label,site\na.png,x,A\n", encoding="utf-8")
    raw = {"model": {"factory": "x:y"}, "data": {"manifest": str(m), "groups": ["site"]},
           "gates": gates}  # fmt: skip
    return parse_config(raw, base_dir=tmp_path)


def test_group_gates_are_registered_parsed_and_evaluated(tmp_path: Path) -> None:
    keys = group_gate_keys()
    assert set(keys) == {
        "min_group_accuracy", "max_group_accuracy_gap", "max_group_background_focus_gap"
    }  # fmt: skip
    for k in keys:  # registry -> config: each parses into a group-scoped rule
        spec = gate_spec(k)
        assert spec is not None and spec.level == "group" and spec.needs == ("groups",)
    cfg = _groups_config(tmp_path, {k: 0.5 for k in keys})
    rules = cfg.gates  # type: ignore[attr-defined]
    assert {r.name for r in rules} == set(keys) and {r.scope for r in rules} == {"group"}
    # config -> evaluation: every group gate gives a value (hand-computed)
    res = analyse_groups(_group_frame(), ["site"], ["neg", "pos"], n_boot=200)
    got = {r.rule: r for r in evaluate_group_gates(res, rules)}
    assert set(got) == set(keys)
    assert got["min_group_accuracy"].value == pytest.approx(36 / 60)
    assert got["max_group_accuracy_gap"].value == pytest.approx(0.9 - 0.6)
    assert got["max_group_background_focus_gap"].value == pytest.approx(0.15)


def test_every_accepted_gate_key_is_registered(tmp_path: Path) -> None:
    """Config -> registry: a key the registry does not know is refused, with suggestions."""
    with pytest.raises(ConfigError, match="did you mean 'min_group_accuracy'"):
        _groups_config(tmp_path, {"min_group_acuracy": 0.8})
    assert all(gate_spec(k) is spec for k, spec in GATES.items())


def test_group_gate_in_a_compare_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "cmp.toml"
    cfg.write_text("[gates]\nmin_group_accuracy = 0.8\n", encoding="utf-8")
    from auditor.compare.gates import load_compare_gates

    with pytest.raises(ConfigError, match="min_group_accuracy is a run gate on \\[data\\] groups"):
        load_compare_gates(cfg)


@pytest.mark.parametrize(
    ("typo", "first"),
    [("max_backgroud_focus", "max_background_focus"), ("min_group_acuracy", "min_group_accuracy"),
     ("max_findings_hgih", "max_findings_high"), ("max_acuracy_decrease", "max_accuracy_decrease")],
)  # fmt: skip
def test_typo_suggestions_closest_three_no_duplicates(typo: str, first: str) -> None:
    close = suggest_gates(typo)
    assert close[0] == first and len(close) == len(set(close)) <= 3


def test_auditor_gates_lists_every_gate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gates"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines()[1:-1]}
    assert listed == set(GATES)
    assert "min_group_accuracy" in listed and f"{len(GATES)} gates." in out
