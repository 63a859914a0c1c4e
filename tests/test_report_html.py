"""The HTML report rendered from a synthetic run directory."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import markupsafe
import numpy as np
import pytest

from auditor.errors import RenderError
from auditor.report import ReportLimits, build_context, render_html, render_report
from auditor.report.html import slugify
from tests.report_fixtures import (
    DEFAULT_CLASSES,
    LONG_NAME,
    QUOTE_NAME,
    cached_run_dir,
    make_run_dir,
)


class _Doc(HTMLParser):
    """Collects tags with attributes and the visible text (outside script/style)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = 0
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(text: str) -> _Doc:
    doc = _Doc()
    doc.feed(text)
    return doc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return cached_run_dir(tmp_path_factory.mktemp("html") / "run")


@pytest.fixture(scope="module")
def report(run_dir) -> str:
    out = render_report(run_dir, pdf=False)
    assert out == {"html": run_dir / "report.html"}
    assert not (run_dir / "report.pdf").exists()
    return out["html"].read_text(encoding="utf-8")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _edit_summary(run: Path, fn) -> None:
    path = run / "summary.json"
    summary = json.loads(path.read_text())
    fn(summary)
    path.write_text(json.dumps(summary))


def test_hostile_class_names_render_literally(report):
    doc = parse(report)
    text = "".join(doc.text)
    for name in DEFAULT_CLASSES:
        assert name in text, name[:30]
    assert "<script>alert(1)" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert sum(1 for tag, _ in doc.tags if tag == "script") == 1  # only the report's own JS
    assert "<b>bold</b>" not in report  # QUOTE_NAME contains markup: escaped
    assert str(markupsafe.escape(QUOTE_NAME)) in report
    assert LONG_NAME in text
    assert "overflow-wrap: anywhere" in report


def test_self_contained_no_external_resources(report):
    doc = parse(report)
    for tag, attrs in doc.tags:
        assert tag != "link", attrs
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is None:
                continue
            assert not re.match(r"^\s*(https?:|//|file:|ftp:)", value, re.I), (tag, value[:80])
            if key == "src":
                assert value.startswith("data:image/png;base64,"), (tag, value[:40])
            if key == "href":
                assert value.startswith("#"), value[:80]
    assert "@import" not in report and "url(http" not in report


def test_accessibility_alt_scope_captions(report):
    doc = parse(report)
    imgs = [a for t, a in doc.tags if t == "img"]
    assert len(imgs) >= 8  # figures + gallery panels + cluster views
    assert all(a.get("alt") for a in imgs)
    n_tables = sum(1 for t, _ in doc.tags if t == "table")
    n_captions = sum(1 for t, _ in doc.tags if t == "caption")
    assert n_captions == n_tables
    in_thead = False
    for tag, attrs in doc.tags:
        if tag == "thead":
            in_thead = True
        elif tag == "tbody":
            in_thead = False
        elif tag == "th" and in_thead:
            assert attrs.get("scope") == "col"


def test_ids_unique_and_class_anchors(report, run_dir):
    doc = parse(report)
    ids = [a["id"] for _, a in doc.tags if a.get("id")]
    assert len(ids) == len(set(ids))
    for name in DEFAULT_CLASSES:
        assert f"class-{slugify(name)}" in ids
    # every in-page link points at an existing id
    for _, attrs in doc.tags:
        href = attrs.get("href")
        if href and href.startswith("#"):
            assert href[1:] in ids, href


def test_class_rows_sorted_by_risk_desc(report, run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = sorted(summary["classes"], key=lambda c: (-summary["classes"][c]["risk"], c))
    doc = parse(report)
    order = [a["id"] for t, a in doc.tags if t == "tr" and (a.get("id") or "").startswith("class-")]
    assert order == [f"class-{slugify(c)}" for c in expected]


def test_sections_and_content(report):
    text = " ".join("".join(parse(report).text).split())
    for title in (
        "Executive summary",
        "Findings",
        "Per-class results",
        "Figures",
        "Galleries",
        "Methodology",
        "Provenance and limitations",
        "Limitations of CAM-based evidence",
        "Skipped samples",
        "Software versions",
    ):
        assert title in text
    assert "a" * 64 in text  # model sha256
    assert "2 of 6 gate checks failed" in text
    assert "Figure 1. Background focus per class" in text
    assert "img/broken-0.png" in text and "cannot decode image" in text
    assert "What to do next" in text and "Inspect the galleries" in text


def test_missing_values_print_a_dash(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)

    def edit(s):
        stats = s["classes"]["circle"]["metrics"]["gradcam"]
        stats["iou"] = {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_nan": 12}
        del stats["auc"]
        s["classes"]["circle"]["accuracy"] = None
        s["classes"]["circle"]["risk"] = None

    _edit_summary(run, edit)
    page = render_html(run).read_text()
    doc = parse(page)
    text = "".join(doc.text)
    assert not re.search(r"\bnan\b", text, re.I)
    assert not re.search(r"\bNone\b", text)
    row = page.split(f'id="class-{slugify("circle")}"', 1)[1].split("</tr>", 1)[0]
    assert row.count("—") >= 4  # accuracy, iou, auc, risk
    assert 'data-value=""' in row
    # a class without a risk score sorts last
    order = [a["id"] for t, a in doc.tags if t == "tr" and (a.get("id") or "").startswith("class-")]
    assert order[-1] == f"class-{slugify('circle')}"


def test_render_error_leaves_previous_report_untouched(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (run / "report.html").write_bytes(b"previous report")
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "report.html.j2").write_text("<p>" + "x" * 10000 + "</p>{{ no_such_value }}")
    with pytest.raises(RenderError, match="no_such_value"):
        render_html(run, templates=tpl)
    assert (run / "report.html").read_bytes() == b"previous report"
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_missing_gallery_file_is_an_error(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (run / "report.html").write_bytes(b"previous report")
    victim = sorted((run / "gallery").glob("class*.png"))[0]
    victim.unlink()
    with pytest.raises(RenderError, match=re.escape(victim.name)):
        render_html(run)
    assert (run / "report.html").read_bytes() == b"previous report"


def test_gallery_path_outside_run_is_refused(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    (tmp_path / "outside.png").write_bytes(
        (sorted((run / "gallery").glob("*.png"))[0]).read_bytes()
    )

    def edit(s):
        first = next(iter(s["gallery"]))
        s["gallery"][first][0]["file"] = "../outside.png"

    _edit_summary(run, edit)
    with pytest.raises(RenderError, match="outside the run directory"):
        render_html(run)


def test_limits_validate():
    with pytest.raises(ValueError, match="`top_n` must be a non-negative int, got -1"):
        ReportLimits(top_n=-1)


def test_sections_that_did_not_run(tmp_path):
    run = make_run_dir(
        tmp_path / "run",
        interventions=False,
        faithfulness=False,
        gallery=False,
        methods=("gradcam",),
        n_skipped=0,
        class_names=("a", "b"),
        shortcut_classes=("b",),
        n_per_class=4,
    )
    page = render_html(run).read_text()
    text = " ".join("".join(parse(page).text).split())
    assert "Background interventions did not run" in text
    assert "Faithfulness metrics (deletion/insertion) did not run" in text
    table = page.split('id="class-table"', 1)[1].split("</table>", 1)[0]
    assert "Drop, object only" not in table  # (the glossary still defines the term)
    assert "No sample was skipped" in text
    assert "fig-interventions" not in page and "fig-method-agreement" not in page


def test_bad_run_directories(tmp_path, run_dir):
    with pytest.raises(RenderError, match="run_dir"):
        render_html(tmp_path / "missing")
    with pytest.raises(RenderError, match="summary.json not found"):
        render_html(tmp_path)
    run = _copy(run_dir, tmp_path)
    _edit_summary(run, lambda s: s.update(schema_version=2))
    with pytest.raises(RenderError, match="schema_version must be 1, got 2"):
        render_html(run)
    (run / "summary.json").write_text("{not json")
    with pytest.raises(RenderError, match="cannot read summary"):
        render_html(run)
    with pytest.raises(TypeError, match="run_dir"):
        render_html(42)  # type: ignore[arg-type]


def test_render_report_nothing_asked(run_dir):
    assert render_report(run_dir, html=False, pdf=False) == {}


def test_caps_for_big_runs(run_dir):
    from auditor.report.html import render_string

    limits = ReportLimits(
        table_page=2,
        skipped=1,
        gallery_classes=1,
        gallery_per_class=1,
        top_n=2,
        findings=1,
        gate_rows=2,
        pdf_table_rows=3,
    )
    ctx = build_context(run_dir, limits=limits)
    assert len(ctx["skipped"]) == 1 and ctx["n_skipped"] == 3
    assert len(ctx["galleries"]) == 1
    g0 = ctx["galleries"][0]
    # the one panel is the first finding's: the gallery refers to it instead of drawing it again
    assert len(g0["panels"]) + len(g0["panel_refs"]) == 1
    bf = next(f for f in ctx["figures"] if f["id"] == "fig-background-focus")
    assert "2 highest-risk of 6 classes" in bf["caption"]
    conf = next(f for f in ctx["figures"] if f["id"] == "fig-confusion")
    assert "Restricted to the 2 highest-risk of 6" in conf["caption"]
    assert len(ctx["findings"]) == 4
    assert ctx["findings"][0]["panels"] and not ctx["findings"][1]["panels"]
    page = render_string("report.html.j2", {**ctx, "output": "html"})
    text = " ".join("".join(parse(page).text).split())
    assert 'data-page="2"' in page and 'id="show-all"' in page
    assert "the first 1 are listed" in text
    assert "Showing galleries of the 1 highest-risk of 2 classes" in text
    assert "Showing 1 of 2 panels" in text
    assert "The 1 most severe of 4 findings are shown in full" in text
    assert "Other findings" in text
    assert "2 of 6 gate checks listed (2 failed in total)" in text
    assert page.count('<article class="finding') == 1
    html_rows = page.count('<tr id="class-')
    pdf = render_string("report.html.j2", {**ctx, "output": "pdf"})
    assert html_rows == 6 and pdf.count('<tr id="class-') == 3
    assert "lists the 3 highest-risk of 6 classes" in " ".join(pdf.split())
    assert "<script" not in pdf  # no JavaScript in the PDF variant
    # PDF variant references gallery files (fetched from the run directory), HTML inlines them
    assert 'src="gallery/' in pdf and 'src="gallery/' not in page


def test_scatter_downsampled_deterministically(run_dir):
    """Above ``scatter_points`` the scatter draws a fixed uniform sample and says so; the
    histogram keeps every sample."""
    from auditor.report.context import downsample

    n = 6 * 12  # the default fixture: 6 classes x 12 samples for the primary method
    small = build_context(run_dir, limits=ReportLimits(scatter_points=10))
    full = build_context(run_dir)
    cap = {f["id"]: f["caption"] for f in small["figures"]}
    assert f"10 of {n} samples shown" in cap["fig-energy-confidence"]
    assert "shown" not in {f["id"]: f["caption"] for f in full["figures"]}["fig-energy-confidence"]
    hist = next(f for f in small["figures"] if f["id"] == "fig-energy-distribution")
    assert hist == next(f for f in full["figures"] if f["id"] == "fig-energy-distribution")
    again = build_context(run_dir, limits=ReportLimits(scatter_points=10))
    assert [f["uri"] for f in again["figures"]] == [f["uri"] for f in small["figures"]]
    pos = downsample(1000, 50)
    assert pos.size == 50 and np.array_equal(pos, np.sort(np.unique(pos)))
    assert np.array_equal(pos, downsample(1000, 50)) and pos.max() > 500  # not a prefix
    assert np.array_equal(downsample(7, 50), np.arange(7))
    assert np.array_equal(downsample(70, 0), np.arange(70))


def test_samples_read_per_row_group(tmp_path):
    """A samples.parquet of several row groups (as shards write it) gives the same arrays."""
    import pyarrow.parquet as pq

    from auditor.report.context import _read_samples
    from tests import report_fixtures

    run = make_run_dir(tmp_path / "run", gallery=False, clusters=False)
    one = _read_samples(run, "gradcam")
    table = pq.read_table(run / "samples.parquet")
    pq.write_table(table, run / "samples.parquet", row_group_size=7)
    assert pq.ParquetFile(run / "samples.parquet").num_row_groups > 5
    many = _read_samples(run, "gradcam")
    assert one is not None and many is not None and set(one) == set(many)
    for k in one:
        assert np.array_equal(one[k], many[k], equal_nan=True)
    assert one["correct"].size == len(report_fixtures.DEFAULT_CLASSES) * 12
