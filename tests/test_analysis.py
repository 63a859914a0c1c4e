"""Aggregation, finding rules and gates on hand-built sample tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from auditor.analysis import analyse, evaluate_gates
from auditor.config import AuditSettings, GateRule


def make_table(
    bf_by_class: dict[int, list[float]],
    *,
    fg_correct: dict[int, list[float]] | None = None,
    mixed_correct: dict[int, list[float]] | None = None,
    bg_correct: dict[int, list[float]] | None = None,
    interventions: bool = True,
    area: float = 0.3,
) -> pa.Table:
    rows: dict[str, list] = {
        k: []
        for k in (
            "index",
            "id",
            "method",
            "label",
            "pred",
            "correct",
            "background_focus",
            "energy_in_mask",
            "energy_lift",
            "border_focus",
            "status",
        )
    }
    iv: dict[str, list] = {"only_fg_correct": [], "only_bg_correct": [], "mixed_rand_correct": []}
    i = 0
    for label, values in bf_by_class.items():
        for j, bf in enumerate(values):
            rows["index"].append(i)
            rows["id"].append(f"s{i}")
            rows["method"].append("gradcam")
            rows["label"].append(label)
            rows["pred"].append(label)
            rows["correct"].append(True)
            rows["background_focus"].append(bf)
            rows["energy_in_mask"].append(1 - bf)
            rows["energy_lift"].append((1 - bf) / area)
            rows["border_focus"].append(0.2)
            rows["status"].append("ok")
            fg = (fg_correct or {}).get(label)
            iv["only_fg_correct"].append(fg[j] if fg else 1.0)
            bg = (bg_correct or {}).get(label)
            iv["only_bg_correct"].append(bg[j] if bg else 0.0)
            mixed = (mixed_correct or {}).get(label)
            iv["mixed_rand_correct"].append(mixed[j] if mixed else 1.0)
            i += 1
    return pa.table({**rows, **iv} if interventions else rows)


SETTINGS = AuditSettings(bootstrap=500)


def test_class_means_and_accuracy() -> None:
    t = make_table({0: [0.2, 0.4], 1: [0.5, 0.7, 0.9]})
    out = analyse(t, classes=["a", "b"], methods=["gradcam"], settings=SETTINGS)
    a = out.classes["a"].stat("gradcam", "background_focus")
    b = out.classes["b"].stat("gradcam", "background_focus")
    assert a is not None and b is not None
    assert a.mean == pytest.approx(0.3)
    assert b.mean == pytest.approx(0.7)
    overall = out.overall.stat("gradcam", "background_focus")
    assert overall is not None and overall.mean == pytest.approx((0.2 + 0.4 + 0.5 + 0.7 + 0.9) / 5)
    assert out.classes["a"].accuracy == 1.0
    assert out.overall.n == 5
    assert out.confusion is not None and out.confusion.matrix == ((2, 0), (0, 3))


def test_nan_excluded_and_counted() -> None:
    t = make_table({0: [0.2, float("nan"), 0.4]})
    out = analyse(t, classes=["a"], methods=["gradcam"], settings=SETTINGS)
    m = out.classes["a"].stat("gradcam", "background_focus")
    assert m is not None and m.mean == pytest.approx(0.3)
    assert (m.n, m.n_nan) == (2, 1)


def test_background_focus_rule_uses_the_interval() -> None:
    rng = np.random.default_rng(0)
    clean = list(np.clip(rng.normal(0.4, 0.05, 40), 0, 1))
    shortcut = list(np.clip(rng.normal(0.9, 0.03, 40), 0, 1))
    t = make_table({0: clean, 1: clean[:], 2: shortcut}, interventions=False)
    out = analyse(t, classes=["a", "b", "c"], methods=["gradcam"], settings=SETTINGS)
    assert out.classes["c"].flagged
    assert "background_focus" in out.classes["c"].flags
    assert not out.classes["a"].flagged and not out.classes["b"].flagged
    (f,) = [f for f in out.findings if f.kind == "background_focus"]
    assert f.severity == "high" and f.cls == "c" and f.id == "F1"
    assert f.evidence["baseline"] == pytest.approx(np.mean(clean), abs=1e-9)


def test_noisy_small_class_is_not_flagged_on_its_mean_alone() -> None:
    # mean 0.55 vs baseline 0.4, but with 3 noisy samples the interval reaches the baseline
    t = make_table({0: [0.4] * 30, 1: [0.1, 0.65, 0.9]})
    out = analyse(t, classes=["a", "b"], methods=["gradcam"], settings=SETTINGS)
    assert not out.classes["b"].flagged


def test_confirmed_reliance_needs_both_kinds_of_evidence() -> None:
    rng = np.random.default_rng(1)
    clean = list(np.clip(rng.normal(0.4, 0.05, 30), 0, 1))
    shortcut = list(np.clip(rng.normal(0.9, 0.03, 30), 0, 1))
    fg = {1: [0.0] * 30, 2: [0.0] * 15 + [1.0] * 15}
    # class c: accuracy collapses without background but the CAM looks at the object, and on
    # other images' backgrounds (mixed-rand, natural pixels) it loses accuracy too → medium
    t = make_table(
        {0: clean, 1: shortcut, 2: clean[:]},
        fg_correct=fg,
        mixed_correct={2: [0.0] * 10 + [1.0] * 20},
    )
    out = analyse(t, classes=["a", "b", "c"], methods=["gradcam"], settings=SETTINGS)
    kinds = {(f.cls, f.kind, f.severity) for f in out.findings}
    assert ("b", "background_reliance", "high") in kinds
    assert ("c", "evidence_disagreement", "medium") in kinds
    # the same drop seen only with the synthetic fill (mixed-rand keeps 100 %) → a low note
    t = make_table({0: clean, 1: shortcut, 2: clean[:]}, fg_correct=fg)
    out = analyse(t, classes=["a", "b", "c"], methods=["gradcam"], settings=SETTINGS)
    (c,) = [f for f in out.findings if f.cls == "c"]
    assert (c.kind, c.severity) == ("evidence_disagreement", "low")
    assert "synthetic fill" in c.message
    ivb = out.classes["b"].interventions
    assert ivb is not None
    assert ivb.only_fg_accuracy == 0.0 and ivb.only_fg_drop == pytest.approx(1.0)
    # the background alone called 'c' for 6 of 30 (20 %): below chance (1/3), so it does not
    # corroborate (before session 10: 0.20 > drop_margin 0.10 made this medium)
    t = make_table({0: clean, 1: shortcut, 2: clean[:]}, fg_correct=fg,
                   bg_correct={2: [1.0] * 6 + [0.0] * 24})  # fmt: skip
    out = analyse(t, classes=["a", "b", "c"], methods=["gradcam"], settings=SETTINGS)
    (c,) = [f for f in out.findings if f.cls == "c"]
    assert (c.kind, c.severity) == ("evidence_disagreement", "low")
    assert out.classes["c"].interventions is not None
    assert out.classes["c"].interventions.only_bg_accuracy == pytest.approx(0.2)


def test_gates_per_class_overall_and_findings() -> None:
    summary = {
        "primary_method": "gradcam",
        "overall": {"accuracy": 0.9, "accuracy_ci": [0.85, 0.94], "metrics": {}},
        "classes": {
            "a": {
                "n": 10,
                "accuracy": 1.0,
                "accuracy_ci": [0.7, 1.0],
                "interventions": None,
                "metrics": {
                    "gradcam": {"background_focus": {"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4}}
                },
            },
            "b": {
                "n": 10,
                "accuracy": 0.8,
                "accuracy_ci": [0.5, 0.9],
                "interventions": None,
                "metrics": {
                    "gradcam": {"background_focus": {"mean": 0.8, "ci_low": 0.55, "ci_high": 0.9}}
                },
            },
        },
        "findings": [{"severity": "high"}, {"severity": "low"}],
    }
    rules = [
        GateRule(name="max_background_focus", quantity="background_focus", max=0.6),
        GateRule(name="ci", quantity="background_focus", stat="ci_low", max=0.6),
        GateRule(name="min_overall_accuracy", quantity="accuracy", scope="overall", min=0.95),
        GateRule(name="max_findings_high", quantity="findings_high", scope="findings", max=0),
        GateRule(name="only_b", quantity="accuracy", min=0.5, classes=("b",)),
    ]
    res = evaluate_gates(summary, rules)
    by = {(r.rule, r.cls): r for r in res.results}
    assert by[("max_background_focus", "a")].passed
    assert not by[("max_background_focus", "b")].passed
    assert by[("ci", "b")].passed  # lower bound 0.55 <= 0.6
    assert not by[("min_overall_accuracy", None)].passed
    assert by[("max_findings_high", None)].value == 1.0
    assert not by[("max_findings_high", None)].passed
    assert ("only_b", "a") not in by and by[("only_b", "b")].passed
    assert not res.passed and res.n_failed == 3


def test_missing_value_fails_the_gate() -> None:
    summary = {
        "primary_method": "gradcam",
        "overall": {},
        "findings": [],
        "classes": {"a": {"n": 3, "metrics": {}, "interventions": None}},
    }
    res = evaluate_gates(summary, [GateRule(name="g", quantity="iou", min=0.1)])
    assert not res.passed and res.results[0].note == "value not available"


def test_interventions_that_refute_downgrade_to_disagreement() -> None:
    rng = np.random.default_rng(0)
    clean = list(np.clip(rng.normal(0.4, 0.05, 40), 0, 1))
    shortcut = list(np.clip(rng.normal(0.9, 0.03, 40), 0, 1))
    t = make_table({0: clean, 1: shortcut})  # only-foreground accuracy stays at 100 %
    out = analyse(t, classes=["a", "b"], methods=["gradcam"], settings=SETTINGS)
    kinds = {(f.cls, f.kind, f.severity) for f in out.findings}
    assert ("b", "evidence_disagreement", "low") in kinds
    assert not {k for k in kinds if k[1] in ("background_focus", "background_reliance")}
    assert "background_focus" not in out.classes["b"].flags


def test_small_objects_alone_do_not_raise_background_focus() -> None:
    # class b has more mass off the object only because its objects are smaller: same lift
    rows = make_table({0: [0.4] * 30}, interventions=False)
    small = make_table({1: [0.7] * 30}, interventions=False, area=0.15)
    lift_a = 0.6 / 0.3
    lift_b = 0.3 / 0.15
    assert lift_a == lift_b
    small = small.set_column(small.column_names.index("index"), "index", pa.array(range(30, 60)))
    t = pa.concat_tables([rows, small])
    out = analyse(t, classes=["a", "b"], methods=["gradcam"], settings=SETTINGS)
    assert not out.findings


def test_null_baseline_is_mask_area_and_randomcam_when_run() -> None:
    # two classes, gradcam + randomcam rows per sample; mask areas hand-chosen
    areas = {0: [0.1, 0.3, np.nan], 1: [0.5, 0.7]}  # nan: an unannotated sample
    rows: dict[str, list] = {
        k: [] for k in ("index", "id", "method", "label", "pred", "correct", "energy_in_mask",
                        "background_focus", "status", "mask_area")
    }
    i = 0
    for label, vals in areas.items():
        for a in vals:
            for method, e in (("gradcam", 0.9), ("randomcam", 0.2 + 0.1 * label)):
                rows["index"].append(i)
                rows["id"].append(f"s{i}")
                rows["method"].append(method)
                rows["label"].append(label)
                rows["pred"].append(label)
                rows["correct"].append(True)
                rows["energy_in_mask"].append(e if np.isfinite(a) else np.nan)
                rows["background_focus"].append(1 - e if np.isfinite(a) else np.nan)
                rows["status"].append("ok")
                rows["mask_area"].append(a)
            i += 1
    t = pa.table(rows)
    out = analyse(t, classes=["a", "b"], methods=["gradcam", "randomcam"], settings=SETTINGS)
    nb = out.classes["a"].extra["null_baseline"]
    assert nb["area"] == pytest.approx(0.2)  # mean of 0.1 and 0.3; the nan sample excluded
    assert nb["randomcam"]["mean"] == pytest.approx(0.2)
    assert out.classes["b"].extra["null_baseline"]["area"] == pytest.approx(0.6)
    assert out.classes["b"].extra["null_baseline"]["randomcam"]["mean"] == pytest.approx(0.3)
    # survives the JSON round trip of the typed result
    again = type(out).from_json(out.to_json())
    assert again.classes["b"].extra["null_baseline"]["area"] == pytest.approx(0.6)
    # randomcam as the primary method has no baseline against itself
    s2 = AuditSettings(bootstrap=200, primary_method="randomcam")
    out2 = analyse(t, classes=["a", "b"], methods=["randomcam", "gradcam"], settings=s2)
    assert "randomcam" not in out2.classes["a"].extra["null_baseline"]
