"""Jinja environment, formatting filters, atomic writes and the generic document renderer.

There is exactly one environment factory, :func:`make_environment`: autoescape is on for every
template, undefined variables raise (:class:`jinja2.StrictUndefined`), and the number filters
print ``—`` for a missing value (``None``, NaN, ±inf), never ``nan`` or a fake ``0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from auditor.errors import RenderError

# The one formatter (auditor.format), re-exported: templates get them as filters.
from auditor.format import MISSING, fmt_ci, fmt_num, fmt_pct, slugify, sort_value
from auditor.report.layout import scroll_regions

__all__ = [
    "MISSING",
    "atomic_write",
    "builtin_template_dirs",
    "fmt_ci",
    "fmt_num",
    "fmt_pct",
    "make_environment",
    "render_document",
    "render_string",
    "slugify",
]


def builtin_template_dirs() -> list[Path]:
    """Built-in template folders, in lookup order.

    ``auditor/templates`` inside an installed wheel (pyproject maps the top-level
    ``templates/`` there), then ``<repo>/templates`` for an editable or source checkout.
    """
    package_dir = Path(__file__).resolve().parents[1]
    candidates = [package_dir / "templates", package_dir.parent / "templates"]
    return [c for c in candidates if c.is_dir()]


def _inline_asset(env: jinja2.Environment) -> Callable[[str], Markup]:
    """A template global ``inline(name)``: the raw text of a CSS/JS asset (user override first)."""

    def inline(name: str) -> Markup:
        if env.loader is None:  # pragma: no cover - make_environment always sets one
            raise RenderError("no template loader configured")
        try:
            source, _, _ = env.loader.get_source(env, name)
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template asset not found: {name}") from exc
        # Assets are template-author content; only guard against closing the element early.
        return Markup(source.replace("</", "<\\/"))  # noqa: S704

    return inline


def make_environment(templates: Path | None = None) -> jinja2.Environment:
    """The one Jinja environment: user overrides first, then the built-in templates.

    Autoescape is on for everything, undefined names raise, and the filters ``pct``, ``num``,
    ``ci``, ``sortval`` and ``slug`` are registered. The built-in templates are also reachable
    as ``builtin/<name>``, so that an override can extend the file it replaces.
    """
    loaders: list[jinja2.BaseLoader] = []
    if templates is not None:
        templates = Path(templates)
        if not templates.is_dir():
            raise RenderError(f"`templates` must be a directory, got {str(templates)!r}")
        loaders.append(jinja2.FileSystemLoader(str(templates)))
    builtin = builtin_template_dirs()
    if not builtin:
        raise RenderError("built-in report templates not found (auditor/templates or templates/)")
    loaders.extend(jinja2.FileSystemLoader(str(d)) for d in builtin)
    # the built-in set also under "builtin/": a user's report.html.j2 can
    # `{% extends "builtin/report.html.j2" %}` and replace single `{% block %}`s (sections)
    loaders.append(
        jinja2.PrefixLoader({"builtin": jinja2.FileSystemLoader([str(d) for d in builtin])})
    )
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(pct=fmt_pct, num=fmt_num, ci=fmt_ci, sortval=sort_value, slug=slugify)
    env.globals["inline"] = _inline_asset(env)
    env.globals["MISSING"] = MISSING
    return env


def render_string(
    template_name: str, context: Mapping[str, Any], *, templates: Path | None = None
) -> str:
    """Render ``template_name`` with ``context``; any template problem becomes RenderError.

    Every data table of the result sits in a focusable scroll region
    (:func:`auditor.report.layout.scroll_regions`).
    """
    env = make_environment(templates)
    try:
        return scroll_regions(env.get_template(template_name).render(**dict(context)))
    except RenderError:
        raise
    except jinja2.TemplateError as exc:
        lineno = getattr(exc, "lineno", None)
        where = f" (line {lineno})" if lineno else ""
        raise RenderError(
            f"template {template_name!r}{where}: {type(exc).__name__}: {exc}"
        ) from exc


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` atomically (:func:`auditor.audit.store.atomic_write_bytes`); return ``path``.

    A failure leaves any previous file at ``path`` untouched and no temporary file behind.
    """
    from auditor.audit.store import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return path


def render_document(
    template_name: str,
    context: Mapping[str, Any],
    out_html: Path,
    *,
    out_pdf: Path | None,
    base_dir: Path,
    templates: Path | None = None,
    pdf_timeout_s: float = 600,
) -> None:
    """Render a template to a self-contained HTML file, and optionally to PDF.

    The template is rendered twice when a PDF is asked for: with ``output = "html"`` for the
    browser file and with ``output = "pdf"`` for WeasyPrint (no script, full tables, table of
    contents with page numbers). Both files are written atomically; the PDF's URL fetcher only
    allows ``data:`` URIs and ``file:`` URLs inside ``base_dir``.
    """
    from auditor.report.pdf import html_to_pdf

    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise RenderError(f"`base_dir` must be an existing directory, got {str(base_dir)!r}")
    html_text = render_string(template_name, {**context, "output": "html"}, templates=templates)
    pdf_html = None
    if out_pdf is not None:
        pdf_html = render_string(template_name, {**context, "output": "pdf"}, templates=templates)
    atomic_write(Path(out_html), html_text)
    if out_pdf is not None and pdf_html is not None:
        html_to_pdf(pdf_html, Path(out_pdf), base_dir=base_dir, timeout_s=pdf_timeout_s)
