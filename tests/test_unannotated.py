"""Data without annotations still gets border focus, entropy and clusters; no fake numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from auditor.cli import main

pytestmark = pytest.mark.slow


def test_audit_without_masks(tmp_path: Path, demo_inputs: Path) -> None:
    data = demo_inputs.parent / "data"
    rows = list(csv.DictReader(open(data / "manifest.csv", encoding="utf-8")))[:40]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        for r in rows:
            w.writerow([r["image"], r["label"]])
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f"""
[model]
factory = "auditor.demo:build_model"
weights = "{demo_inputs.parent / "demo-shortcut.pt"}"

[data]
manifest = "{manifest}"
root = "{data}"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam"]
faithfulness_samples = 0
sanity_check = false
bootstrap = 200
""")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-pdf", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"]["annotated"] is False
    assert s["dataset"]["n_evaluated"] == 40
    m = s["overall"]["metrics"]["gradcam"]
    assert m["energy_in_mask"]["mean"] is None and m["energy_in_mask"]["n_nan"] == 40
    assert 0 < m["border_focus"]["mean"] < 1
    assert 0 < m["entropy"]["mean"] <= 1
    assert s["overall"]["status_counts"]["gradcam"] == {"no_mask": 40}
    for c in s["classes"].values():
        iv = c["interventions"]
        assert iv is None or all(iv[k] is None for k in ("only_fg_accuracy", "only_bg_accuracy"))
    assert s["clusters"], "clusters still run on unannotated data"
    # no finding may rest on an undefined number
    assert not [
        f for f in s["findings"] if f["kind"] in ("background_focus", "background_reliance")
    ]
    assert not any(isinstance(v, float) and math.isnan(v) for v in m["border_focus"].values())


def test_all_samples_skipped_is_bad_input(tmp_path: Path, demo_inputs: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "manifest.csv").write_text("image,label\nbroken.png,circle\n../escape.png,circle\n")
    cfg = tmp_path / "audit.toml"
    cfg.write_text("""
[model]
factory = "auditor.demo:build_model"
[data]
manifest = "manifest.csv"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
[audit]
sanity_check = false
faithfulness_samples = 0
""")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-pdf", "--no-progress"]) == 2
    s = json.loads((out / "summary.json").read_text())
    reasons = {d["id"]: d["reason"] for d in s["dataset"]["skipped"]}
    assert len(reasons) == 2 and any("escape" in r for r in reasons.values())
