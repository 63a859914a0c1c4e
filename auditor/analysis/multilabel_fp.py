"""False positives explained by the background, in multi-label runs (issue 26).

With ``[audit] explain_negatives = k`` a sigmoid run also explains, per image, the ``k``
highest-scoring labels the image does NOT carry (``explained = "negative"``); their maps are
measured against the image's union mask (every object the image does carry). For label ``l``,
its **false positives** are those explained negatives with ``p_l >= [audit] threshold``.

``label_false_positive_background`` (medium) fires for ``l`` when

* at least :data:`MIN_FALSE_POSITIVES` explained false positives have a defined map
  (``background_focus`` finite: the image carries some object), and
* the mean background focus of the primary method over them has its bootstrap interval's
  lower bound above :data:`BACKGROUND_MARGIN` (most of the map's energy lies outside every
  object of the image: the label is called from the background, not from another label's
  object, which would be a confusion between labels rather than a background cue).

The margins were fixed before any test number was read. The interval is the percentile/BCa
bootstrap of the mean (Efron & Tibshirani 1993; :func:`auditor.stats.bootstrap_mean_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.results import Finding
from auditor.stats import bootstrap_mean_ci

__all__ = ["BACKGROUND_MARGIN", "MIN_FALSE_POSITIVES", "RULE", "false_positive_findings"]

MIN_FALSE_POSITIVES = 3
BACKGROUND_MARGIN = 0.5
RULE = (
    f"Multi-label runs with explain_negatives: flag a label (medium) when at least "
    f"{MIN_FALSE_POSITIVES} images without it score it at or above the threshold and the "
    f"primary method's maps of these false positives have a mean background focus (outside "
    f"every object of the image) whose interval's lower bound is above {BACKGROUND_MARGIN:.2f}."
)


def _col(t: pa.Table, name: str) -> np.ndarray:
    if name not in t.column_names:
        return np.full(t.num_rows, np.nan)
    return np.asarray(pc.fill_null(pc.cast(t.column(name), pa.float64()), np.nan), float)


def false_positive_findings(
    table: pa.Table, classes: Sequence[str], settings: Any
) -> list[Finding]:
    """The ``label_false_positive_background`` findings (module docstring; ids unset) from
    every (image, label) row of a multi-label run; none without explained negatives."""
    s = settings
    if not table.num_rows or "explained" not in table.column_names:
        return []
    prim = table.filter(pc.equal(table.column("method"), s.primary))
    lab = np.asarray(prim.column("label").to_numpy(), np.int64)
    neg = np.asarray(prim.column("explained").to_pylist(), object) == "negative"
    p, bf = _col(prim, "confidence"), _col(prim, "background_focus")
    out: list[Finding] = []
    for li, name in enumerate(classes):
        mine = neg & (lab == li)
        fp = mine & (p >= s.threshold)
        v = bf[fp & np.isfinite(bf)]
        if v.size < MIN_FALSE_POSITIVES:
            continue
        iv = bootstrap_mean_ci(v, confidence=s.confidence, n_boot=max(200, int(s.bootstrap)),
                               seed=int(s.seed) + li)  # fmt: skip
        if not iv.low > BACKGROUND_MARGIN:
            continue
        out.append(Finding(
            kind="label_false_positive_background", severity="medium", cls=name,
            title=f"'{name}' is predicted on images without it, from the background",
            message=(
                f"'{name}' is scored at or above {s.threshold:g} on {int(fp.sum())} of the "
                f"{int(mine.sum())} explained images that do not carry it; on the "
                f"{v.size} of them with objects, the {s.primary} maps put "
                f"{iv.estimate:.0%} of their energy outside every object (interval "
                f"{iv.low:.0%}–{iv.high:.0%}): the label is called from the background."
            ),
            evidence={"n_false_positives": int(fp.sum()), "n_explained_negatives":
                      int(mine.sum()), "n_with_objects": int(v.size),
                      "background_focus": iv.estimate, "ci": [iv.low, iv.high],
                      "margin": BACKGROUND_MARGIN, "method": s.primary},
        ))  # fmt: skip
    return out
