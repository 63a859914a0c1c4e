"""junit.xml (auditor.report.junit): gates and action findings, read back with junitparser."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - parsing our own output
from pathlib import Path
from typing import Any

import pytest

from auditor.export import write_junit as export_write_junit
from auditor.report.junit import junit_xml, write_junit
from auditor.results import AuditResult

junitparser = pytest.importorskip("junitparser", reason="junitparser (test extra) not installed")

HOSTILE = "cat\x1b]0;pwned\x07 <b>&"


def _summary() -> dict[str, Any]:
    gate = {"quantity": "background_focus", "stat": "mean", "bound": "max", "note": ""}
    return {
        "primary_method": "gradcam",
        "methods": ["gradcam"],
        "model": {"name": "net-v2", "sha256": "ab" * 32},
        "dataset": {"sha256": "cd" * 32},
        "run": {
            "started": "2026-03-01T11:59:00+02:00",
            "finished": "2026-03-01T12:00:30+02:00",
            "duration_s": 90.25,
        },
        "classes": {},
        "gates": {
            "passed": False,
            "results": [
                {
                    **gate,
                    "rule": "max_background_focus",
                    "class": HOSTILE,
                    "value": 0.82,
                    "threshold": 0.6,
                    "passed": False,
                },
                {
                    **gate,
                    "rule": "max_background_focus",
                    "class": "dog",
                    "value": 0.31,
                    "threshold": 0.6,
                    "passed": True,
                },
                {
                    **gate,
                    "rule": "max_findings_high",
                    "class": None,
                    "quantity": "findings_high",
                    "stat": "count",
                    "value": None,
                    "threshold": 0.0,
                    "passed": False,
                    "note": "no findings computed",
                },
            ],
        },
        "findings": [
            {
                "id": "F1",
                "class": HOSTILE,
                "kind": "background_focus",
                "severity": "high",
                "title": "attention on the background",
                "message": "98% of the map is outside.",
                "evidence": {"background_focus": 0.98, "ci": [0.97, 0.99], "members": ["a"]},
                "examples": ["img/1.png", "img/2.png"],
            },
            {
                "id": "F2",
                "class": "dog",
                "kind": "border_focus",
                "severity": "medium",
                "title": "attention on the border",
                "message": "frame",
                "evidence": {},
            },
            {
                "id": "F3",
                "class": None,
                "kind": "sanity_check",
                "severity": "low",
                "title": "a note",
                "message": "n",
                "evidence": {},
            },
            {
                "id": "F4",
                "class": "dog",
                "kind": "strategy_cluster",
                "severity": "info",
                "title": "info",
                "message": "i",
                "evidence": {},
            },
        ],
    }


@pytest.fixture
def xml_path(tmp_path: Path) -> Path:
    return write_junit(tmp_path / "junit.xml", AuditResult.from_json(_summary()))


def test_suites_counts_time_and_timestamp(xml_path: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(xml_path))
    suites = {s.name: s for s in xml}
    assert set(suites) == {"gates: net-v2", "findings: net-v2"}
    gates, findings = suites["gates: net-v2"], suites["findings: net-v2"]
    assert (gates.tests, gates.failures, gates.errors) == (3, 2, 0)
    # medium and high findings only: F1 and F2, both failures; low (F3) and info (F4) are not
    assert (findings.tests, findings.failures) == (2, 2)
    assert gates.time == pytest.approx(90.25)
    # 12:00:30 at +02:00 is 10:00:30 UTC, written without an offset (xs:dateTime)
    assert gates.timestamp == "2026-03-01T10:00:30" == findings.timestamp
    root = ET.parse(xml_path).getroot()  # noqa: S314
    assert (root.get("tests"), root.get("failures"), root.get("time")) == ("5", "4", "90.250")
    props = {p.name: p.value for p in gates.properties()}
    assert props["model_sha256"] == "ab" * 32 and props["primary_method"] == "gradcam"


def test_failed_gate_has_type_message_and_body(xml_path: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(xml_path))
    gates = next(s for s in xml if s.name.startswith("gates"))
    cases = {c.name: c for c in gates}
    assert len(cases) == 3
    passed = cases["max_background_focus[dog]"]
    assert passed.is_passed and passed.time == 0
    hostile = next(c for n, c in cases.items() if n.startswith("max_background_focus[cat"))
    (failure,) = hostile.result
    assert failure.type == "gate"
    assert failure.message == "background_focus (mean) = 0.82, max allowed 0.6"
    assert "value: 0.82" in failure.text and "max allowed: 0.6" in failure.text
    assert "\x1b" not in hostile.name and "\\x1b]0;pwned" in hostile.name  # shown, inert
    assert "<b>&" in hostile.name  # escaped in the file, read back as text
    (missing,) = cases["max_findings_high"].result
    assert "not available" in missing.message and "note: no findings computed" in missing.text


def test_one_case_per_action_finding_with_its_evidence(xml_path: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(xml_path))
    findings = next(s for s in xml if s.name.startswith("findings"))
    cases = list(findings)
    assert [c.name.split()[0] for c in cases] == ["F1", "F2"]  # high before medium
    f1 = cases[0]
    assert f1.classname == "cam-auditor.findings.background_focus"
    assert "[high]" in f1.name
    (failure,) = f1.result
    assert failure.type == "finding.high"
    assert failure.message == "attention on the background"
    body = failure.text
    assert body.startswith("98% of the map is outside.")
    assert "[0.97, 0.99]" in body and "0.98" in body
    assert "members" not in body  # long member lists stay in summary.json
    assert "examples: img/1.png, img/2.png" in body
    assert cases[1].result[0].type == "finding.medium"


def test_no_gates_no_findings_is_two_empty_suites(tmp_path: Path) -> None:
    data = AuditResult.from_json({"classes": {}, "model": {"name": "m"}})
    xml = junitparser.JUnitXml.fromstring(junit_xml(data).decode("utf-8"))
    assert [(s.name, s.tests, s.failures) for s in xml] == [
        ("gates: m", 0, 0),
        ("findings: m", 0, 0),
    ]
    root = ET.fromstring(junit_xml(data))  # noqa: S314
    assert root.get("timestamp") is None  # no run time recorded: no made-up timestamp


def test_export_alias_and_typed_input(tmp_path: Path) -> None:
    a = export_write_junit(tmp_path / "a.xml", _summary(), suite="gates: custom")
    assert junitparser.JUnitXml.fromfile(str(a))  # a summary.json mapping works
    assert 'name="gates: custom"' in a.read_text("utf-8")
    with pytest.raises(TypeError, match="`summary` must be"):
        write_junit(tmp_path / "b.xml", ["not", "a", "summary"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`result` must be an AuditResult"):
        junit_xml({"classes": {}})  # type: ignore[arg-type]
