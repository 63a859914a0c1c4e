"""The report's detection section (issue 26): the typed result -> template values.

Reads only ``summary.json`` (``detection`` and ``classes.<c>.detection``, written by
:mod:`auditor.audit.detection_finish`); computes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auditor.results import AuditResult, thaw

__all__ = ["detection_context"]

#: (key in classes.<c>.detection, column title) of the per-class table, in order
COLUMNS = (
    ("recall", "Recall"),
    ("precision", "Precision"),
    ("object_only_recall", "Recall, object only"),
    ("context_recall_drop", "Recall drop without context"),
    ("context_only_hit_rate", "Found on context alone"),
)


def _gallery(entries: Any, run_dir: Path | None) -> list[dict[str, Any]]:
    """The drawn gallery panels (``detection.gallery``) with their PNGs as ``data:`` URIs
    (read from inside the run directory only); none without ``run_dir``."""
    if run_dir is None or not isinstance(entries, list | tuple):
        return []
    from auditor.report.context import _Images  # same package: the one safe PNG reader

    images = _Images(run_dir)
    return [{**thaw(e), "uri": images.uri(e["file"])} for e in entries
            if isinstance(e, Mapping) and e.get("file")]  # fmt: skip


def detection_context(result: AuditResult, run_dir: Path | None = None) -> dict[str, Any] | None:
    """``None`` for a classifier run; else the section's values (see _detection.html.j2);
    ``run_dir``: where the gallery PNGs are (``detection.gallery``)."""
    block = result.extra.get("detection")
    if not isinstance(block, Mapping):
        return None
    primary = result.primary_method
    rows = []
    for name, c in result.classes.items():
        d = c.extra.get("detection")
        if not isinstance(d, Mapping):
            continue
        cells = [
            {"key": k, "value": d.get(k), "ci": tuple(d.get(f"{k}_ci") or (None, None))}
            for k, _ in COLUMNS
        ]
        energy = c.stat(primary, "energy_in_mask")
        lift = c.stat(primary, "energy_lift")
        rows.append({
            "name": name, "n_boxes": d.get("n_boxes"), "n_found": d.get("n_found"),
            "n_false_positives": d.get("n_false_positives"), "cells": cells,
            "flagged": c.flagged,
            "energy": None if energy is None else energy.to_json(),
            "lift": None if lift is None else lift.to_json(),
        })  # fmt: skip
    return {
        "settings": thaw(block),
        "columns": [t for _, t in COLUMNS],
        "rows": rows,
        "primary": primary,
        "gallery": _gallery(block.get("gallery"), run_dir),
    }
