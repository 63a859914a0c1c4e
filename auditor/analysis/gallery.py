"""Which samples the report shows: the gallery's choice (the drawing is in auditor.report).

Flagged classes (at most 20, in class order) show their samples with the highest background
focus (primary method) first; for contrast, the unflagged class with the lowest risk shows
its lowest background focus first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.format import finite_or_none
from auditor.results import AuditResult, GalleryPanel

__all__ = ["GalleryPick", "choose_gallery"]

#: Flagged classes that get a gallery.
MAX_GALLERY_CLASSES = 20


@dataclass(frozen=True)
class GalleryPick:
    """One sample to draw: its dataset index and the panel's data (``file`` still empty)."""

    index: int
    panel: GalleryPanel


def choose_gallery(
    result: AuditResult, table: pa.Table, per_class: int
) -> dict[str, list[GalleryPick]]:
    """``{class: [GalleryPick, ...]}`` in display order (flagged classes, then the contrast)."""
    if table.num_rows == 0 or per_class == 0:
        return {}
    primary = result.primary_method
    prim = table.filter(pc.equal(table.column("method"), primary))
    cols = {
        c: prim.column(c).to_numpy(zero_copy_only=False)
        for c in (
            "index",
            "id",
            "label",
            "pred",
            "confidence",
            "background_focus",
            "energy_in_mask",
        )
    }
    names = list(result.dataset.classes) or list(result.classes)
    classes = result.classes
    flagged = [c for c, v in classes.items() if v.flagged]
    ranked = sorted((c for c in classes if classes[c].n), key=lambda c: classes[c].risk or 0.0)
    contrast = [c for c in ranked if c not in flagged][:1]
    chosen = [(c, "flagged") for c in flagged[:MAX_GALLERY_CLASSES]]
    chosen += [(c, "contrast") for c in contrast]
    bf_all = cols["background_focus"].astype(float)
    out: dict[str, list[GalleryPick]] = {}
    for cname, why in chosen:
        ci = names.index(cname)
        sel = np.flatnonzero(cols["label"] == ci)
        key = bf_all[sel]
        key = np.where(np.isfinite(key), key, -np.inf)
        order = sel[np.argsort(-key if why == "flagged" else key, kind="stable")]
        picks = []
        for j in order[:per_class]:
            picks.append(
                GalleryPick(
                    index=int(cols["index"][j]),
                    panel=GalleryPanel(
                        id=str(cols["id"][j]),
                        file="",
                        label=cname,
                        pred=(  # -1: non-finite logits, no prediction (never the last class)
                            names[int(cols["pred"][j])]
                            if 0 <= int(cols["pred"][j]) < len(names)
                            else "none (non-finite logits)"
                        ),
                        confidence=float(cols["confidence"][j]),
                        energy_in_mask=finite_or_none(cols["energy_in_mask"][j]),
                        background_focus=finite_or_none(cols["background_focus"][j]),
                        why="highest background focus"
                        if why == "flagged"
                        else "lowest-risk class, for contrast",
                    ),
                )
            )
        out[cname] = picks
    return out
