"""The report's typed view model (issue 21): ``build_view`` → frozen dataclasses per section,
flattened by ``ReportView.context()`` into the template names of docs/report.md."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from markupsafe import escape

from auditor.report import ReportLimits, build_context, build_view
from auditor.report.html import render_string
from auditor.report.panels import PanelLedger
from auditor.report.view import (
    ClassRow,
    FigureView,
    FindingView,
    GalleryView,
    GateRow,
    PanelView,
    ReportView,
    ViewItem,
)
from auditor.results import Stat
from tests.report_fixtures import cached_run_dir

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report.md"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_run_dir(tmp_path_factory.mktemp("view") / "run")


@pytest.fixture(scope="module")
def view(run_dir: Path) -> ReportView:
    return build_view(run_dir)


def _documented_keys() -> set[str]:
    """The keys of docs/report.md's "The template context" table."""
    text = DOCS.read_text(encoding="utf-8").split("## The template context", 1)[1]
    text = text.split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return keys


def test_every_documented_key_is_in_the_context(view: ReportView) -> None:
    documented = _documented_keys()
    assert {"classes", "findings", "galleries", "limits", "view"} <= documented  # parsed
    assert documented <= set(view.context())


def test_sections_are_frozen_and_typed(view: ReportView) -> None:
    assert all(isinstance(r, ClassRow) for r in view.table.rows)
    assert all(isinstance(f, FindingView) for f in view.findings)
    assert all(isinstance(g, GalleryView) for g in view.galleries)
    assert all(isinstance(f, FigureView) for f in view.figures)
    assert view.gates is not None and all(isinstance(g, GateRow) for g in view.gates.results)
    row = view.table.rows[0]
    assert all(isinstance(s, Stat) for s in row.m.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.findings = ()  # type: ignore[misc]


def test_key_access_for_dict_style_templates(view: ReportView) -> None:
    """``item["class"]`` reads ``cls`` (a keyword cannot be a field); unknown keys raise."""
    f = next(f for f in view.findings if f.cls is not None)
    assert f["class"] == f.cls and f["id"] == f.id and f.get("severity") == f.severity
    assert f.get("nope", 7) == 7
    with pytest.raises(KeyError):
        f["nope"]
    with pytest.raises(KeyError):
        f["_names"]  # methods are not keys


def test_templates_read_class_of_a_view(tmp_path: Path, view: ReportView) -> None:
    """A user template written against the dict context (``f.class``, ``g["class"]``,
    ``s.get("similarity")``) renders the view objects."""
    (tmp_path / "t.html.j2").write_text(
        "{% for f in findings %}{{ f.class }};{% endfor %}|{% for g in galleries %}"
        '{{ g["class"] }};{% endfor %}|{% for s in sanity %}{{ s.get("similarity") }}{% endfor %}',
        encoding="utf-8",
    )
    ctx = view.context()
    text = render_string("t.html.j2", ctx, templates=tmp_path)
    finding_part, gallery_part, _ = text.split("|")
    # autoescape stays on: class names are user strings
    assert finding_part == "".join(f"{escape(str(f.cls))};" for f in view.findings)
    assert gallery_part == "".join(f"{escape(g.cls)};" for g in view.galleries)
    assert "<script>" not in text and any("<script>" in str(f.cls) for f in view.findings)


def test_rows_by_risk_and_finding_ids_in_display_order(view: ReportView) -> None:
    risks = [r.risk for r in view.table.rows]
    known = [r for r in risks if r is not None]
    assert known == sorted(known, reverse=True)
    assert risks[: len(known)] == known  # missing risk last
    by_class: dict[str, list[str]] = {}
    for f in view.findings:
        if f.cls is not None:
            by_class.setdefault(f.cls, []).append(f.id)
    assert by_class  # the fixture has class findings
    for r in view.table.rows:
        assert list(r.finding_ids) == by_class.get(r.name, [])


def test_build_context_is_the_views_context(run_dir: Path, view: ReportView) -> None:
    ctx = build_context(run_dir)
    again = view.context()
    assert set(ctx) == set(again)
    for key in ("classes", "findings", "figures", "galleries", "gates", "methods", "limits"):
        assert ctx[key] == again[key], key
    assert ctx["view"] == view
    assert json.loads(json.dumps(ctx["limits"])) == dataclasses.asdict(ReportLimits())


def _panel(file: str, pid: str) -> PanelView:
    return PanelView(
        id=pid,
        file=file,
        label=None,
        pred=None,
        confidence=None,
        energy_in_mask=None,
        background_focus=None,
        why="",
        uri="data:image/png;base64,",
    )


def test_panel_ledger_draws_each_file_once() -> None:
    ledger = PanelLedger()
    a, b = _panel("gallery/a.png", "a"), _panel("gallery/b.png", "b")
    shown, refs = ledger.place([a, b], "finding-f1", "F1")
    assert shown == (a, b) and refs == ()
    shown, refs = ledger.place([_panel("gallery/b.png", "b"), _panel("gallery/c.png", "c")],
                               "gallery-x", "gallery of x")  # fmt: skip
    assert [p.id for p in shown] == ["c"]
    assert [(r.id, r.anchor, r.label) for r in refs] == [("b", "finding-f1", "F1")]


def test_caps_shape_the_view(run_dir: Path) -> None:
    view = build_view(run_dir, limits=ReportLimits(findings=1, gallery_classes=1, skipped=1))
    assert view.findings[0].panels and all(not f.panels for f in view.findings[1:])
    assert len(view.galleries) == 1 and view.n_gallery_classes >= 1
    assert len(view.provenance.skipped) == 1 and view.provenance.n_skipped == 3
    assert isinstance(view, ViewItem) and view["limits"] == view.limits


def test_a_block_override_replaces_one_section_only(tmp_path: Path, run_dir: Path) -> None:
    """A user's report.html.j2 extends the built-in one (``builtin/``) and replaces one
    ``{% block %}``: that section changes, every other byte stays; ``super()`` alone changes
    nothing. Autoescape stays on in the override."""
    ctx = {**build_context(run_dir), "output": "html"}
    plain = render_string("report.html.j2", ctx)
    same = tmp_path / "same"
    same.mkdir()
    (same / "report.html.j2").write_text(
        '{% extends "builtin/report.html.j2" %}{% block gates %}{{ super() }}{% endblock %}',
        encoding="utf-8",
    )
    assert render_string("report.html.j2", ctx, templates=same) == plain
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "report.html.j2").write_text(
        '{% extends "builtin/report.html.j2" %}{% block gates %}<section id="gates">'
        "<h2>Release gates</h2><p>{{ classes[0].name }} {{ '<i>' }}</p></section>\n{% endblock %}",
        encoding="utf-8",
    )
    text = render_string("report.html.j2", ctx, templates=custom)
    assert "&lt;i&gt;" in text and "<i>" not in text.split('id="gates"')[1].split("</section>")[0]
    start = plain.index('<section id="gates">')
    end = plain.index("</section>", start) + len("</section>")
    assert text[:start] == plain[:start]
    assert text[text.index("</section>", start) + len("</section>") :] == plain[end:]
