"""Report context of a multi-label run (issue 26): the "Labels" section, one row per label.

Reads only summary.json ``labels`` (:mod:`auditor.analysis.multilabel`); formats nothing
itself beyond choosing what to show (rendering never computes).
"""

from __future__ import annotations

from typing import Any

from auditor.results import AuditResult, thaw

__all__ = ["labels_context"]


def labels_context(result: AuditResult) -> dict[str, Any] | None:
    """``{"n_images", "threshold", "rows": [...]}`` for ``_labels.html.j2``; ``None`` for a
    single-label run (the section is then absent)."""
    block = result.extra.get("labels")
    if not block:
        return None
    data = thaw(block)
    rows = []
    for name, e in data.get("labels", {}).items():
        cls = result.classes.get(name)
        bf = cls.stat(result.primary_method, "background_focus") if cls is not None else None
        rows.append(
            {
                "name": name,
                "flagged": bool(cls is not None and cls.flagged),
                "background_focus": bf,
                **e,
            }
        )
    return {
        "n_images": data.get("n_images"),
        "threshold": data.get("threshold"),
        "rows": rows,
    }
