"""Preconditions said loudly (issue 22): the "not interpretable" verdict and its gate.

Unit tests build results by hand (the chance baseline, the grid and the sanity check each on
its own, and unmeasured preconditions that must not fail a run); end-to-end, a random-weight
model on the demo's data is not interpretable and ``auditor run`` exits 1, ``require_
interpretable = false`` turns the gate off, and the trained demo model is interpretable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.analysis.interpretability import assess, attach, from_result
from auditor.config import ConfigError, parse_config
from auditor.report.verdict import verdict_block
from auditor.results import AuditResult, ClassResult, ModelInfo, OverallResult, SanityResult


def _result(
    acc: float = 0.9,
    ci: tuple[float, float] = (0.8, 0.95),
    sizes: tuple[int, ...] = (20, 20),
    grid: list[list[int]] | None = None,
    sanity: SanityResult | None = None,
) -> AuditResult:
    n = sum(sizes)
    classes = {f"c{i}": ClassResult(name=f"c{i}", index=i, n=k) for i, k in enumerate(sizes)}
    return AuditResult(
        methods=("gradcam",),
        primary_method="gradcam",
        overall=OverallResult(n=n, accuracy=acc, accuracy_ci=ci),
        classes=classes,
        model=ModelInfo(extra={"cam_grid": grid} if grid is not None else {}),
        sanity=None if sanity is None else {"gradcam": sanity},
    )


def test_accuracy_interval_including_chance_is_not_interpretable() -> None:
    # two balanced classes: chance 0.5; the interval [0.40, 0.69] includes it
    v = assess(_result(acc=0.55, ci=(0.40, 0.69), grid=[[8, 8]]))
    assert not v.interpretable
    assert v.checks["accuracy_vs_chance"]["chance"] == pytest.approx(0.5)
    assert "chance (50%)" in v.reasons[0]
    # the same interval above chance passes
    assert assess(_result(acc=0.7, ci=(0.51, 0.85), grid=[[8, 8]])).interpretable


def test_chance_is_one_over_the_number_of_classes() -> None:
    # four classes: chance 0.25; [0.27, 0.5] lies above it, [0.2, 0.45] does not
    v = assess(_result(acc=0.38, ci=(0.27, 0.5), sizes=(10, 10, 10, 10), grid=[[8, 8]]))
    assert v.checks["accuracy_vs_chance"]["chance"] == pytest.approx(0.25) and v.interpretable
    v = assess(_result(acc=0.3, ci=(0.2, 0.45), sizes=(10, 10, 10, 10), grid=[[8, 8]]))
    assert not v.interpretable and "chance (25%)" in v.reasons[0]


@pytest.mark.parametrize(
    ("grid", "ok"),
    [([[2, 2]], False), ([[3, 3]], False), ([[4, 3]], True), ([[3, 3], [7, 7]], True)],
)
def test_map_grid_of_three_by_three_or_less(grid: list[list[int]], ok: bool) -> None:
    v = assess(_result(grid=grid))
    assert v.interpretable is ok
    assert v.checks["map_grid"]["passed"] is ok
    if not ok:
        assert "map grid is" in v.reasons[0]


def test_failed_sanity_check_is_not_interpretable() -> None:
    bad = SanityResult(similarity=0.93, threshold=0.5, trustworthy=False, n=8)
    v = assess(_result(grid=[[8, 8]], sanity=bad))
    assert not v.interpretable and "sanity check" in v.reasons[0] and "0.93" in v.reasons[0]
    undefined = SanityResult(similarity=None, threshold=0.5, trustworthy=False, n=0)
    v = assess(_result(grid=[[8, 8]], sanity=undefined))
    assert v.interpretable and v.checks["sanity"]["measured"] is False  # NaN: not measured
    good = SanityResult(similarity=0.2, threshold=0.5, trustworthy=True, n=8)
    assert assess(_result(grid=[[8, 8]], sanity=good)).interpretable


def test_unmeasured_preconditions_do_not_fail_but_are_listed() -> None:
    v = assess(_result(grid=None, sanity=None))
    assert v.interpretable
    assert v.checks["map_grid"]["measured"] is False
    assert v.checks["sanity"]["measured"] is False


def test_several_reasons_and_the_summary_round_trip() -> None:
    bad = SanityResult(similarity=0.9, threshold=0.5, trustworthy=False, n=8)
    r = attach(_result(acc=0.5, ci=(0.3, 0.7), grid=[[2, 2]], sanity=bad))
    again = AuditResult.from_json(json.loads(json.dumps(r.to_json())))
    v = from_result(again)
    assert v is not None and not v.interpretable and len(v.reasons) == 3
    block = verdict_block(again)
    assert block["headline"].startswith("Not interpretable")
    assert block["interpretable"] is False and len(block["not_interpretable_reasons"]) == 3
    assert verdict_block(attach(_result(grid=[[8, 8]])))["not_interpretable_reasons"] == ()
    assert from_result(_result()) is None  # a run written before the check


def _raw(gates: dict[str, object]) -> dict[str, object]:
    return {
        "model": {"factory": "auditor.demo:build_model", "random_weights": True},
        "data": {"manifest": "m.csv", "classes": ["a", "b"], "input_size": 32},
        "gates": gates,
    }


def test_gate_is_on_by_default_and_a_boolean(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,label\n")
    on = parse_config(_raw({}), base_dir=tmp_path)
    assert [g.name for g in on.gates] == ["require_interpretable"]
    off = parse_config(_raw({"require_interpretable": False}), base_dir=tmp_path)
    assert off.gates == ()
    with pytest.raises(ConfigError, match="require_interpretable must be true or false"):
        parse_config(_raw({"require_interpretable": 0}), base_dir=tmp_path)


@pytest.fixture(scope="module")
def random_weight_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from auditor.demo import write_demo_inputs

    base = tmp_path_factory.mktemp("interp")
    cfg = write_demo_inputs(base / "inputs")
    text = cfg.read_text()
    text = text.replace('weights = "demo-shortcut.pt"', "random_weights = true")
    text = text.replace('["gradcam", "gradcam++", "layercam", "cam"]', '["gradcam"]')
    text = text.replace("faithfulness_samples = 24", "faithfulness_samples = 0\nclusters = false")
    text = text.replace("max_background_focus = 0.7\nmax_findings_high = 0\n", "")
    assert "random_weights = true" in text and "max_findings_high" not in text
    out = base / "inputs" / "random.toml"
    out.write_text(text)
    return out


def test_random_weight_model_is_not_interpretable_and_exits_1(
    random_weight_config: Path, tmp_path: Path
) -> None:
    from auditor.cli import main

    code = main(["run", str(random_weight_config), "--out", str(tmp_path / "run"),
                 "--limit", "60", "--no-pdf", "--no-progress"])  # fmt: skip
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["interpretability"]["interpretable"] is False
    assert any("chance" in r for r in s["interpretability"]["reasons"])
    gate = [g for g in s["gates"]["results"] if g["rule"] == "require_interpretable"]
    assert len(gate) == 1 and gate[0]["passed"] is False and gate[0]["value"] == 0.0
    assert code == 1
    page = (tmp_path / "run" / "report.html").read_text()
    cover = page.split('id="cover"', 1)[1].split("</section>", 1)[0]
    assert "Not interpretable" in cover and 'id="not-interpretable"' in cover
    # the same run with the gate off: the verdict stays, the exit code is 0
    off = random_weight_config.with_name("random-off.toml")
    text = random_weight_config.read_text()
    off.write_text(text.replace("[gates]\n", "[gates]\nrequire_interpretable = false\n"))
    assert "require_interpretable = false" in off.read_text()
    code = main(["run", str(off), "--out", str(tmp_path / "run2"), "--limit", "60",
                 "--no-pdf", "--no-progress"])  # fmt: skip
    s2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert s2["interpretability"]["interpretable"] is False
    assert code == 0


def test_trained_demo_model_is_interpretable(demo_run: Path) -> None:
    s = json.loads((demo_run / "summary.json").read_text())
    v = s["interpretability"]
    assert v["interpretable"] is True and v["reasons"] == []
    assert v["checks"]["map_grid"]["grid"] == [16, 16]
    gate = [g for g in s["gates"]["results"] if g["rule"] == "require_interpretable"]
    assert len(gate) == 1 and gate[0]["passed"] is True
