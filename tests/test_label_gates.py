"""Multi-label gates (issue 26): ``min_label_auroc`` and ``min_label_average_precision``,
in the registry, refused outside sigmoid runs, evaluated per label (not estimable: fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.analysis.gate_registry import gate_spec, suggest_gates
from auditor.analysis.gates import evaluate_gates
from auditor.config import GateRule, load_config
from auditor.errors import ConfigError
from auditor.results import AuditResult, freeze

LABELS = {
    "n_images": 10,
    "threshold": 0.5,
    "labels": {
        "bar": {"auroc": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.97},
                "average_precision": {"value": 0.7, "ci_low": 0.55, "ci_high": 0.85}},
        "ring": {"auroc": {"value": 0.62, "ci_low": 0.41, "ci_high": 0.83},
                 "average_precision": {"value": 0.8, "ci_low": 0.6, "ci_high": 0.9}},
        "unicorn": {"auroc": {"value": None, "ci_low": None, "ci_high": None,
                              "not_estimable": "no image carries the label"},
                    "average_precision": {"value": None, "ci_low": None, "ci_high": None,
                                          "not_estimable": "no image carries the label"}},
    },
}  # fmt: skip


def _result() -> AuditResult:
    extra = freeze({"labels": LABELS, "output": "sigmoid"})
    return AuditResult(("gradcam",), "gradcam", extra=extra)


def _check(key: str, value: float, stat: str = "mean", classes: tuple | None = None) -> dict:
    spec = gate_spec(key)
    assert spec is not None and spec.applies == ("run",) and spec.bound == "min"
    rule = GateRule(name=key, quantity=spec.quantity, scope=spec.level, stat=stat, min=value,
                    classes=classes)  # fmt: skip
    gates = evaluate_gates(_result(), [rule])
    return {r.cls: (r.value, r.passed, r.note) for r in gates.results}


def test_label_auroc_gate_per_label() -> None:
    got = _check("min_label_auroc", 0.7)
    assert got["bar"] == (0.9, True, "")
    assert got["ring"] == (0.62, False, "")
    assert got["unicorn"] == (None, False, "no image carries the label")  # fails, with why


def test_label_gate_on_interval_bound_and_named_labels() -> None:
    got = _check("min_label_average_precision", 0.58, stat="ci_low")
    assert got["bar"] == (0.55, False, "") and got["ring"] == (0.6, True, "")
    got = _check("min_label_auroc", 0.5, classes=("ring", "dragon"))
    assert set(got) == {"ring", "dragon"}
    assert got["ring"][1] is True and got["dragon"] == (None, False, "unknown label")


def test_label_gate_on_a_softmax_result_fails_loudly() -> None:
    rule = GateRule(name="min_label_auroc", quantity="label_auroc", scope="class", min=0.5)
    (r,) = evaluate_gates(AuditResult(("gradcam",), "gradcam"), [rule]).results
    assert r.passed is False and "not a multi-label run" in r.note


def test_config_refuses_label_gates_outside_sigmoid_and_suggests(demo_inputs: Path) -> None:
    assert "min_label_auroc" in suggest_gates("min_label_aurok")
    text = Path(demo_inputs).read_text("utf-8").split("[gates]")[0]  # model, data, audit
    for gates, needle in (("min_label_auroc = 0.7", 'output = "sigmoid"'),
                          ("min_label_aurok = 0.7", "'min_label_auroc'")):  # fmt: skip
        path = Path(demo_inputs).parent / "label_gates.toml"
        path.write_text(text + f"\n[gates]\n{gates}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert needle in str(err.value) and "label_gates.toml" in str(err.value)


def test_label_chance_by_hand() -> None:
    import pyarrow as pa

    from auditor.analysis.multilabel import label_chance

    rows = pa.Table.from_pylist([
        # label 0: negatives 0.7, 0.2, 0.6, 0.1 -> 2 of 4 at t = 0.5; a positive is ignored
        *({"method": "gradcam", "label": 0, "positive": False, "confidence": p}
          for p in (0.7, 0.2, 0.6, 0.1)),
        {"method": "gradcam", "label": 0, "positive": True, "confidence": 0.9},
        {"method": "eigencam", "label": 0, "positive": False, "confidence": 0.9},  # other method
        # label 1: every image carries it -> None (not judged)
        {"method": "gradcam", "label": 1, "positive": True, "confidence": 0.8},
        # label 2: a non-finite score is no outcome
        {"method": "gradcam", "label": 2, "positive": False, "confidence": float("nan")},
        {"method": "gradcam", "label": 2, "positive": False, "confidence": 0.5},
    ])  # fmt: skip
    assert label_chance(rows, 3, primary="gradcam", threshold=0.5) == (0.5, None, 1.0)


def test_false_positive_background_finding_by_hand() -> None:
    from types import SimpleNamespace

    import pyarrow as pa

    from auditor.analysis.multilabel_fp import false_positive_findings

    s = SimpleNamespace(primary="gradcam", threshold=0.5, confidence=0.95, bootstrap=200, seed=0)

    def neg(label: int, p: float, bf: float, explained: str = "negative") -> dict:
        return {"method": "gradcam", "label": label, "explained": explained, "confidence": p,
                "background_focus": bf}  # fmt: skip

    rows = pa.Table.from_pylist([
        # label 0 ('bar'): 4 false positives, maps 0.8-0.9 off every object -> flagged
        *(neg(0, 0.9, bf) for bf in (0.8, 0.85, 0.9, 0.88)),
        neg(0, 0.2, 0.1),  # scored below the threshold: not a false positive
        # label 1 ('ring'): 4 false positives whose maps sit on another object -> silent
        *(neg(1, 0.7, bf) for bf in (0.2, 0.3, 0.25, 0.1)),
        # label 2 ('square'): only 2 false positives with a map (a third has no object) -> silent
        neg(2, 0.9, 0.95), neg(2, 0.9, 0.97), neg(2, 0.9, float("nan")),
        # a positive pair's map is not a false positive
        *(neg(2, 0.9, 0.99, explained="positive") for _ in range(3)),
    ])  # fmt: skip
    found = false_positive_findings(rows, ["bar", "ring", "square"], s)
    assert [(f.cls, f.kind, f.severity) for f in found] == [
        ("bar", "label_false_positive_background", "medium")
    ]
    ev = found[0].evidence
    assert ev["n_false_positives"] == 4 and ev["n_explained_negatives"] == 5
    assert ev["background_focus"] == pytest.approx((0.8 + 0.85 + 0.9 + 0.88) / 4)
    assert ev["ci"][0] > 0.5
    assert "4 of the 5 explained images" in found[0].message
    assert false_positive_findings(rows.drop_columns(["explained"]), ["bar"], s) == []
