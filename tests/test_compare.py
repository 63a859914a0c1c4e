"""Tests of ``auditor compare``: paired statistics, dataset checks, gates, CLI, report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auditor.compare import (
    classify_change,
    compare_runs,
    evaluate_comparison_gates,
    focus_comparison_figure,
    load_compare_gates,
    mcnemar_exact,
    moved_panel,
)
from auditor.config import GateRule
from auditor.errors import AuditorInputError, ConfigError
from auditor.stats import paired_bootstrap_diff_ci

XSS = "<script>alert(1)</script>"
SHA = "d" * 64


def write_run(
    root: Path,
    *,
    name: str,
    bf: list[float],
    correct: list[bool],
    labels: list[int],
    classes: tuple[str, ...] = ("cat", "dog"),
    sha: str = SHA,
    method: str = "gradcam",
    extra_methods: dict[str, list[float]] | None = None,
    ids: list[str] | None = None,
    cams: bool = True,
) -> Path:
    """A minimal schema-valid run directory: summary.json, samples.parquet, CAM shards."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(bf)
    ids = ids or [f"img/{i:03d}.png" for i in range(n)]
    methods = {method: bf, **(extra_methods or {})}
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "index",
            "id",
            "method",
            "label",
            "label_name",
            "pred",
            "correct",
            "confidence",
            "background_focus",
            "energy_in_mask",
        )
    }
    for m, vals in methods.items():
        for i in range(n):
            rows["index"].append(i)
            rows["id"].append(ids[i])
            rows["method"].append(m)
            rows["label"].append(labels[i])
            rows["label_name"].append(classes[labels[i]])
            rows["pred"].append(labels[i] if correct[i] else (labels[i] + 1) % len(classes))
            rows["correct"].append(correct[i])
            rows["confidence"].append(0.9)
            rows["background_focus"].append(vals[i])
            rows["energy_in_mask"].append(1.0 - vals[i] if not math.isnan(vals[i]) else math.nan)
    pq.write_table(pa.table(rows), root / "samples.parquet")
    summary = {
        "schema_version": 1,
        "tool": {"name": "cam-auditor", "version": "0.1.0"},
        "run": {"finished": "2026-01-01T00:00:00+00:00"},
        "model": {"name": name, "sha256": name.encode().hex()[:16], "source": "test"},
        "dataset": {
            "name": "synthetic",
            "sha256": sha,
            "annotation_sha256": "a" * 64,
            "n_samples": n,
            "n_evaluated": n,
            "classes": list(classes),
        },
        "methods": list(methods),
        "primary_method": method,
    }
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    if cams:
        (root / "shards").mkdir(exist_ok=True)
        rng = np.random.default_rng(len(name))
        arrays = {"ids": np.asarray(ids).astype(str), "indices": np.arange(n)}
        for m in methods:
            arrays[f"cam__{m}"] = rng.random((n, 4, 4)).astype(np.float16)
        np.savez(root / "shards" / "cams-00000.npz", **arrays)
        pq.write_table(pa.table(rows), root / "shards" / "part-00000.parquet")
    return root


# A: 6 samples, 3 per class. B: class "dog" looks at the background much more.
BF_A = [0.2, 0.4, 0.5, 0.3, 0.3, 0.2]
BF_B = [0.3, 0.4, math.nan, 0.7, 0.8, 0.6]
LABELS = [0, 0, 0, 1, 1, 1]
OK_A = [True, True, True, True, True, True]
OK_B = [True, True, True, False, False, True]


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "v1", name="model-v1", bf=BF_A, correct=OK_A, labels=LABELS)
    b = write_run(tmp_path / "v2", name="model-v2", bf=BF_B, correct=OK_B, labels=LABELS)
    return a, b


# ---------------------------------------------------------------------------- statistics
def test_hand_computed_paired_differences(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    res = compare_runs(a, b, out=tmp_path / "cmp", render=False, n_boot=200, top_n=0)
    c = res.comparison
    cat = c["primary"]["classes"]["cat"]["metrics"]["background_focus"]
    # cat: pairs (0.2, 0.3), (0.4, 0.4); sample 2 is NaN in B, so the pair is dropped
    assert cat["n"] == 2 and cat["n_nan"] == 1
    assert cat["mean_a"] == pytest.approx(0.3)
    assert cat["mean_b"] == pytest.approx(0.35)
    assert cat["diff"] == pytest.approx(0.05)
    dog = c["primary"]["classes"]["dog"]["metrics"]["background_focus"]
    # dog: differences 0.4, 0.5, 0.4
    assert dog["n"] == 3
    assert dog["mean_a"] == pytest.approx(0.8 / 3)
    assert dog["mean_b"] == pytest.approx(0.7)
    assert dog["diff"] == pytest.approx(1.3 / 3)
    # every bootstrap replicate of {0.4, 0.5, 0.4} lies in [0.4, 0.5]: the interval excludes 0
    assert 0.4 - 1e-9 <= dog["ci_low"] <= dog["ci_high"] <= 0.5 + 1e-9
    assert dog["status"] == "regressed"  # background focus: lower is better
    eim = c["primary"]["classes"]["dog"]["metrics"]["energy_in_mask"]
    assert eim["diff"] == pytest.approx(-1.3 / 3) and eim["status"] == "regressed"
    # the per-class interval is the paired bootstrap on the class's pairs (same seed)
    iv = paired_bootstrap_diff_ci(np.array(BF_A[3:]), np.array(BF_B[3:]), n_boot=200, seed=0)
    assert dog["ci_low"] == pytest.approx(iv.low) and dog["ci_high"] == pytest.approx(iv.high)
    overall = c["primary"]["overall"]["background_focus"]
    assert overall["n"] == 5 and overall["n_nan"] == 1
    assert overall["diff"] == pytest.approx((0.1 + 0.0 + 0.4 + 0.5 + 0.4) / 5)
    assert overall["test"] == "wilcoxon"
    # accuracy: dog 3/3 → 1/3, McNemar: 2 pairs right in A only, 0 in B only → p = 2 · 0.5² = 0.5
    acc = c["primary"]["classes"]["dog"]["metrics"]["accuracy"]
    assert acc["mean_a"] == 1.0 and acc["mean_b"] == pytest.approx(1 / 3)
    assert acc["test"] == "mcnemar_exact" and acc["a_only"] == 2 and acc["b_only"] == 0
    assert acc["p_value"] == pytest.approx(0.5)
    assert c["primary"]["classes"]["dog"]["status"] == "regressed"
    assert c["regressed"] == ["dog"]
    assert c["primary"]["classes"]["cat"]["metrics"]["accuracy"]["status"] == "unchanged"
    assert c["pairing"] == {"key": ["index", "id"], "n_paired": 6, "n_only_a": 0, "n_only_b": 0}
    # per-sample paired rows
    t = pq.read_table(tmp_path / "cmp" / "comparison.parquet").to_pydict()
    assert t["background_focus_diff"][3] == pytest.approx(0.4)
    assert math.isnan(t["background_focus_diff"][2])
    assert res.passed  # no gates


def test_improved_when_b_is_better(tmp_path: Path) -> None:
    a = write_run(
        tmp_path / "a", name="a", bf=BF_B[:2] + [0.6] + BF_B[3:], correct=OK_A, labels=LABELS
    )
    b = write_run(tmp_path / "b", name="b", bf=BF_A, correct=OK_A, labels=LABELS)
    c = compare_runs(a, b, out=tmp_path / "o", render=False, n_boot=200, top_n=0).comparison
    assert c["primary"]["classes"]["dog"]["status"] == "improved"
    assert "dog" in c["improved"] and c["regressed"] == []


def test_classify_change_rules() -> None:
    assert classify_change(0.1, 0.2, False) == "regressed"
    assert classify_change(0.1, 0.2, True) == "improved"
    assert classify_change(-0.2, -0.1, True) == "regressed"
    assert classify_change(-0.2, 0.1, True) == "unchanged"
    assert classify_change(0.0, 0.0, True) == "unchanged"  # all differences zero (a tie)
    assert classify_change(0.1, 0.2, None) == "changed"
    assert classify_change(None, 0.2, True) == "n/a"
    assert classify_change(float("nan"), 0.2, True) == "n/a"


def test_mcnemar_exact_hand_values() -> None:
    # 3 discordant pairs, all right in B only: p = 2 · 0.5³ = 0.25
    r = mcnemar_exact(np.array([0, 0, 0, 1.0]), np.array([1, 1, 1, 1.0]))
    assert (r["a_only"], r["b_only"], r["n"]) == (0, 3, 4)
    assert r["p_value"] == pytest.approx(0.25)
    # no discordant pair (identical outcomes): no evidence of a difference
    assert mcnemar_exact(np.array([1, 0.0]), np.array([1, 0.0]))["p_value"] == 1.0
    # NaN pairs are dropped
    assert mcnemar_exact(np.array([1, np.nan]), np.array([0, 1.0]))["n"] == 1
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact(np.array([0.5]), np.array([1.0]))
    with pytest.raises(ValueError, match="same shape"):
        mcnemar_exact(np.array([1.0]), np.array([1.0, 0.0]))


def test_constant_and_all_nan_metric(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", name="a", bf=[0.5] * 4, correct=[True] * 4, labels=[0, 0, 1, 1])
    b = write_run(
        tmp_path / "b",
        name="b",
        bf=[0.5, 0.5, math.nan, math.nan],
        correct=[True] * 4,
        labels=[0, 0, 1, 1],
    )
    c = compare_runs(a, b, out=tmp_path / "o", render=False, n_boot=50, top_n=0).comparison
    cat = c["primary"]["classes"]["cat"]["metrics"]["background_focus"]
    assert cat["diff"] == 0.0 and cat["ci_low"] == 0.0 and cat["status"] == "unchanged"
    assert cat["p_value"] == 1.0
    dog = c["primary"]["classes"]["dog"]["metrics"]["background_focus"]
    assert dog["n"] == 0 and dog["diff"] is None and dog["status"] == "n/a"


# ---------------------------------------------------------------------------- input checks
def test_dataset_hash_mismatch(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", name="a", bf=BF_A, correct=OK_A, labels=LABELS, sha="1" * 64)
    b = write_run(tmp_path / "b", name="b", bf=BF_A, correct=OK_A, labels=LABELS, sha="2" * 64)
    with pytest.raises(AuditorInputError, match="1111111111.*2222222222"):
        compare_runs(a, b, out=tmp_path / "o", render=False)


def test_class_mismatch_and_not_a_run(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", name="a", bf=BF_A, correct=OK_A, labels=LABELS)
    b = write_run(
        tmp_path / "b", name="b", bf=BF_A, correct=OK_A, labels=LABELS, classes=("cat", "fox")
    )
    with pytest.raises(AuditorInputError, match="different classes"):
        compare_runs(a, b, out=tmp_path / "o", render=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditorInputError, match="no summary.json"):
        compare_runs(a, tmp_path / "empty", out=tmp_path / "o", render=False)
    with pytest.raises(AuditorInputError, match="must not be a run directory"):
        compare_runs(a, a, out=a, render=False)


def test_pairing_id_mismatch(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", name="a", bf=BF_A, correct=OK_A, labels=LABELS)
    ids = [f"img/{i:03d}.png" for i in range(6)]
    ids[4] = "other.png"
    b = write_run(tmp_path / "b", name="b", bf=BF_A, correct=OK_A, labels=LABELS, ids=ids)
    with pytest.raises(AuditorInputError, match="other.png"):
        compare_runs(a, b, out=tmp_path / "o", render=False)


def test_argument_checks(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    with pytest.raises(ValueError, match="confidence"):
        compare_runs(a, b, out=tmp_path / "o", confidence=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        compare_runs(a, b, out=tmp_path / "o", n_boot=1)
    with pytest.raises(ValueError, match="scope 'compare'"):
        compare_runs(a, b, out=tmp_path / "o", gates=[GateRule("g", "background_focus", max=1)])


# ---------------------------------------------------------------------------- gates
def test_gates_increase_and_decrease(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    rules = [
        GateRule(
            "max_background_focus_increase", "background_focus_increase", scope="compare", max=0.1
        ),
        GateRule("max_accuracy_decrease", "accuracy_decrease", scope="compare", max=0.5),
    ]
    res = compare_runs(a, b, out=tmp_path / "o", gates=rules, render=False, n_boot=100, top_n=0)
    by = {(r["rule"], r["class"]): r for r in res.comparison["gates"]["results"]}
    assert by[("max_background_focus_increase", "cat")]["value"] == pytest.approx(0.05)
    assert by[("max_background_focus_increase", "cat")]["passed"]
    assert by[("max_background_focus_increase", "dog")]["value"] == pytest.approx(1.3 / 3)
    assert not by[("max_background_focus_increase", "dog")]["passed"]
    # accuracy_decrease = A − B: dog 1 − 1/3 = 0.667 > 0.5 fails; cat 0 passes
    assert by[("max_accuracy_decrease", "dog")]["value"] == pytest.approx(2 / 3)
    assert not by[("max_accuracy_decrease", "dog")]["passed"]
    assert by[("max_accuracy_decrease", "cat")]["value"] == pytest.approx(0.0)
    assert res.passed is False and res.exit_code == 1
    junit = (tmp_path / "o" / "junit.xml").read_text("utf-8")
    assert 'failures="2"' in junit and "max_background_focus_increase[dog]" in junit


def test_gate_on_missing_quantity_fails() -> None:
    comparison = {"primary": {"classes": {"cat": {"n": 3, "metrics": {}}}}, "methods": {}}
    rule = GateRule("max_iou_increase", "iou_increase", scope="compare", max=0.1)
    out = evaluate_comparison_gates(comparison, [rule])
    assert out["passed"] is False
    assert out["results"][0]["value"] is None and "not available" in out["results"][0]["note"]


def test_load_compare_gates(tmp_path: Path) -> None:
    p = tmp_path / "gates.toml"
    p.write_text("[gates]\nmax_background_focus_increase = 0.05\nmax_background_focus = 0.6\n")
    rules = load_compare_gates(p)
    assert [r.quantity for r in rules] == ["background_focus_increase"]  # run gates ignored
    p.write_text("[gates]\nmax_background_focus_increse = 0.05\n")
    with pytest.raises(ConfigError, match="increse"):
        load_compare_gates(p)
    p.write_text("[report]\ntitle = 'x'\n")
    with pytest.raises(ConfigError, match=r"no \[gates\]"):
        load_compare_gates(p)


# ---------------------------------------------------------------------------- CLI
def test_cli_exit_codes(tmp_path: Path, capsys: Any) -> None:
    from auditor.cli import main

    # no CAM shards: the report is drawn without moved-sample panels (faster)
    a = write_run(
        tmp_path / "v1", name="model-v1", bf=BF_A, correct=OK_A, labels=LABELS, cams=False
    )
    b = write_run(
        tmp_path / "v2", name="model-v2", bf=BF_B, correct=OK_B, labels=LABELS, cams=False
    )
    cfg = tmp_path / "gates.toml"
    cfg.write_text("[gates]\nmax_background_focus_increase = 0.05\n")
    out = tmp_path / "cli"
    code = main(["compare", str(a), str(b), "--out", str(out), "--config", str(cfg), "--no-pdf"])
    assert code == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "dog" in text and "regressed" in text
    moved = json.loads((out / "comparison.json").read_text("utf-8"))["moved"]
    assert moved and all(m["file"] is None for m in moved)
    assert "compare.html" in text and not (out / "compare.pdf").exists()
    data = json.loads((out / "comparison.json").read_text("utf-8"))
    assert data["gates"]["passed"] is False
    cfg.write_text("[gates]\nmax_background_focus_increase = 0.9\n")
    assert (
        main(["compare", str(a), str(b), "--out", str(out), "--config", str(cfg), "--no-pdf"]) == 0
    )
    c = write_run(tmp_path / "other", name="c", bf=BF_A, correct=OK_A, labels=LABELS, sha="e" * 64)
    assert main(["compare", str(a), str(c), "--out", str(out), "--no-pdf"]) == 2
    assert "sha256" in capsys.readouterr().err


def test_default_out_dir(runs: tuple[Path, Path]) -> None:
    a, b = runs
    res = compare_runs(a, b, render=False, n_boot=50, top_n=0)
    assert res.out_dir == b.parent / "v2-vs-v1"
    assert (res.out_dir / "comparison.json").is_file()


# ---------------------------------------------------------------------------- report
def test_report_html_names_escape_and_pdf(tmp_path: Path) -> None:
    from pypdf import PdfReader

    classes = ("cat", XSS)
    a = write_run(
        tmp_path / "a",
        name="baseline<b>v1</b>",
        bf=BF_A,
        correct=OK_A,
        labels=LABELS,
        classes=classes,
    )
    b = write_run(
        tmp_path / "b", name="candidate-v2", bf=BF_B, correct=OK_B, labels=LABELS, classes=classes
    )
    res = compare_runs(a, b, out=tmp_path / "o", n_boot=100, top_n=2, pdf=True)
    html = (tmp_path / "o" / "compare.html").read_text("utf-8")
    assert "candidate-v2" in html and "baseline&lt;b&gt;v1&lt;/b&gt;" in html
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>v1</b>" not in html
    assert len(res.comparison["moved"]) == 2 and res.comparison["moved"][0]["file"]
    # the largest |ΔBF| is sample 4 (0.3 → 0.8), then a tie at 0.4 broken by index (3 < 5)
    assert [m["index"] for m in res.comparison["moved"]] == [4, 3]
    assert (tmp_path / "o" / res.comparison["moved"][0]["file"]).is_file()
    assert res.report["pdf"].is_file()
    text = " ".join(page.extract_text() for page in PdfReader(res.report["pdf"]).pages)
    assert "regressed" in text and "candidate-v2" in text


def test_figures_are_png() -> None:
    png = moved_panel(np.ones((2, 2)), np.zeros((3, 3)), title="$x$ id", label_a="A", label_b="B")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    assert moved_panel(np.ones((2, 2)), np.ones((2, 2)), image=img, mask=mask)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="cam_a"):
        moved_panel(np.ones(3), np.ones((2, 2)))
    png = focus_comparison_figure(
        ["a", XSS],
        [0.2, None],
        [[0.1, 0.3], [None, None]],
        [0.4, 0.5],
        [[0.3, 0.5], [0.4, 0.6]],
        [0.2, None],
        [[0.1, 0.3], [None, None]],
        threshold=0.05,
    )
    assert png[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="length 2"):
        focus_comparison_figure(["a", "b"], [0.1], [[0, 1]], [0.1], [[0, 1]], [0.0], [[0, 0]])


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """Two real (tiny) audits of the shipped demo models on the same synthetic data."""
    import dataclasses

    import torch

    from auditor.audit.runner import run_audit
    from auditor.config import load_config
    from auditor.data import open_dataset
    from auditor.demo import write_demo_inputs

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("demo")
    out = {}
    for variant in ("shortcut", "fixed"):
        cfg = load_config(write_demo_inputs(root / "inputs", variant=variant, n_per_class=5))
        audit = dataclasses.replace(
            cfg.audit,
            methods=("gradcam", "cam"),
            faithfulness_samples=0,
            sanity_check=False,
            clusters=False,
            bootstrap=100,
            gallery_per_class=0,
            batch_size=20,
        )
        cfg = dataclasses.replace(cfg, audit=audit)
        run_audit(cfg, root / variant, render=False, progress=False)
        out[variant] = (root / variant, cfg)
    return out["shortcut"][0], out["fixed"][0], open_dataset(out["fixed"][1].data)


def test_end_to_end_demo(demo_runs: tuple[Path, Path, Any], tmp_path: Path) -> None:
    a, b, dataset = demo_runs
    rule = GateRule(
        "max_background_focus_decrease", "background_focus_decrease", scope="compare", max=0.05
    )
    res = compare_runs(
        a, b, out=tmp_path / "cmp", gates=[rule], render=False, n_boot=200, top_n=2, dataset=dataset
    )
    c = res.comparison
    assert c["primary"]["method_a"] == c["primary"]["method_b"] == "gradcam"
    assert set(c["methods"]) == {"gradcam", "cam"}
    # the fixed model stops looking at the striped background of the triangles
    tri = c["primary"]["classes"]["triangle"]["metrics"]["background_focus"]
    assert tri["diff"] < 0 and tri["status"] == "improved"
    assert "triangle" in c["improved"]
    # a (deliberately strict) gate on the decrease fails for the triangles
    failed = {r["class"] for r in c["gates"]["results"] if not r["passed"]}
    assert "triangle" in failed and res.passed is False
    assert c["moved"][0]["with_image"] is True
    assert (tmp_path / "cmp" / c["moved"][0]["file"]).is_file()
