"""End to end on the demo: summary.json, Parquet, HTML and PDF, and the planted shortcut."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pypdf import PdfReader

from auditor.demo import CLASSES, SHORTCUT_CLASS

pytestmark = pytest.mark.slow


def test_run_directory_is_complete(demo_run: Path) -> None:
    for name in (
        "report.html",
        "report.pdf",
        "summary.json",
        "samples.parquet",
        "junit.xml",
        "provenance.json",
        "config.toml",
    ):
        assert (demo_run / name).is_file(), name
        assert (demo_run / name).stat().st_size > 0, name
    assert list((demo_run / "shards").glob("cams-*.npz"))
    # no temporary file left behind by the atomic writes
    assert not list(demo_run.rglob("*.tmp"))


def test_summary_schema(demo_run: Path) -> None:
    s = json.loads((demo_run / "summary.json").read_text())
    assert s["schema_version"] == 1
    assert s["tool"]["name"] == "cam-auditor"
    for key in ("started", "finished", "config_sha256", "seed", "device"):
        assert key in s["run"]
    assert len(s["model"]["sha256"]) == 64
    assert s["model"]["target_layer"]
    assert s["dataset"]["n_samples"] == 200
    assert s["dataset"]["n_evaluated"] + s["dataset"]["n_skipped"] == 200
    assert s["primary_method"] == s["methods"][0] == "gradcam"
    assert set(s["classes"]) == set(CLASSES)
    m = s["overall"]["metrics"]["gradcam"]["background_focus"]
    assert m["ci_low"] <= m["mean"] <= m["ci_high"]
    e = s["overall"]["metrics"]["gradcam"]["energy_in_mask"]
    assert e["mean"] + m["mean"] == pytest.approx(1.0, abs=1e-6)
    for name in CLASSES:
        c = s["classes"][name]
        assert c["n"] == 50
        for key in ("accuracy", "only_fg_accuracy", "only_bg_accuracy", "mixed_rand_accuracy"):
            assert 0.0 <= c["interventions"][key] <= 1.0
    assert "passed" in s["gates"] and s["gates"]["results"]
    # faithfulness ran on the seeded subset of 24 samples: the others are not counted as NaN
    faith = s["faithfulness"]["gradcam"]["deletion_auc"]
    assert faith["n"] + faith["n_nan"] == 24
    assert 0.0 <= faith["mean"] <= 1.0


def test_planted_shortcut_is_found_and_clean_classes_are_not(demo_run: Path) -> None:
    s = json.loads((demo_run / "summary.json").read_text())
    shortcut = s["classes"][SHORTCUT_CLASS]
    assert shortcut["flagged"]
    assert "background_focus" in shortcut["flags"]
    assert "background_reliance" in shortcut["flags"]  # attention AND intervention agree
    for name in CLASSES:
        if name != SHORTCUT_CLASS:
            assert not s["classes"][name]["flagged"], (name, s["classes"][name]["flags"])
    bf = {n: s["classes"][n]["metrics"]["gradcam"]["background_focus"]["mean"] for n in CLASSES}
    assert bf[SHORTCUT_CLASS] == max(bf.values())
    assert not s["gates"]["passed"]
    kinds = {(f["class"], f["kind"]) for f in s["findings"]}
    assert (SHORTCUT_CLASS, "background_reliance") in kinds


def test_samples_parquet_rows(demo_run: Path) -> None:
    t = pq.read_table(demo_run / "samples.parquet")
    s = json.loads((demo_run / "summary.json").read_text())
    assert t.num_rows == s["dataset"]["n_evaluated"] * len(s["methods"])
    cols = set(t.column_names)
    for c in (
        "index",
        "id",
        "method",
        "label",
        "pred",
        "correct",
        "confidence",
        "energy_in_mask",
        "background_focus",
        "energy_lift",
        "pointing_game",
        "iou",
        "auc",
        "status",
        "only_fg_correct",
    ):
        assert c in cols, c


def test_pdf_text_has_class_names_and_sections(demo_run: Path) -> None:
    reader = PdfReader(str(demo_run / "report.pdf"))
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    for name in CLASSES:
        assert name in text
    for section in ("Findings", "Methodology", "Provenance"):
        assert section in text


def test_html_is_self_contained(demo_run: Path) -> None:
    html = (demo_run / "report.html").read_text()
    assert "<script src=" not in html
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert 'src="data:image/png;base64,' in html
    assert SHORTCUT_CLASS in html


def test_report_rerenders_without_model(demo_run: Path, tmp_path: Path) -> None:
    from auditor.cli import main

    # a copy: the session's demo run is shared read-only by both test workers
    run = shutil.copytree(demo_run, tmp_path / "run", ignore=shutil.ignore_patterns("*.pdf"))
    before = (run / "summary.json").read_bytes()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    assert (run / "summary.json").read_bytes() == before


def test_null_baseline_in_summary_and_class_table(demo_run: Path) -> None:
    """Each class's chance level of energy in the object: its mean object area fraction
    (recomputed here from samples.parquet), in summary.json and as a class-table column."""
    import numpy as np

    s = json.loads((demo_run / "summary.json").read_text("utf-8"))
    t = pq.read_table(demo_run / "samples.parquet").to_pandas()
    prim = t[t.method == s["primary_method"]]
    for i, name in enumerate(CLASSES):
        area = prim[prim.label == i].mask_area.to_numpy(float)
        expected = float(np.nanmean(area))
        assert s["classes"][name]["null_baseline"]["area"] == pytest.approx(expected, abs=1e-9)
        # the primary method's energy reads against it: lift = energy / area, per sample
        assert 0 < expected < 1
    html = (demo_run / "report.html").read_text("utf-8")
    table = html[html.index('id="class-table"') :]
    table = table[: table.index("</table>")]
    assert "Chance energy" in table
