"""Comparing two detection audits (issue 26): `auditor compare` and `auditor run --baseline`.

One real audit of the tiny detector (random weights, 4 images); run B is run A with its box
outcomes rewritten to known values, so every compared number is checked by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auditor.cli import main
from auditor.compare.detection import precision_diff
from auditor.demo.detection import write_coco

CONFIG = """
[model]
factory = "auditor.demo.detection:build_tiny_detector"
random_weights = true
task = "detection"
score_threshold = 0.0
[data]
format = "coco"
root = "data"
annotations = "data/instances.json"
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[audit]
bootstrap = 100
methods = ["gradcam"]
interventions = true
{gates}
"""


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detcmp")
    write_coco(root / "data", n_per_class=2)
    (root / "audit.toml").write_text(CONFIG.format(gates=""))
    assert main(["run", str(root / "audit.toml"), "--out", str(root / "A"), "--no-pdf",
                 "--quiet"]) == 0  # fmt: skip
    # the tests forge runs from A by editing its files: no checksum manifest to disagree with
    # (compare refuses a run whose files changed since it wrote checksums.json)
    (root / "A" / "checksums.json").unlink()
    return root / "A"


def _rewrite(run: Path, out: Path, found: dict[str, list[int]], obj: dict[str, list[int]],
             n_fp: dict[str, int]) -> Path:  # fmt: skip
    """A copy of ``run`` whose ground-truth boxes of class c (in index order) have
    ``detected = found[c]``, ``object_only_detected = obj[c]``, no hit on context alone, and
    ``n_fp[c]`` false positives of class c on the first image."""
    shutil.copytree(run, out)
    t = pd.read_parquet(out / "samples.parquet")
    gt = t[t.kind == "gt"].sort_values(["index", "box"]).copy()
    for name in ("boat", "kite"):
        sel = gt.label_name == name
        gt.loc[sel, "detected"] = found[name]
        gt.loc[sel, "object_only_detected"] = obj[name]
    gt["context_only_hit"] = False
    fps = []
    template = gt.iloc[0]
    for c, (name, k) in enumerate(n_fp.items()):
        for j in range(k):
            row = template.copy()
            row.update({"kind": "fp", "box": 100 + 10 * c + j, "label": c, "label_name": name,
                        "detected": None, "object_only_detected": None,
                        "context_only_hit": None})  # fmt: skip
            fps.append(row)
    new = pd.concat([gt, pd.DataFrame(fps)], ignore_index=True)
    new.to_parquet(out / "samples.parquet", index=False)
    return out


def test_precision_diff_by_hand() -> None:
    # A: TP 3, FP 1 -> 0.75; B: TP 3, FP 3 -> 0.5; diff -0.25
    b = precision_diff([1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1],
                       confidence=0.95, n_boot=500, seed=0)  # fmt: skip
    assert b["mean_a"] == pytest.approx(0.75) and b["mean_b"] == pytest.approx(0.5)
    assert b["diff"] == pytest.approx(-0.25)
    assert (b["tp_a"], b["fp_a"], b["tp_b"], b["fp_b"]) == (3, 1, 3, 3)
    assert b["ci_low"] <= -0.25 <= b["ci_high"] and b["higher_is_better"] is True
    # the same precision on every image: every draw gives the same difference
    same = precision_diff([2, 2], [2, 2], [1, 1], [3, 3], confidence=0.9, n_boot=200, seed=1)
    assert same["diff"] == pytest.approx(-0.25)
    assert same["ci_low"] == pytest.approx(-0.25) and same["ci_high"] == pytest.approx(-0.25)
    assert same["status"] == "regressed"
    none = precision_diff([0, 0], [0, 0], [1, 0], [0, 0], confidence=0.9, n_boot=200, seed=1)
    assert none["n"] == 0 and none["diff"] is None and none["status"] == "n/a"


def test_compare_two_detection_runs(run_a: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _rewrite(run_a, tmp_path / "A", {"boat": [1, 1], "kite": [1, 0]},
                 {"boat": [1, 1], "kite": [1, 0]}, {"boat": 0, "kite": 1})  # fmt: skip
    b = _rewrite(run_a, tmp_path / "B", {"boat": [1, 1], "kite": [1, 1]},
                 {"boat": [0, 0], "kite": [1, 1]}, {"boat": 2, "kite": 1})  # fmt: skip
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nmax_context_recall_drop_increase = 0.5\n"
                     "max_detection_recall_decrease = 0.0\n")  # fmt: skip
    rc = main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--config", str(gates),
               "--no-pdf", "--quiet"])  # fmt: skip
    assert rc == 1  # boat's context drop rose by 1.0
    c = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert c["pairing"]["unit"] == "ground-truth box" and c["pairing"]["n_paired"] == 4
    boat = c["primary"]["classes"]["boat"]["metrics"]
    kite = c["primary"]["classes"]["kite"]["metrics"]
    # boat: recall 1 -> 1, object-only 1 -> 0: drop 0 -> 1 on both boxes
    assert boat["detection_recall"]["diff"] == 0.0
    assert boat["object_only_recall"]["diff"] == -1.0
    assert boat["context_recall_drop"]["mean_a"] == 0.0
    assert boat["context_recall_drop"]["mean_b"] == 1.0
    assert boat["context_recall_drop"]["status"] == "regressed"
    # boat precision: A 2 / (2 + 0) = 1, B 2 / (2 + 2) = 0.5
    assert boat["detection_precision"]["mean_a"] == 1.0
    assert boat["detection_precision"]["mean_b"] == 0.5
    # kite: recall 0.5 -> 1 (McNemar: one discordant pair, p = 1)
    assert kite["detection_recall"]["diff"] == 0.5 and kite["detection_recall"]["p_value"] == 1.0
    assert kite["detection_recall"]["b_only"] == 1
    assert kite["detection_precision"]["mean_a"] == pytest.approx(1 / 2)
    assert kite["detection_precision"]["mean_b"] == pytest.approx(2 / 3)
    assert c["regressed"] == ["boat"]
    failed = [(g["rule"], g["class"]) for g in c["gates"]["results"] if not g["passed"]]
    assert failed == [("max_context_recall_drop_increase", "boat")]
    t = pd.read_parquet(tmp_path / "cmp" / "comparison.parquet")
    assert len(t) == 4 and set(t.comparison) == {"primary"}
    assert t.context_recall_drop_diff.tolist().count(1.0) == 2
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "Detection recall" in html and "Context recall drop" in html


def test_refusals_exit_2(run_a: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    b = tmp_path / "B"
    shutil.copytree(run_a, b)
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nmax_accuracy_decrease = 0.1\n")
    rc = main(["compare", str(run_a), str(b), "--out", str(tmp_path / "c1"), "--config",
               str(gates), "--no-pdf", "--quiet"])  # fmt: skip
    assert rc == 2 and "max_accuracy_decrease" in capsys.readouterr().err
    assert not (tmp_path / "c1").exists()
    s = json.loads((b / "summary.json").read_text())
    s["detection"]["iou_threshold"] = 0.75
    (b / "summary.json").write_text(json.dumps(s))
    rc = main(["compare", str(run_a), str(b), "--out", str(tmp_path / "c2"), "--no-pdf",
               "--quiet"])  # fmt: skip
    assert rc == 2 and "IoU thresholds" in capsys.readouterr().err
    del s["detection"]  # now B looks like a classifier run of the same data
    (b / "summary.json").write_text(json.dumps(s))
    rc = main(["compare", str(run_a), str(b), "--out", str(tmp_path / "c3"), "--no-pdf",
               "--quiet"])  # fmt: skip
    assert rc == 2 and "is a detection audit" in capsys.readouterr().err


def test_run_baseline_detection(run_a: Path, tmp_path: Path) -> None:
    root = run_a.parent
    cfg = root / "with_gates.toml"
    cfg.write_text(CONFIG.format(gates="[gates]\nmax_detection_recall_decrease = 0.0\n"
                                       "max_context_only_hit_rate_increase = 0.0"))  # fmt: skip
    out = tmp_path / "B"
    rc = main(["run", str(cfg), "--out", str(out), "--baseline", str(run_a), "--no-pdf",
               "--quiet"])  # fmt: skip
    assert rc == 0  # same model, same data: nothing changed, the gates pass
    c = json.loads((out / "baseline-comparison" / "comparison.json").read_text())
    assert c["detection"]["task"] == "detection"
    res = c["gates"]["results"]
    assert {g["rule"] for g in res} == {"max_detection_recall_decrease",
                                        "max_context_only_hit_rate_increase"}  # fmt: skip
    assert all(g["passed"] and g["value"] == 0.0 for g in res)
    diffs = [m["diff"] for m in c["primary"]["overall"].values() if m["n"]]
    assert diffs and np.allclose(diffs, 0.0)


def test_gallery_drawn_once_and_embedded(run_a: Path) -> None:
    """The detection gallery (issue 26): PNGs under gallery/, listed in summary.json, embedded
    in the report as data URIs; the report re-rendered draws nothing new."""
    s = json.loads((run_a / "summary.json").read_text())
    gallery = s["detection"]["gallery"]
    assert gallery  # score threshold 0: the random detector's false detections are explained
    for g in gallery:
        assert (run_a / g["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert g["kind"] in ("gt", "fp") and g["box_id"] == f"{g['id']}#{g['kind']}{g['box']}"
    per_class = {}
    for g in gallery:
        per_class.setdefault((g["class"], g["kind"]), []).append(g)
    for (_, kind), entries in per_class.items():
        assert len(entries) <= (4 if kind == "gt" else 2)
        if kind == "fp":  # highest score first
            assert [e["score"] for e in entries] == sorted((e["score"] for e in entries),
                                                          reverse=True)  # fmt: skip
    html = (run_a / "report.html").read_text()
    assert 'id="detection-gallery"' in html
    assert html.count("data:image/png;base64,") >= len(gallery)
    files = sorted(p.name for p in (run_a / "gallery").glob("det-*.png"))
    from auditor.report import render_report

    render_report(run_a, html=True, pdf=False)
    assert sorted(p.name for p in (run_a / "gallery").glob("det-*.png")) == files


def test_choose_detection_panels_by_hand() -> None:
    import pyarrow as pa

    from auditor.report.detection_gallery import choose_detection_panels

    def row(kind: str, box: int, label: str, bf: float, score: float, status: str = "ok",
            detected: bool | None = True, method: str = "gradcam") -> dict:  # fmt: skip
        return {"method": method, "kind": kind, "box": box, "label_name": label, "id": f"i{box}",
                "index": box, "detected": detected if kind == "gt" else None, "status": status,
                "background_focus": bf, "energy_in_mask": 1 - bf, "score": score,
                "x0": 0.0, "y0": 0.0, "x1": 4.0, "y1": 4.0}  # fmt: skip

    rows = pa.Table.from_pylist([
        row("gt", 0, "kite", 0.1, 0.9), row("gt", 1, "kite", 0.7, 0.8),
        row("gt", 2, "kite", 0.9, 0.7, status="zero_map"),  # map undefined: not shown
        row("gt", 3, "kite", 0.5, 0.9, detected=False),  # missed: no map
        row("fp", 4, "kite", 0.2, 0.3), row("fp", 5, "kite", 0.2, 0.6),
        row("fp", 6, "kite", 0.2, 0.5),
        row("gt", 7, "boat", 0.3, 0.9), row("gt", 8, "boat", 0.3, 0.9, method="eigencam"),
    ])  # fmt: skip
    picks = choose_detection_panels(rows, ["kite", "boat"], {"boat": True}, "gradcam", 4)
    assert [(p["class"], p["kind"], p["box"]) for p in picks] == [
        ("boat", "gt", 7),  # flagged classes first
        ("kite", "gt", 1), ("kite", "gt", 0),  # highest background focus first
        ("kite", "fp", 5), ("kite", "fp", 6),  # two false detections, highest score first
    ]  # fmt: skip
    assert picks[0]["box_id"] == "i7#gt7"
    assert choose_detection_panels(rows, ["kite"], {}, "gradcam", 1)[0]["box"] == 1
    assert choose_detection_panels(rows, ["kite"], {}, "gradcam", 0) == []


def test_detection_comparison_gate_refused_in_a_classifier_config(demo_inputs: Path) -> None:
    from auditor.config import load_config
    from auditor.errors import ConfigError

    text = Path(demo_inputs).read_text("utf-8").split("[gates]")[0]
    path = Path(demo_inputs).parent / "det_gate.toml"
    path.write_text(text + "\n[gates]\nmax_detection_recall_decrease = 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, baseline=True)
    assert "det_gate.toml" in str(err.value) and "detection gate" in str(err.value)
