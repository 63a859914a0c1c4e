"""Scroll regions for the report's tables: wide tables scroll inside their own box.

A table wider than the screen must never widen the page (issue 25: no horizontal overflow
from 360 px to 1920 px). Each data table (``class="data ..."``) and evidence table is wrapped,
after rendering, in ``<div class="table-wrap" tabindex="0" role="region" aria-label=CAPTION>``:
the wrapper scrolls horizontally (CSS ``overflow-x: auto``), the keyboard can focus and scroll
it (WCAG 2.1.1; axe-core rule ``scrollable-region-focusable``), and a screen reader announces
it by the table's caption. A table already inside ``<div class="table-wrap">`` gets the
attributes on that wrapper instead of a second one.

Doing this once here, rather than in each template, covers every table a section adds (and
user templates) without each author remembering the three attributes. Autoescape guarantees
that the literal text ``<table`` in the rendered document only comes from template markup:
user values arrive as ``&lt;table``.
"""

from __future__ import annotations

import html
import re

from markupsafe import escape

__all__ = ["scroll_regions"]

#: Tables that get a scroll region: data tables and finding evidence (key-value tables wrap).
_WRAPPED_CLASSES = ("data", "evidence")
_TABLE_OPEN = re.compile(r"<table\b[^>]*>", re.IGNORECASE)
_CLASS_ATTR = re.compile(r"""\bclass\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_CAPTION = re.compile(r"<caption\b[^>]*>(.*?)</caption>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_WRAP_OPEN = re.compile(r"<div\s+class=\"table-wrap\"([^>]*)>\s*$", re.IGNORECASE)


def _classes(tag: str) -> set[str]:
    match = _CLASS_ATTR.search(tag)
    if not match:
        return set()
    return set((match.group(1) or match.group(2) or "").split())


def _label(table_html: str, number: int) -> str:
    """The caption as plain text (the region's accessible name); ``Table N`` without one."""
    match = _CAPTION.search(table_html)
    text = html.unescape(_TAG.sub(" ", match.group(1))) if match else ""
    text = " ".join(text.split())
    if len(text) > 160:
        text = text[:157].rstrip() + "…"
    return str(escape(text or f"Table {number}"))


def _region_attrs(label: str) -> str:
    return f' tabindex="0" role="region" aria-label="{label}"'


def scroll_regions(document: str) -> str:
    """``document`` with every data/evidence table inside a focusable, labelled scroll region.

    Idempotent: a wrapper that already carries ``role="region"`` is left as it is. Tables are
    not nested in the report's templates; a nested table is left unwrapped (its outer table's
    region scrolls it).
    """
    out: list[str] = []
    pos = 0
    number = 0
    for match in _TABLE_OPEN.finditer(document):
        start = match.start()
        if start < pos:  # inside a table already handled (nested): leave it
            continue
        end = document.find("</table>", match.end())
        if end < 0:
            break
        end += len("</table>")
        number += 1
        if not _classes(match.group(0)) & set(_WRAPPED_CLASSES):
            continue
        table = document[start:end]
        before = document[pos:start]
        label = _label(table, number)
        wrap = _WRAP_OPEN.search(before)
        if wrap:
            if "role=" not in wrap.group(1):
                opening = f'<div class="table-wrap"{wrap.group(1)}{_region_attrs(label)}>'
                before = before[: wrap.start()] + opening + before[wrap.end() :]
            out.append(before + table)
        else:
            out.append(f'{before}<div class="table-wrap"{_region_attrs(label)}>{table}</div>')
        pos = end
    out.append(document[pos:])
    return "".join(out)
