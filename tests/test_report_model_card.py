"""Model card export (issue 25): model-card-toolkit's field structure, Markdown, CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import make_run_dir  # noqa: E402

from auditor.cli import main  # noqa: E402
from auditor.report.signoff import verify_run, write_manifest  # noqa: E402

# The subset of model-card-toolkit's schema (v0.0.2) that we fill: field -> type.
SCHEMA: dict[str, dict[str, type]] = {
    "model_details": {
        "name": str,
        "overview": str,
        "version": dict,
        "owners": list,
        "references": list,
    },
    "model_parameters": {"model_architecture": str, "data": list},
    "quantitative_analysis": {"performance_metrics": list},
    "considerations": {"use_cases": list, "limitations": list, "ethical_considerations": list},
}


def _validate(card: dict) -> None:
    assert set(card) == {"schema_version", *SCHEMA}
    for section, fields in SCHEMA.items():
        for name, kind in fields.items():
            assert isinstance(card[section][name], kind), (section, name)
    assert set(card["model_details"]["version"]) == {"name", "date"}
    for m in card["quantitative_analysis"]["performance_metrics"]:
        assert set(m) <= {"type", "value", "slice", "confidence_interval"}
        if "confidence_interval" in m:
            ci = m["confidence_interval"]
            assert float(ci["lower_bound"]) <= float(m["value"]) <= float(ci["upper_bound"])
    for x in card["considerations"]["limitations"]:
        assert set(x) == {"description"} and x["description"]
    # the types model-card-toolkit's JSON schema v0.0.2 gives these fields (strings, also for
    # values and interval bounds; "date" a full-date; "link" a URI)
    assert isinstance(card["schema_version"], str)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", card["model_details"]["version"]["date"])
    for o in card["model_details"]["owners"]:
        assert set(o) <= {"name", "contact"} and all(isinstance(v, str) for v in o.values())
    for d in card["model_parameters"]["data"]:
        assert set(d) <= {"name", "link", "sensitive", "graphics", "description"}
        assert "link" not in d or "://" in d["link"]
    for m in card["quantitative_analysis"]["performance_metrics"]:
        assert all(isinstance(m[k], str) for k in ("type", "value", "slice") if k in m)
        ci = m.get("confidence_interval", {})
        assert set(ci) <= {"lower_bound", "upper_bound"}
        assert all(isinstance(v, str) for v in ci.values())
    for key in ("use_cases", "limitations"):
        assert all(set(x) == {"description"} for x in card["considerations"][key])
    for x in card["considerations"]["ethical_considerations"]:
        assert set(x) <= {"name", "mitigation_strategy"}


def test_export_writes_a_valid_model_card(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["run"]["config"]["report"] = {
        "intended_use": "shape triage",
        "provider": "Acme",
        "contact": "qa@example.org",
        "model_version": "2.3.1",
    }
    (run / "summary.json").write_text(json.dumps(summary))
    write_manifest(run)
    assert main(["export", str(run)]) == 0
    card = json.loads((run / "model_card.json").read_text())
    _validate(card)
    d = card["model_details"]
    assert d["version"]["name"] == "2.3.1"
    assert d["owners"] == [{"name": "Acme", "contact": "qa@example.org"}]
    assert card["considerations"]["use_cases"] == [{"description": "shape triage"}]
    overall = card["quantitative_analysis"]["performance_metrics"][0]
    assert overall["type"] == "accuracy" and "slice" not in overall
    assert float(overall["value"]) == round(summary["overall"]["accuracy"], 4)
    tri = [
        m
        for m in card["quantitative_analysis"]["performance_metrics"]
        if m.get("slice") == "class=triangle" and m["type"].startswith("background_focus")
    ]
    assert len(tri) == 1 and tri[0]["value"] == "0.7689"
    md = (run / "model_card.md").read_text()
    assert md.startswith("# Model card: shapes-cnn v2") and "shape triage" in md
    assert "| background_focus (gradcam) | class=triangle | 0.7689 |" in md
    assert verify_run(run) == []  # the manifest was extended with the two files


def test_export_refuses_a_tampered_run(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    write_manifest(run)
    (run / "samples.parquet").write_bytes(b"tampered")
    assert main(["export", str(run)]) == 2
    assert "samples.parquet changed" in capsys.readouterr().err
    assert not (run / "model_card.json").exists()
