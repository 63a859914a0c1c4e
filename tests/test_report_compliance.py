"""Verdict first, compliance record, limitations, clause map, glossary, archival PDF (issue 25)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import make_run_dir  # noqa: E402

from auditor.compliance import parse_compliance  # noqa: E402
from auditor.config import load_config  # noqa: E402
from auditor.errors import ConfigError  # noqa: E402
from auditor.report import render_html, render_report  # noqa: E402
from auditor.report.clauses import clause_map  # noqa: E402
from auditor.report.compliance import derived_limitations  # noqa: E402
from auditor.report.context import load_result  # noqa: E402
from auditor.report.verdict import failed_gate_sentence, verdict_block  # noqa: E402
from auditor.results import GateResult  # noqa: E402

BASE = """
[model]
factory = "auditor.demo:build_model"

[data]
manifest = "data/manifest.csv"
classes = ["a", "b"]
input_size = 32
"""

RECORD = {
    "intended_use": "Triage of shape photos; not for diagnosis",
    "provider": "Acme Vision",
    "owner": "QA team",
    "model_version": "2.3.1",
    "document_id": "AUD-2026-017",
    "contact": "qa@example.org",
    "previous_run": "runs/v2.3.0",
    "limitations": ["Only daylight images were collected."],
    "pdf_variant": "pdf/a-3b",
    "author": "Acme QA",
    "datasheet": {
        "source": "Shapes lab archive",
        "collection": "2024 scans",
        "labelling": "two annotators",
        "known_gaps": "no night images",
    },
}


def _config(tmp_path: Path, report: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.csv").write_text("image,label\nx.png,a\n")
    p = tmp_path / "audit.toml"
    p.write_text(BASE + "\n[report]\n" + report)
    return p


def test_report_section_accepts_the_compliance_record(tmp_path):
    text = """
intended_use = "triage"
document_id = "AUD-1"
limitations = ["x"]
pdf_variant = "PDF/A-3b"
[report.datasheet]
source = "lab"
known_gaps = "night"
"""
    cfg = load_config(_config(tmp_path, text))
    rec = parse_compliance(cfg.raw["report"])
    assert rec.intended_use == "triage" and rec.document_id == "AUD-1"
    assert rec.pdf_variant == "pdf/a-3b" and rec.limitations == ("x",)
    assert rec.datasheet["source"] == "lab" and rec.datasheet["collection"] == ""


@pytest.mark.parametrize(
    "text, match",
    [
        ('intended_uses = "x"', r"unknown key \[report\] intended_uses"),
        ('[report.datasheet]\nsorce = "x"', r"unknown key \[report.datasheet\] sorce"),
        ('limitations = "one"', "limitations must be a list of strings"),
        ("document_id = 3", "document_id must be a string"),
        ('pdf_variant = "pdf/a-1b"', "pdf_variant must be one of"),
    ],
)
def test_bad_report_keys_are_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, text))


def test_failed_gate_sentences_carry_value_and_threshold():
    g = GateResult(
        rule="max_background_focus", passed=False, cls="cat", value=0.7689, threshold=0.6
    )
    assert failed_gate_sentence(g) == (
        "Background focus of class 'cat' is 0.769, above the maximum of 0.600 set by gate "
        "max_background_focus."
    )
    g = GateResult(rule="min_accuracy", passed=False, value=0.5, threshold=0.8)
    assert "over the whole dataset is 0.500, below the minimum of 0.800" in (
        failed_gate_sentence(g)
    )
    g = GateResult(
        rule="max_background_focus",
        passed=False,
        cls="x",
        value=None,
        threshold=0.6,
        note="no masks",
    )
    assert "could not be measured (no masks)" in failed_gate_sentence(g)
    g = GateResult(rule="max_findings_high", passed=False, value=4.0, threshold=0.0)
    assert failed_gate_sentence(g) == (
        "The number of high-severity findings over the whole dataset is 4, above the maximum "
        "of 0 set by gate max_findings_high."
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = make_run_dir(tmp_path_factory.mktemp("compliance"))
    summary = json.loads((d / "summary.json").read_text())
    summary["run"]["config"]["report"] = RECORD
    summary["sanity"]["cam"] = {"similarity": 0.93, "threshold": 0.5, "trustworthy": False, "n": 32}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_verdict_block_from_the_fixture(run):
    result = load_result(run)
    v = verdict_block(result)
    failed = [g for g in result.gates.results if not g.passed]
    assert v["ship"] is False and len(v["failed_gates"]) == len(failed) == 2
    assert (
        v["headline"] == f"Do not ship as is: 2 of {len(result.gates.results)} release "
        "gate checks failed."
    )
    assert "'triangle' is 0.769" in v["failed_gates"][0]["sentence"]
    top = v["top_findings"][0]
    assert (
        top["severity"] == "high"
        and "95% interval 72.6% to 81.2% over 12 images" in (top["sentence"])
    )


def test_derived_limitations_name_this_run(run):
    lims = derived_limitations(load_result(run))
    text = " ".join(lims)
    assert "Method cam failed the model-randomisation sanity check" in text
    assert "3 of 75 samples could not be evaluated" in text
    assert "The maps are computed at features.6" in text


def test_clause_map_covers_the_frameworks():
    cm = clause_map()
    items = cm["items"]
    fw = {i["framework"] for i in items}
    assert fw == {"EU AI Act", "NIST AI RMF", "ISO/IEC 42001"}
    names = {i["item"] for i in items}
    for needed in (
        "Annex IV 2(g)",
        "Art. 10(2)(f)-(g)",
        "Art. 13(3)(b)",
        "Art. 15(1)-(3)",
        "MEASURE 2.1",
        "MEASURE 2.11",
        "A.6.2.4",
        "A.7.4",
    ):
        assert needed in names
    assert any(i["section"] is None for i in items)  # what the report does NOT answer


def test_html_verdict_first_record_glossary_and_clauses(run):
    html = render_html(run).read_text()
    cover = html[html.index('id="cover"') : html.index('id="summary"')]
    assert "Do not ship as is" in cover and "above the maximum of 0.600" in cover
    assert cover.index("above the maximum") < cover.index('class="severity-counts"')
    assert "AUD-2026-017" in cover and "2.3.1" in cover
    # gates have their own section, listed in the navigation, not inside Methodology
    assert '<a href="#gates">Release gates</a>' in html
    meth = html[html.index('id="methodology"') : html.index('id="provenance"')]
    assert "Gate checks" not in meth
    for needed in (
        "Shapes lab archive",
        "no night images",
        "Only daylight images",
        "(stated by the provider)",
        'id="gloss-risk"',
        'href="#gloss-risk"',
        "MEASURE 2.11",
        "Not answered",
        "failed sanity check",
        "How to read this report",
        'lang="en"',
    ):
        assert needed in html, needed
    # every section id the clause map links to exists
    for sec in {i["section"] for i in clause_map()["items"] if i["section"]}:
        assert f'id="{sec}"' in html, sec
    # readable labels: no snake_case flag, no raw timing keys
    flags = re.findall(r'<span class="flag">([^<]*)</span>', html)
    assert flags and all("_" not in f for f in flags)


@pytest.fixture(scope="module")
def pdf(run) -> Path:
    return render_report(run, html=False, pdf=True)["pdf"]


def test_pdf_metadata_tags_and_attachment(pdf, run):
    import pypdf

    reader = pypdf.PdfReader(pdf)
    meta = reader.metadata
    assert meta.title and "shapes-cnn" in meta.title
    assert meta.author == "Acme QA"
    assert meta.creation_date is not None
    root = reader.trailer["/Root"]
    assert root.get("/Lang") == "en"
    assert "/StructTreeRoot" in root and root["/MarkInfo"]["/Marked"]
    assert "/Metadata" in root  # PDF/A carries XMP metadata
    attached = reader.attachments
    assert list(attached) == ["summary.json"]
    assert attached["summary.json"][0] == (run / "summary.json").read_bytes()


def test_pdf_has_no_near_empty_page(pdf):
    import pypdf

    reader = pypdf.PdfReader(pdf)
    # the last page may be short; every other page holds at least ~6 lines of text or a figure
    for i, page in enumerate(reader.pages[:-1]):
        text = page.extract_text() or ""
        has_image = bool(page.images)
        assert len(text.strip()) > 250 or has_image, f"page {i + 1} is nearly empty: {text!r}"


@pytest.mark.skipif(shutil.which("qpdf") is None, reason="qpdf not installed (make system-deps)")
def test_qpdf_check_is_clean(pdf):
    proc = subprocess.run(["qpdf", "--check", str(pdf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
