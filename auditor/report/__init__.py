"""Audit reports: one self-contained HTML file and a PDF, rendered from a run directory.

Rendering reads ``summary.json``, ``samples.parquet`` and ``gallery/*.png`` and never computes
a statistic. Templates are looked up in the user's ``templates`` folder first (files it lacks
fall back to the built-in set), then in ``auditor/templates`` (installed wheel), then in the
repository's ``templates/`` (source checkout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.report.assemble import build_context, build_view
from auditor.report.context import ReportLimits
from auditor.report.figures import cluster_panel, gallery_panel
from auditor.report.html import atomic_write, render_document, render_string
from auditor.report.pdf import html_to_pdf
from auditor.report.signoff import write_manifest
from auditor.report.storage import report_writes

__all__ = [
    "ReportLimits",
    "build_context",
    "build_view",
    "cluster_panel",
    "gallery_panel",
    "render_document",
    "render_html",
    "render_pdf",
    "render_report",
]

REPORT_TEMPLATE = "report.html.j2"


def _run_dir(run_dir: Path) -> Path:
    if not isinstance(run_dir, (str, Path)):
        raise TypeError(f"`run_dir` must be a path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    if not path.is_dir():
        from auditor.errors import RenderError

        raise RenderError(f"`run_dir` must be an existing directory, got {str(path)!r}")
    return path


def render_html(
    run_dir: Path, *, templates: Path | None = None, limits: ReportLimits | None = None
) -> Path:
    """Render ``run_dir/report.html`` (self-contained, works offline); return its path."""
    run_dir = _run_dir(run_dir)
    context = build_context(run_dir, limits=limits)
    text = render_string(REPORT_TEMPLATE, {**context, "output": "html"}, templates=templates)
    return atomic_write(run_dir / "report.html", text)


def render_pdf(
    run_dir: Path,
    *,
    templates: Path | None = None,
    timeout_s: float = 600,
    limits: ReportLimits | None = None,
) -> Path:
    """Render ``run_dir/report.pdf`` with WeasyPrint in a subprocess limited to ``timeout_s``."""
    run_dir = _run_dir(run_dir)
    context = build_context(run_dir, limits=limits)
    text = render_string(REPORT_TEMPLATE, {**context, "output": "pdf"}, templates=templates)
    return html_to_pdf(
        text,
        run_dir / "report.pdf",
        base_dir=run_dir,
        timeout_s=timeout_s,
        **pdf_options(context, run_dir),
    )


def render_report(
    run_dir: Path,
    *,
    html: bool = True,
    pdf: bool = True,
    templates: Path | None = None,
    pdf_timeout_s: float = 600,
    limits: ReportLimits | None = None,
) -> dict[str, Path]:
    """Render the report formats asked for; return ``{"html": path, "pdf": path}`` (as made).

    The context (figures, gallery images) is built once and shared by both formats.
    """
    run_dir = _run_dir(run_dir)
    out: dict[str, Path] = {}
    if not (html or pdf):
        return out
    with report_writes(run_dir):  # a full disk here: exit 3 naming the file and free space
        return _render_formats(run_dir, html, pdf, templates, pdf_timeout_s, limits)


def _render_formats(
    run_dir: Path,
    html: bool,
    pdf: bool,
    templates: Path | None,
    pdf_timeout_s: float,
    limits: ReportLimits | None,
) -> dict[str, Path]:
    from auditor.progress import phase

    out: dict[str, Path] = {}
    phase("rendering", f"report context and figures of {run_dir}")
    context = build_context(run_dir, limits=limits)
    if html:
        text = render_string(REPORT_TEMPLATE, {**context, "output": "html"}, templates=templates)
        out["html"] = atomic_write(run_dir / "report.html", text)
    if pdf:
        phase("pdf", f"{run_dir / 'report.pdf'} (WeasyPrint)")
        text = render_string(REPORT_TEMPLATE, {**context, "output": "pdf"}, templates=templates)
        out["pdf"] = html_to_pdf(
            text,
            run_dir / "report.pdf",
            base_dir=run_dir,
            timeout_s=pdf_timeout_s,
            **pdf_options(context, run_dir),
        )
    write_manifest(run_dir)  # checksums.json: what `auditor verify` checks
    return out


def pdf_options(context: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``[report] pdf_variant`` for WeasyPrint; PDF/A-3b embeds summary.json as an attachment."""
    variant = str(context.get("compliance", {}).get("pdf_variant") or "") or None
    attachments = (run_dir / "summary.json",) if variant == "pdf/a-3b" else ()
    return {"variant": variant, "attachments": attachments}
