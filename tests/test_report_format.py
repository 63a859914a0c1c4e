"""Formatting filters, the Jinja environment, template lookup and atomic writes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import jinja2
import pytest

from auditor.errors import RenderError
from auditor.report import html as rhtml
from auditor.report.html import (
    atomic_write,
    fmt_ci,
    fmt_num,
    fmt_pct,
    make_environment,
    render_string,
    slugify,
    sort_value,
)


@pytest.mark.parametrize("value", [None, float("nan"), math.inf, -math.inf, "abc", [1]])
def test_missing_values_print_a_dash_never_nan_or_zero(value):
    assert fmt_pct(value) == "—"
    assert fmt_ci([value, 0.5]) == "—"
    if not isinstance(value, str):
        assert fmt_num(value) == "—"


def test_pct_num_ci_hand_values():
    assert fmt_pct(0.1234) == "12.3%"
    assert fmt_pct(1) == "100.0%"
    assert fmt_pct(0.0) == "0.0%"  # a real zero stays zero
    assert fmt_pct(0.5, 0) == "50%"
    assert fmt_num(0.5) == "0.50"
    assert fmt_num(12345) == "12,345"
    assert fmt_num(1234.5678, 1) == "1,234.6"
    assert fmt_num(True) == "yes"
    assert fmt_num("label") == "label"
    assert fmt_ci([0.1, 0.25]) == "[0.10, 0.25]"
    assert fmt_ci((0.1, 0.25), "pct") == "[10.0%, 25.0%]"
    assert fmt_ci({"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3}, "pct", 0) == "[10%, 30%]"
    assert fmt_ci({"mean": 0.2, "ci_low": None, "ci_high": 0.3}) == "—"
    assert fmt_ci("0.1,0.2") == "—"
    with pytest.raises(ValueError, match="kind"):
        fmt_ci([0.1, 0.2], "percent")


def test_sort_value_is_empty_for_missing_and_parses_back():
    assert sort_value(None) == ""
    assert sort_value(float("nan")) == ""
    assert float(sort_value(0.125)) == 0.125


def test_slug_is_id_safe_and_unique():
    names = ["Cat", "cat", "cat!", "<script>alert(1)</script>", "x" * 300, "日本", "", "a b"]
    slugs = [slugify(n) for n in names]
    assert len(set(slugs)) == len(names)
    for s in slugs:
        assert s and all(c.isascii() and (c.isalnum() or c == "-") for c in s)
        assert len(s) <= 49
    assert slugify("Cat / Dog").startswith("cat-dog-")
    assert slugify("Cat") == slugify("Cat")  # deterministic


def test_environment_autoescapes_and_is_strict(tmp_path):
    (tmp_path / "t.html.j2").write_text("<p>{{ name }}</p>{{ 0.5|pct }}{{ none|num }}")
    out = render_string("t.html.j2", {"name": "<b>&\"'"}, templates=tmp_path)
    assert out == "<p>&lt;b&gt;&amp;&#34;&#39;</p>50.0%—"
    (tmp_path / "u.html.j2").write_text("{{ missing }}")
    with pytest.raises(RenderError, match="missing"):
        render_string("u.html.j2", {}, templates=tmp_path)
    env = make_environment(tmp_path)
    assert env.autoescape is True
    assert env.undefined is jinja2.StrictUndefined


def test_user_templates_override_and_fall_back(tmp_path):
    (tmp_path / "_macros.html.j2").write_text(
        '{% macro badge(s) %}<i class="custom">{{ s }}</i>{% endmacro %}'
    )
    (tmp_path / "probe.html.j2").write_text(
        '{% import "_macros.html.j2" as m %}{{ m.badge("high") }}|{{ inline("report.js")[:12] }}'
    )
    out = render_string("probe.html.j2", {}, templates=tmp_path)
    assert out.startswith('<i class="custom">high</i>|')
    assert "/* cam-audi" in out  # report.js came from the built-in set


def test_templates_argument_must_be_a_directory(tmp_path):
    with pytest.raises(RenderError, match="templates"):
        make_environment(tmp_path / "nope")


def test_builtin_templates_found():
    dirs = rhtml.builtin_template_dirs()
    assert dirs and (dirs[0] / "report.html.j2").is_file()


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.html"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_atomic_write_failure_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("previous")

    def boom(src, dst):
        raise OSError("disk full")

    import auditor.audit.store as store

    monkeypatch.setattr(store.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_inline_asset_cannot_close_its_element(tmp_path):
    (tmp_path / "evil.js").write_text("var s = '</script><b>';")
    (tmp_path / "p.html.j2").write_text("<script>{{ inline('evil.js') }}</script>")
    out = render_string("p.html.j2", {}, templates=tmp_path)
    assert out.count("</script>") == 1
    with pytest.raises(RenderError, match="not found"):
        (tmp_path / "q.html.j2").write_text("{{ inline('nope.css') }}")
        render_string("q.html.j2", {}, templates=tmp_path)


def test_render_string_template_syntax_error_is_render_error(tmp_path):
    (tmp_path / "bad.html.j2").write_text("{% if %}")
    with pytest.raises(RenderError, match="bad.html.j2"):
        render_string("bad.html.j2", {}, templates=Path(tmp_path))
