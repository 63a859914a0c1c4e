"""Scroll regions around the report's tables (auditor.report.layout), without a browser."""

from __future__ import annotations

from auditor.report.layout import scroll_regions


def test_bare_data_table_is_wrapped_with_its_caption_as_label() -> None:
    doc = (
        "<p>x</p>"
        '<table class="data overall"><caption>Mean &amp; <b>CI</b></caption></table><p>y</p>'
    )
    out = scroll_regions(doc)
    assert out == (
        '<p>x</p><div class="table-wrap" tabindex="0" role="region" aria-label="Mean &amp; CI">'
        '<table class="data overall"><caption>Mean &amp; <b>CI</b></caption></table></div><p>y</p>'
    )


def test_existing_wrapper_gets_the_attributes_not_a_second_div() -> None:
    doc = '<div class="table-wrap">\n  <table class="data"><caption>A</caption></table>\n</div>'
    out = scroll_regions(doc)
    assert out.count("<div") == 1
    assert out.startswith('<div class="table-wrap" tabindex="0" role="region" aria-label="A">')


def test_idempotent_and_leaves_labelled_regions_alone() -> None:
    doc = (
        '<div class="table-wrap" tabindex="0" role="region" aria-label="Mine">'
        '<table class="data"><caption>B</caption></table></div>'
        '<table class="evidence"><tbody></tbody></table>'
    )
    once = scroll_regions(doc)
    assert 'aria-label="Mine"' in once and 'aria-label="B"' not in once
    assert 'aria-label="Table 2"' in once  # no caption: numbered in document order
    assert scroll_regions(once) == once


def test_key_value_tables_and_escaped_text_are_not_touched() -> None:
    doc = '<table class="kv"><tr><td>&lt;table class="data"&gt;</td></tr></table>'
    assert scroll_regions(doc) == doc


def test_label_is_plain_text_and_escaped_and_bounded() -> None:
    cap = "&quot;q&quot; &lt;script&gt; " + "x" * 300
    out = scroll_regions(f'<table class="data"><caption>{cap}</caption></table>')
    label = out.split('aria-label="', 1)[1].split('"', 1)[0]
    assert label.startswith("&#34;q&#34; &lt;script&gt; x")
    assert label.endswith("…") and len(label) < 200
