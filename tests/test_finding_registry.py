"""A finding rule added with the decorator only (here, in a test module) reaches the result:
it runs, its findings are sorted and numbered with the others, flag their class, and its
description is in ``rules``. Also: the non-finite-logits finding is a registered rule."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from auditor.analysis import analyse
from auditor.analysis.findings import (
    FINDING_RULES,
    FindingRules,
    RuleContext,
    finding_rule,
    unregister_rule,
)
from auditor.config import AuditSettings
from auditor.results import AuditResult, Finding

SETTINGS = AuditSettings(bootstrap=200, interventions=False)


def rows(n_per_class: int, *, nonfinite: int = 0) -> pa.Table:
    """Two classes ``a`` (label 0) and ``b`` (label 1), every prediction right, background
    focus 0.2 for ``a`` and 0.4 for ``b``; the first ``nonfinite`` samples of ``a`` got NaN/Inf
    logits (pred -1, incorrect, metrics NaN, status ``nonfinite_logits``)."""
    cols: dict[str, list] = {
        k: []
        for k in ("index", "id", "method", "label", "pred", "correct", "background_focus",
                  "energy_in_mask", "energy_lift", "border_focus", "status")
    }  # fmt: skip
    i = 0
    for label, bf in ((0, 0.2), (1, 0.4)):
        for _ in range(n_per_class):
            bad = label == 0 and i < nonfinite
            cols["index"].append(i)
            cols["id"].append(f"s{i}")
            cols["method"].append("gradcam")
            cols["label"].append(label)
            cols["pred"].append(-1 if bad else label)
            cols["correct"].append(not bad)
            nan = float("nan")
            cols["background_focus"].append(nan if bad else bf)
            cols["energy_in_mask"].append(nan if bad else 1 - bf)
            cols["energy_lift"].append(nan if bad else (1 - bf) / 0.3)
            cols["border_focus"].append(nan if bad else 0.1)
            cols["status"].append("nonfinite_logits" if bad else "ok")
            i += 1
    return pa.table(cols)


def run(table: pa.Table) -> AuditResult:
    return analyse(table, classes=["a", "b"], methods=["gradcam"], settings=SETTINGS)


@pytest.fixture
def many_samples_rule() -> Iterator[str]:
    """A rule flagging (medium) every class with at least ``min_n`` samples."""

    def describe(r: FindingRules, confidence: float) -> str:
        return "Flag a class with at least 3 samples (test rule)."

    @finding_rule("test_many_samples", describe=describe)
    def many_samples(ctx: RuleContext) -> list[Finding]:
        return [
            Finding(
                cls=name,
                kind="test_many_samples",
                severity="medium",
                title=f"'{name}' has {c.n} samples",
                message=f"{c.n} samples",
                evidence={"n": c.n},
            )
            for name, c in ctx.classes.items()
            if c.n >= 3
        ]

    try:
        yield "test_many_samples"
    finally:
        unregister_rule("test_many_samples")
    assert "test_many_samples" not in FINDING_RULES


def test_rule_from_a_test_module_reaches_the_result(many_samples_rule: str) -> None:
    out = run(rows(4))
    found = [f for f in out.findings if f.kind == many_samples_rule]
    assert [f.cls for f in found] == ["a", "b"]  # sorted by class within the same severity
    assert all(f.evidence["n"] == 4 for f in found)
    # numbered with the others F1..Fn, in severity order
    assert [f.id for f in out.findings] == [f"F{k + 1}" for k in range(len(out.findings))]
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    ranks = [order[f.severity] for f in out.findings]
    assert ranks == sorted(ranks)
    # a medium finding flags its class; the description is in `rules` (summary.json)
    assert out.classes["a"].flagged and many_samples_rule in out.classes["a"].flags
    assert out.rules[many_samples_rule] == "Flag a class with at least 3 samples (test rule)."
    assert out.to_json()["rules"][many_samples_rule] == out.rules[many_samples_rule]


def test_rule_that_does_not_fire_leaves_the_class_alone(many_samples_rule: str) -> None:
    out = run(rows(2))
    assert not [f for f in out.findings if f.kind == many_samples_rule]
    assert not out.classes["a"].flagged
    assert many_samples_rule in out.rules  # described even when silent


def test_duplicate_and_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="background_focus"):
        finding_rule("background_focus", describe=lambda r, c: "")(lambda ctx: [])
    with pytest.raises(KeyError, match="no_such_rule"):
        unregister_rule("no_such_rule")


def test_nonfinite_logits_is_a_registered_rule_sorted_with_the_others() -> None:
    assert "nonfinite_logits" in FINDING_RULES
    # 3 of 20 samples (15 % >= 5 %): high, and sorted first (not appended after the others)
    out = run(rows(10, nonfinite=3))
    bad = [f for f in out.findings if f.kind == "nonfinite_logits"]
    assert len(bad) == 1 and bad[0].severity == "high" and bad[0].cls is None
    assert bad[0].evidence["n"] == 3 and bad[0].evidence["share"] == pytest.approx(0.15)
    assert list(bad[0].evidence["ids"]) == ["s0", "s1", "s2"]
    assert out.findings[0].kind == "nonfinite_logits" and out.findings[0].id == "F1"
    assert "nonfinite_logits" in out.rules


@pytest.mark.parametrize(("n_bad", "severity"), [(0, None), (1, "medium"), (5, "high")])
def test_nonfinite_logits_thresholds(n_bad: int, severity: str | None) -> None:
    """1 of 100 (1 %: the threshold itself) is medium, 5 of 100 (5 %) high, none: silent."""
    out = run(rows(50, nonfinite=n_bad))
    bad = [f for f in out.findings if f.kind == "nonfinite_logits"]
    assert [f.severity for f in bad] == ([severity] if severity else [])
