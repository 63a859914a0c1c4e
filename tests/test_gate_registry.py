"""The gate registry (issue 23): every key declared once, checked in every config, evaluated.

The key test: EVERY registered run gate is evaluated on a run with all analyses on
(interventions, faithfulness) and gives a value; every comparison gate gives a value on a
comparison of that run with a copy of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import auditor
from auditor.analysis.gate_registry import GATES, gate_spec, suggest_gates
from auditor.analysis.gates import evaluate_gates, overall_intervention
from auditor.config import GateRule, load_config
from auditor.errors import ConfigError
from auditor.notebook import load_run

SMALL = """
[audit]
methods = ["gradcam"]
target = "label"
batch_size = 50
seed = 0
faithfulness_samples = 12
faithfulness_steps = 5
intervention_fill = "blur"
sanity_samples = 0
bootstrap = 200
"""


def small_config(demo_inputs: Path, gates: str = "", name: str = "small.toml") -> Path:
    """The demo config with a small [audit] and the given [gates] body."""
    text = Path(demo_inputs).read_text("utf-8")
    head = text.split("[audit]")[0]
    tail = "[report]" + text.split("[report]")[1]
    out = Path(demo_inputs).parent / name
    out.write_text(head + SMALL + ("\n[gates]\n" + gates if gates else "") + "\n" + tail)
    return out


@pytest.fixture(scope="module")
def full_run(demo_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(small_config(demo_inputs, name="registry.toml"))
    out = tmp_path_factory.mktemp("registry") / "run"
    auditor.run_audit(cfg, out, limit=60, pdf=False, render=False, progress=False)
    return out


def _rule(key: str) -> GateRule:
    spec = gate_spec(key)
    assert spec is not None
    scope = "compare" if "compare" in spec.applies else spec.level
    return GateRule(name=key, quantity=spec.quantity, scope=scope, **{spec.bound: 0.5})


def test_every_run_gate_is_evaluated(full_run: Path) -> None:
    result = load_run(full_run).summary
    # (the group gates need [data] groups: tests/test_groups*.py; detection gates a detector)
    from auditor.config_detection import DETECTION_GATES  # detection runs only (issue 26)
    from auditor.config_multilabel import LABEL_GATES  # multi-label runs only (issue 26)

    keys = [
        k
        for k, s in GATES.items()
        if "run" in s.applies and s.level != "group" and k not in DETECTION_GATES
        and k not in LABEL_GATES
    ]
    assert len(keys) > 60
    gates = evaluate_gates(result, [_rule(k) for k in keys])
    by_rule: dict[str, list] = {}
    for r in gates.results:
        by_rule.setdefault(r.rule, []).append(r)
    assert set(by_rule) == set(keys)
    for key, results in by_rule.items():
        for r in results:
            assert r.value is not None, f"{key} [{r.cls}] not evaluated: {r.note}"
    # the faithfulness and overall intervention gates of issue 23 among them
    for key in ("max_overall_deletion_auc", "min_overall_insertion_auc",
                "max_overall_average_drop", "min_overall_increase_in_confidence",
                "max_overall_only_fg_drop", "min_overall_mixed_rand_accuracy"):  # fmt: skip
        assert key in by_rule


def test_overall_intervention_is_the_n_weighted_class_mean(full_run: Path) -> None:
    result = load_run(full_run).summary
    num = den = 0.0
    for c in result.classes.values():
        iv = c.interventions
        if iv is not None and iv.n and iv.only_fg_accuracy is not None:
            num += iv.only_fg_accuracy * iv.n
            den += iv.n
    assert den > 0
    assert overall_intervention(result.classes, "only_fg_accuracy") == pytest.approx(num / den)


def test_every_comparison_gate_is_evaluated(full_run: Path, tmp_path: Path) -> None:
    from auditor.compare import compare_runs

    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    from auditor.config_detection import DETECTION_COMPARE_QUANTITIES

    detection = {f"{q}_{c}" for q in DETECTION_COMPARE_QUANTITIES for c in ("increase", "decrease")}
    # (detection comparison gates: two detection runs, tests/test_detection_compare.py)
    keys = [k for k, s in GATES.items() if "compare" in s.applies and s.quantity not in detection]
    rules = [_rule(k) for k in keys]
    res = compare_runs(full_run, copy, out=tmp_path / "cmp", gates=rules, render=False)
    seen = {r.rule for r in res.gates.results}
    # every comparison quantity the runs measured gives a value (the run has no sanity)
    assert {"max_background_focus_increase", "max_accuracy_decrease"} <= seen
    for r in res.gates.results:
        if r.rule.startswith(("max_background_focus", "max_accuracy", "max_energy_in_mask")):
            assert r.value == pytest.approx(0.0), r
    # the terminal summary counts evaluated checks only, as `auditor run` does; a check without
    # a value (here: the sanity quantities of runs without the sanity check) is never a pass
    n_eval = sum(r.value is not None for r in res.gates.results)
    n_missing = len(res.gates.results) - n_eval
    assert n_missing > 0 and not res.passed
    assert f"gates: FAILED ({n_eval}/{n_eval} passed, {n_missing} not evaluated)" in res.describe()


@pytest.mark.parametrize(
    ("gates", "needle"),
    [
        ("max_background_focus_increase = 0.1", "comparison gate"),
        ("max_accuracy_decrease = 0.1", "--baseline"),
        ("max_deletion_auc = 0.5", "not per class"),
        ("max_backgroud_focus = 0.5", "'max_background_focus'"),
        (
            '[[gates.rule]]\nmetric = "accuracy"\nscope = "overall"\nclasses = ["circle"]\n'
            "min = 0.5",
            "classes",
        ),
    ],
)
def test_run_config_refuses_gates_in_the_wrong_place(
    demo_inputs: Path, gates: str, needle: str
) -> None:
    path = small_config(demo_inputs, gates, name="wrong.toml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "wrong.toml" in str(err.value)
    assert needle in str(err.value)


def test_baseline_allows_comparison_gates(demo_inputs: Path) -> None:
    path = small_config(demo_inputs, "max_background_focus_increase = 0.1", name="b.toml")
    cfg = load_config(path, baseline=True)
    assert [g.scope for g in cfg.gates if g.name != "require_interpretable"] == ["compare"]


def test_faithfulness_gate_needs_faithfulness(demo_inputs: Path) -> None:
    path = small_config(demo_inputs, "max_overall_deletion_auc = 0.5", name="f.toml")
    text = path.read_text().replace("faithfulness_samples = 12", "faithfulness_samples = 0")
    path.write_text(text)
    with pytest.raises(ConfigError, match="needs faithfulness"):
        load_config(path)


def test_suggestions_are_the_closest_three_without_duplicates() -> None:
    close = suggest_gates("max_backgroud_focus")
    assert close[0] == "max_background_focus"
    assert len(close) == len(set(close)) <= 3


def test_registering_a_gate_is_one_place() -> None:
    from auditor.analysis.gate_registry import GateSpec, register_gate

    spec = GateSpec("min_test_quantity", "test_quantity", "min", ("run",), "overall")
    register_gate(spec)
    try:
        assert gate_spec("min_test_quantity") is spec
        with pytest.raises(ValueError, match="already registered"):
            register_gate(GateSpec("min_test_quantity", "other", "min", ("run",), "overall"))
    finally:
        from auditor.analysis import gate_registry

        gate_registry._REGISTRY.pop("min_test_quantity")  # noqa: SLF001 - test cleanup
    with pytest.raises(ValueError, match="level"):
        GateSpec("x", "x", "max", ("run",), "everywhere")


def test_a_comparison_gate_that_checks_nothing_fails_and_is_counted() -> None:
    """No class with paired samples, every group suppressed: each configured comparison gate
    still gets a failed result saying why, and the verdict is FAILED, never "PASSED (0/0)"."""
    from auditor.cli import gate_verdict
    from auditor.compare.gates import evaluate_comparison_gates

    comparison = {
        "primary": {"classes": {"circle": {"n": 0}, "square": {"n": 0}}},
        "groups": {"attributes": [
            {"name": "site", "levels": [{"level": "A", "suppressed": True},
                                        {"level": "B", "suppressed": True}]},
        ]},
    }  # fmt: skip
    keys = ["max_background_focus_increase", "max_accuracy_decrease",
            "max_group_accuracy_decrease", "max_group_background_focus_increase"]  # fmt: skip
    gates = evaluate_comparison_gates(comparison, [_rule(k) for k in keys])
    assert gates["passed"] is False
    by_rule = {r["rule"]: r for r in gates["results"]}
    assert set(by_rule) == set(keys) and len(gates["results"]) == len(keys)
    for r in gates["results"]:
        assert r["value"] is None and r["passed"] is False and r["note"], r
    assert by_rule["max_group_accuracy_decrease"]["class"] == "site"
    assert "no group large enough" in by_rule["max_group_accuracy_decrease"]["note"]
    assert "nothing to check" in by_rule["max_accuracy_decrease"]["note"]
    assert gate_verdict(gates["results"]) == "FAILED (0/0 passed, 4 not evaluated)"
    # one class with paired samples: the gate is evaluated there and only there
    comparison["primary"]["classes"]["circle"] = {
        "n": 5, "metrics": {"accuracy": {"diff": -0.2, "ci_low": -0.4, "ci_high": 0.0}}
    }  # fmt: skip
    one = evaluate_comparison_gates(comparison, [_rule("max_accuracy_decrease")])
    assert [(r["class"], r["value"], r["passed"]) for r in one["results"]] == [
        ("circle", pytest.approx(0.2), True)
    ]
