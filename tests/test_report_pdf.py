"""PDF output: the locked-down URL fetcher (directly and end to end), subprocess, content."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from pathlib import Path

import pypdf
import pytest

from auditor.errors import RenderError
from auditor.report import pdf as rpdf
from auditor.report import render_pdf, render_report
from auditor.report.pdf import html_to_pdf, resolve_resource
from tests.report_fixtures import DEFAULT_CLASSES, LONG_NAME, XSS_NAME, cached_run_dir

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


# ---------------------------------------------------------------- the fetcher, directly


def test_fetcher_allows_data_uris(tmp_path):
    body, mime = resolve_resource(
        "data:image/png;base64," + base64.b64encode(PNG_1PX).decode(), tmp_path
    )
    assert body == PNG_1PX and mime == "image/png"
    assert resolve_resource("data:,a%20b", tmp_path) == (b"a b", "text/plain")
    with pytest.raises(RenderError, match="malformed"):
        resolve_resource("data:image/png;base64", tmp_path)


def test_fetcher_allows_files_inside_the_run(tmp_path):
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "a b.png").write_bytes(PNG_1PX)
    url = (tmp_path / "gallery" / "a b.png").as_uri()
    assert resolve_resource(url, tmp_path) == (PNG_1PX, "image/png")
    assert resolve_resource(url + "?x=1", tmp_path)[0] == PNG_1PX
    (tmp_path / "gallery" / "odd #?.png").write_bytes(PNG_1PX)
    odd = (tmp_path / "gallery").as_uri() + "/odd%20%23%3F.png"
    assert resolve_resource(odd, tmp_path)[0] == PNG_1PX


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://example.com/x.png",
        "https://example.com/x.png",
        "ftp://example.com/x.png",
        "file://evil.example.com/share/x.png",
        "//example.com/x.png",
        "x.png",
    ],
)
def test_fetcher_refuses_everything_else(tmp_path, url):
    with pytest.raises(RenderError):
        resolve_resource(url, tmp_path)


def test_fetcher_refuses_escapes_and_missing_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret.png").write_bytes(PNG_1PX)
    with pytest.raises(RenderError, match="outside the run directory"):
        resolve_resource((run / ".." / "secret.png").as_uri(), run)
    os.symlink(tmp_path / "secret.png", run / "link.png")
    with pytest.raises(RenderError, match="outside the run directory"):
        resolve_resource((run / "link.png").as_uri(), run)
    with pytest.raises(RenderError, match="missing"):
        resolve_resource((run / "nope.png").as_uri(), run)
    (run / "dir").mkdir()
    with pytest.raises(RenderError, match="not a file"):
        resolve_resource((run / "dir").as_uri(), run)


def test_weasyprint_fetcher_records_refusals(tmp_path):
    errors: list[str] = []
    fetcher = rpdf.make_url_fetcher(tmp_path, errors)
    with pytest.raises(RenderError):
        (fetcher.fetch if hasattr(fetcher, "fetch") else fetcher)("http://example.com/x.png")
    assert errors and "http://example.com/x.png" in errors[0]


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = cached_run_dir(tmp_path_factory.mktemp("pdf") / "run")
    out = render_report(run, html=True, pdf=True)
    assert out == {"html": run / "report.html", "pdf": run / "report.pdf"}
    return run


@pytest.fixture(scope="module")
def reader(run_dir) -> pypdf.PdfReader:
    return pypdf.PdfReader(io.BytesIO((run_dir / "report.pdf").read_bytes()))


def _text(reader: pypdf.PdfReader) -> str:
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def test_pdf_contains_sections_and_class_names(reader):
    text = _text(reader)
    flat = "".join(text.split())
    for title in (
        "Executive summary",
        "Findings",
        "Per-class results",
        "Methodology",
        "Provenance and limitations",
        "Contents",
    ):
        assert "".join(title.split()) in flat
    for name in DEFAULT_CLASSES:
        if name is LONG_NAME:
            continue
        assert "".join(name.split()) in flat, name
    assert flat.count("x" * 20) >= 1  # the 300-char name wraps but is printed
    assert XSS_NAME in text or "".join(XSS_NAME.split()) in flat


def test_pdf_pages_header_and_numbers(reader):
    n = len(reader.pages)
    assert 5 <= n <= 60
    text = _text(reader)
    assert f"Page 2 of {n}" in text and f"Page {n} of {n}" in text
    assert "shapes-cnn v2" in reader.pages[2].extract_text()  # running header
    sizes = {tuple(round(float(v)) for v in p.mediabox[2:]) for p in reader.pages}
    assert (595, 842) in sizes  # A4 portrait (the per-class table may use landscape)
    assert sizes <= {(595, 842), (842, 595)}


def test_pdf_outline_has_section_titles(reader):
    def titles(items):
        for it in items:
            if isinstance(it, list):
                yield from titles(it)
            else:
                yield it.title

    got = list(titles(reader.outline))
    for title in (
        "Executive summary",
        "Findings",
        "Per-class results",
        "Figures",
        "Galleries",
        "Methodology",
        "Provenance and limitations",
    ):
        assert title in got, got


def test_pdf_toc_has_page_numbers(reader):
    toc = reader.pages[1].extract_text()
    assert "Contents" in toc
    lines = [ln for ln in toc.splitlines() if "Executive summary" in ln]
    assert lines and lines[0].rstrip()[-1].isdigit(), lines


def test_template_with_foreign_resource_fails_end_to_end(run_dir, tmp_path):
    bad = "file:///etc/passwd"
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = (run / "report.pdf").read_bytes()
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "report.html.j2").write_text(
        f'<html><body><p>{{{{ title }}}}</p><img src="{bad}" alt="x"></body></html>'
    )
    with pytest.raises(RenderError, match="not allowed|outside the run") as info:
        render_pdf(run, templates=tpl)
    assert bad.removeprefix("file://") in str(info.value)
    assert (run / "report.pdf").read_bytes() == before  # previous PDF untouched
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "html, match",
    [
        ('<img src="http://example.com/x.png" alt="x">', "not allowed.*http://example.com"),
        ('<style>@import url("file:///etc/passwd");</style>x', "outside the run.*/etc/passwd"),
    ],
)
def test_foreign_resources_refused_by_weasyprint(run_dir, tmp_path, html, match):
    out = tmp_path / "x.pdf"
    with pytest.raises(RenderError, match=match):
        html_to_pdf(f"<html><body>{html}</body></html>", out, base_dir=run_dir)
    assert list(tmp_path.iterdir()) == []


def test_relative_file_inside_run_is_embedded(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    rel = sorted(p.name for p in (run / "gallery").glob("*.png"))[0]
    html = f'<html><body><img src="gallery/{rel}" alt="g" style="width:50mm"></body></html>'
    out = html_to_pdf(html, run / "t.pdf", base_dir=run)
    reader = pypdf.PdfReader(out)
    assert len(reader.pages) == 1
    assert len(reader.pages[0].images) == 1


def test_timeout_is_a_render_error_naming_the_limit(run_dir, tmp_path):
    with pytest.raises(RenderError, match=r"time limit of 0\.01 s"):
        html_to_pdf("<p>x</p>", tmp_path / "t.pdf", base_dir=tmp_path, timeout_s=0.01)
    assert list(tmp_path.iterdir()) == []


def test_timeout_validation(tmp_path):
    with pytest.raises(ValueError, match="`timeout_s` must be a positive"):
        html_to_pdf("<p>x</p>", tmp_path / "t.pdf", base_dir=tmp_path, timeout_s=0)
    with pytest.raises(TypeError, match="`timeout_s` must be a number"):
        html_to_pdf("<p>x</p>", tmp_path / "t.pdf", base_dir=tmp_path, timeout_s="9")  # type: ignore[arg-type]


def test_worker_crash_is_a_render_error(tmp_path):
    def fake_run(cmd, **kwargs):
        assert cmd[1:3] == ["-m", "auditor.report._pdf_worker"]
        assert kwargs["timeout"] == 5
        return subprocess.CompletedProcess(cmd, 1, b"", b"Traceback: boom")

    with pytest.raises(RenderError, match="exit 1.*boom"):
        html_to_pdf("<p>x</p>", tmp_path / "t.pdf", base_dir=tmp_path, timeout_s=5, runner=fake_run)
    assert list(tmp_path.iterdir()) == []


def test_render_document_generic(tmp_path):
    from auditor.report import render_document

    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "cmp.html.j2").write_text(
        "<html><body><h1>{{ title }}</h1><p>{{ output }}: {{ value|pct }}</p></body></html>"
    )
    out = tmp_path / "out"
    out.mkdir()
    render_document(
        "cmp.html.j2",
        {"title": "A <vs> B", "value": None},
        out / "c.html",
        out_pdf=out / "c.pdf",
        base_dir=out,
        templates=tpl,
    )
    assert (out / "c.html").read_text() == (
        "<html><body><h1>A &lt;vs&gt; B</h1><p>html: —</p></body></html>"
    )
    text = pypdf.PdfReader(out / "c.pdf").pages[0].extract_text()
    assert "A <vs> B" in text and "pdf: —" in text
    with pytest.raises(RenderError, match="base_dir"):
        render_document("cmp.html.j2", {}, out / "d.html", out_pdf=None, base_dir=tmp_path / "no")
