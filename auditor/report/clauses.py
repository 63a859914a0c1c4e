"""The clause map: where the report answers items of EU AI Act Annex IV / Art. 10, 13, 15,
NIST AI RMF MEASURE 2.x and ISO/IEC 42001 A.6-A.7, kept as data (``clauses.json``).

Each item: ``framework``, ``item``, ``asks`` (our summary of what it asks), ``section`` (the
report section id that answers it, or ``null`` when the report does not) and ``answer``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["CLAUSES_FILE", "clause_map"]

CLAUSES_FILE = Path(__file__).with_name("clauses.json")
_FIELDS = ("framework", "item", "asks", "section", "answer")


@lru_cache(maxsize=1)
def _load() -> tuple[str, tuple[dict[str, Any], ...]]:
    doc = json.loads(CLAUSES_FILE.read_text(encoding="utf-8"))
    items = doc.get("items")
    if not isinstance(items, list):
        raise ValueError(f"{CLAUSES_FILE}: 'items' must be a list")
    for i, it in enumerate(items):
        missing = [k for k in _FIELDS if k not in it]
        if missing:
            raise ValueError(f"{CLAUSES_FILE}: item {i} lacks {missing}")
    return str(doc.get("note", "")), tuple(items)


def clause_map() -> dict[str, Any]:
    """``{"note": str, "items": [...]}`` (copies; the data file is read once)."""
    note, items = _load()
    return {"note": note, "items": [dict(it) for it in items]}
