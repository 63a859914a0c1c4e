"""Detection audits by metadata groups (issue 26 + ``[data] groups``).

* by hand: per-group recall/precision with Wilson intervals, suppression of small groups, the
  Bonferroni-adjusted recall-vs-rest flag, findings and the three group gates;
* end to end: a tiny detector trained here on COCO scenes whose ``site = B`` images lost their
  objects (blank images, boxes still annotated): the audit names ``site = B``, stays silent on
  an attribute independent of it (``scanner``), and the recall-gap gate fails on ``site`` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from auditor.analysis.detection_groups import (
    analyse_detection_groups,
    detection_group_findings,
    evaluate_detection_group_gates,
)
from auditor.cli import main
from auditor.config import GateRule
from auditor.stats import wilson_interval


def _rows(found_a: int, found_b: int, n: int = 12, fp_b: int = 0) -> tuple[pa.Table, list[str]]:
    """One box per image; ``n`` images per site; site A found ``found_a``, B ``found_b``."""
    ids, kind, det, site = [], [], [], []
    for s, k in (("A", found_a), ("B", found_b)):
        for i in range(n):
            ids.append(f"{s}{i}.png")
            kind.append("gt")
            det.append(i < k)
            site.append(s)
        for j in range(fp_b if s == "B" else 0):
            ids.append(f"B{j}.png")
            kind.append("fp")
            det.append(None)
            site.append("B")
    table = pa.table({"id": ids, "kind": kind, "detected": det,
                      "object_only_detected": [None] * len(ids)})  # fmt: skip
    return table, site


def test_group_recall_precision_by_hand_and_flag() -> None:
    table, site = _rows(11, 2, fp_b=3)
    block = analyse_detection_groups(table, {"site": site}, min_group_size=10)
    (attr,) = block["attributes"]
    a, b = attr["levels"]
    assert (a["level"], b["level"]) == ("A", "B")
    assert a["n_images"] == b["n_images"] == 12 and a["n_boxes"] == b["n_boxes"] == 12
    assert a["recall"]["value"] == pytest.approx(11 / 12)
    iv = wilson_interval(2, 12, 0.95)
    assert b["recall"]["ci_low"] == pytest.approx(iv.low)
    assert b["recall"]["ci_high"] == pytest.approx(iv.high)
    assert b["n_false_positives"] == 3
    assert b["precision"]["value"] == pytest.approx(2 / 5)
    assert a["precision"]["value"] == 1.0
    assert block["n_tests"] == 2
    assert b["recall_vs_rest"]["value"] == pytest.approx(2 / 12 - 11 / 12)
    assert b["flagged"] and not a["flagged"]
    assert attr["worst"] == "B" and attr["largest_recall_gap"] == pytest.approx(9 / 12)
    (f,) = detection_group_findings(block)
    assert f.kind == "group_detection_disparity" and f.severity == "high"
    assert "'site = B'" in f.message and "0.17" in f.message


def test_equal_groups_silent_and_small_groups_suppressed() -> None:
    table, site = _rows(9, 9)
    block = analyse_detection_groups(table, {"site": site}, min_group_size=10)
    assert not any(g["flagged"] for g in block["attributes"][0]["levels"])
    assert detection_group_findings(block) == []
    small = analyse_detection_groups(table, {"site": site}, min_group_size=13)
    levels = small["attributes"][0]["levels"]
    assert all(g["suppressed"] and g["n_images"] is None for g in levels)
    assert "recall" not in levels[0]  # no number leaves a small cell
    assert small["n_tests"] == 0


def test_group_gates_values_and_failures() -> None:
    table, site = _rows(11, 2)
    block = analyse_detection_groups(table, {"site": site}, min_group_size=10)
    rules = [
        GateRule(name="min_group_detection_recall", quantity="group_detection_recall",
                 scope="group", min=0.5),
        GateRule(name="max_group_detection_recall_gap[site=A]",
                 quantity="group_detection_recall_gap", scope="group", group="site=A", max=0.1),
        GateRule(name="min_group_detection_precision[site=C]",
                 quantity="group_detection_precision", scope="group", group="site=C", min=0.1),
        GateRule(name="min_group_accuracy", quantity="group_accuracy", scope="group", min=0.1),
    ]  # fmt: skip
    res = evaluate_detection_group_gates(block, rules)
    assert [(r.rule, r.cls, r.passed) for r in res] == [
        ("min_group_detection_recall", "site", False),
        ("max_group_detection_recall_gap[site=A]", "site=A", True),
        ("min_group_detection_precision[site=C]", "site=C", False),
    ]
    assert res[0].value == pytest.approx(2 / 12) and res[1].value == 0.0
    assert res[2].note == "unknown group"
    none = evaluate_detection_group_gates(None, rules[:1])
    assert not none[0].passed and "no group results" in none[0].note


def _config(tmp_path: Path, task: str, data: str, gates: str) -> dict:
    from auditor.demo.detection import write_coco

    doc = json.loads(write_coco(tmp_path, n_per_class=1).read_text())
    doc["images"][0]["site"] = "A"
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    model = {"factory": "a:b", **({"task": task} if task else {})}
    raw: dict = {
        "model": model,
        "data": {
            "format": "coco",
            "root": str(tmp_path),
            "annotations": "instances.json",
            **json.loads(data),
        },
    }
    raw["gates"] = json.loads(gates)
    return raw


@pytest.mark.parametrize(
    ("task", "data", "gates", "match"),
    [
        ("detection", '{"groups": ["site"]}', '{"min_group_accuracy": 0.5}',
         r"min_group_accuracy does not apply to a detection audit"),
        ("detection", "{}", '{"min_group_detection_recall": 0.5}',
         r"min_group_detection_recall needs \[data\] groups"),
        ("detection", '{"groups": ["site"]}', '{"min_group_detection_recall": {"sitee": 0.5}}',
         r"'sitee' is not one of \[data\] groups"),
        ("", '{"groups": ["site"]}', '{"max_group_detection_recall_gap": 0.2}',
         r"max_group_detection_recall_gap is a detection gate"),
    ],
)  # fmt: skip
def test_group_gate_config_refusals(tmp_path: Path, task: str, data: str, gates: str,
                                    match: str) -> None:  # fmt: skip
    from auditor.config import parse_config
    from auditor.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        parse_config(_config(tmp_path, task, data, gates), base_dir=tmp_path)
    ok = _config(tmp_path, "detection", '{"groups": ["site"]}',
                 '{"min_group_detection_recall": {"site": 0.5, "site=A": 0.9}}')  # fmt: skip
    rules = parse_config(ok, base_dir=tmp_path).gates
    got = sorted((r.name, r.group) for r in rules if r.scope == "group")
    assert got == [("min_group_detection_recall[site=A]", "site=A"),
                   ("min_group_detection_recall[site]", "site")]  # fmt: skip


CONFIG = """
[model]
factory = "auditor.demo.detection:build_tiny_detector"
weights = "w.pt"
task = "detection"
[data]
format = "coco"
root = "data"
annotations = "data/instances.json"
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
groups = ["site", "scanner"]
[audit]
bootstrap = 200
interventions = false
[gates]
max_group_detection_recall_gap = {site = 0.5, scanner = 0.5}
"""


@pytest.mark.slow
def test_detection_run_names_the_group_whose_objects_are_missed(tmp_path: Path) -> None:
    from auditor.demo.detection import train_detector, write_coco

    torch.save(train_detector(steps=300).state_dict(), tmp_path / "w.pt")
    path = write_coco(tmp_path / "data", n_per_class=12)
    doc = json.loads(path.read_text())
    rng = np.random.default_rng(0)
    for k, entry in enumerate(doc["images"]):
        entry["site"] = "B" if (k // 2) % 2 else "A"  # both classes in both sites
        entry["scanner"] = ["x", "y"][k % 4 in (0, 3)]  # independent of site
        if entry["site"] == "B":  # the object is gone (its box stays annotated)
            blank = np.clip(128 + rng.normal(0, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(blank).save(tmp_path / "data" / entry["file_name"])
    path.write_text(json.dumps(doc))
    (tmp_path / "audit.toml").write_text(CONFIG)
    out = tmp_path / "run"
    rc = main(["run", str(tmp_path / "audit.toml"), "--out", str(out), "--quiet", "--no-pdf"])
    s = json.loads((out / "summary.json").read_text())
    groups = {a["name"]: a for a in s["detection"]["groups"]["attributes"]}
    site = {g["level"]: g for g in groups["site"]["levels"]}
    assert site["A"]["n_images"] == site["B"]["n_images"] == 12
    assert site["A"]["recall"]["value"] >= 0.6 and site["B"]["recall"]["value"] <= 0.1
    assert site["B"]["flagged"] and not site["A"]["flagged"]
    assert not any(g["flagged"] for g in groups["scanner"]["levels"])
    named = [f["message"] for f in s["findings"] if f["kind"] == "group_detection_disparity"]
    assert len(named) == 1 and "'site = B'" in named[0]
    failed = [(g["rule"], g["class"]) for g in s["gates"]["results"] if not g["passed"]]
    assert rc == 1 and failed == [("max_group_detection_recall_gap[site]", "site")]
    import pyarrow.parquet as pq

    samples = pq.read_table(out / "samples.parquet").to_pandas()
    assert set(samples["group_site"]) == {"A", "B"}
    html = (out / "report.html").read_text()
    assert 'id="detection-groups"' in html and "site = B" in html
