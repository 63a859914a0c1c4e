"""Fill choice of a multi-label (sigmoid) run: interventions that test the model, not the fill.

The multi-label form of :mod:`auditor.analysis.fill_choice` (issue 22 there, issue 26 here).
A sigmoid run's interventions are per (image, label it carries) with that label's mask: the
only-background image (object removed) and the only-object image (background removed), each
scored for THAT label (``<k>_correct`` = ``p_l >= [audit] threshold``). The audit loop also
scores them under the alternative fills (:data:`auditor.metrics.interventions.
ALTERNATIVE_FILLS`: blur, noise, image mean; the configured one skipped) and stores the outcome
as ``<k>_pred_<fill>`` = the label's index when the label is predicted present, ``L`` (the
number of labels: "absent") when not, -1 where not run.

Labels are not exclusive, so "every edited image called one class" (the single-label
collapse) has no meaning. A fill collapses when it moves **every** label the same way at once,
whatever the label's object or context showed. With ``chance_l`` the label's positive rate on
images that do not carry it (:func:`auditor.analysis.multilabel.label_chance`), per label with
at least :data:`MIN_N` edited images and Wilson intervals (Wilson 1927):

* **only-background** collapses when every tested label (at least two) is still predicted
  present on its background alone with a Wilson lower bound above ``chance_l +``
  :data:`auditor.analysis.fill_collapse.COLLAPSE_MARGIN`: the fill itself triggers the labels;
* **only-object** collapses when every tested label (at least two) that was detected above
  chance unedited (sensitivity's Wilson lower bound above ``chance_l``) drops: the edited
  present-rate's Wilson upper bound lies below the unedited sensitivity's Wilson lower bound.
  Every label switched off at once is what a fill read as "nothing here" does; one label
  that needs its context (a finding) does not collapse the intervention.

Then, as for classifiers: not collapsed: nothing changes; collapsed: the alternatives in the
order blur, noise, image mean; the FIRST that does not collapse replaces the configured
outcome (``<k>_correct`` from it, ``<k>_confidence`` NaN: not measured for alternatives);
every fill collapses: the intervention's outcome is removed from the analysed rows (NaN) so
that no finding rests on it, and the record says so. ``samples.parquet`` keeps the raw columns.
The record is summary.json ``intervention_fills`` (the classifier's shape, plus
``"test": "multi-label"``). A model that truly needs the context of every label looks like a
collapsed only-object fill under every fill too: it is then reported uninformative, never as
clean (stated in the record's reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.analysis.fill_collapse import COLLAPSE_MARGIN
from auditor.stats import wilson_interval

__all__ = ["MIN_N", "choose_label_fills", "label_fill_collapse"]

#: a label enters a collapse test with at least this many edited images
MIN_N = 5
ALTERNATIVE_FILLS: tuple[str, ...] = ("blur", "noise", "image_mean")


def label_fill_collapse(
    key: str,
    labels: np.ndarray,
    present: np.ndarray,
    unedited: np.ndarray,
    chance: Sequence[float | None],
    *,
    confidence: float = 0.95,
) -> tuple[bool, str]:
    """``(collapsed, reason)`` of one intervention ``key`` (``"only_bg"`` / ``"only_fg"``).

    ``labels``: the label of each (image, label) pair; ``present``: 1/0 the label predicted
    present on the edited image (NaN: not run); ``unedited``: 1/0 on the unedited image;
    ``chance[l]``: the label's positive rate on images without it (None: unknown, untested).
    """
    lab = np.asarray(labels, np.int64)
    pr = np.asarray(present, np.float64)
    un = np.asarray(unedited, np.float64)
    tested, hit = [], []
    for li in np.unique(lab):
        c = chance[int(li)] if 0 <= int(li) < len(chance) else None
        sel = (lab == li) & np.isfinite(pr)
        n = int(sel.sum())
        if c is None or n < MIN_N:
            continue
        tested.append(int(li))
        w = wilson_interval(int(pr[sel].sum()), n, confidence)
        if key == "only_bg":
            hit.append(w.low > c + COLLAPSE_MARGIN)
            continue
        ok = sel & np.isfinite(un)
        before = wilson_interval(int(un[ok].sum()), int(ok.sum()), confidence) if ok.any() else None
        hit.append(before is not None and before.low > c and w.high < before.low)
    if len(tested) < 2:
        return False, "too few labels with edited images to test"
    if not all(hit):
        return False, "no collapse"
    if key == "only_bg":
        return True, (
            f"every one of the {len(tested)} tested labels is still predicted present "
            f"on its background alone, above its chance rate + {COLLAPSE_MARGIN:g}"
        )
    return True, (
        f"every one of the {len(tested)} tested labels is switched off at once with "
        f"the background removed (a model that needs the context of every label "
        f"looks the same)"
    )


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), np.float64)


def _present_of(alt: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.where(alt >= 0, (alt == labels).astype(np.float64), np.nan)


def _choose_one(
    table: pa.Table, key: str, configured: str, chance: Sequence[float | None],
    confidence: float, sel: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray | None]:  # fmt: skip
    """(the record of one intervention, the outcome to use: present 1/0/NaN; None: keep)."""
    record: dict[str, Any] = {"configured": configured, "collapsed": False, "tried": [],
                              "used": configured, "reason": "not run",
                              "test": "multi-label"}  # fmt: skip
    col = f"{key}_correct"
    if col not in table.column_names:
        return record, None
    labels = np.asarray(table.column("label").to_numpy(), np.int64)
    base = _floats(table, col)
    if not np.isfinite(base[sel]).any():
        return record, None
    unedited = np.asarray(table.column("correct").to_numpy(zero_copy_only=False), np.float64)
    collapsed, reason = label_fill_collapse(
        key, labels[sel], base[sel], unedited[sel], chance, confidence=confidence
    )
    record.update(collapsed=collapsed, reason=reason)
    if not collapsed:
        return record, None
    for fill in ALTERNATIVE_FILLS:
        name = f"{key}_pred_{fill}"
        if fill == configured or name not in table.column_names:
            continue
        alt = np.asarray(table.column(name).to_numpy(), np.int64)
        if not (alt[sel] >= 0).any():
            continue
        record["tried"].append(fill)
        present = _present_of(alt, labels)
        again, _ = label_fill_collapse(
            key, labels[sel], present[sel], unedited[sel], chance, confidence=confidence
        )
        if not again:
            record["used"] = fill
            return record, present
    record["used"] = None  # every fill collapsed: the outcome is removed (uninformative)
    return record, np.full(table.num_rows, np.nan)


def _replace(table: pa.Table, key: str, present: np.ndarray) -> pa.Table:
    for name, values in ((f"{key}_correct", present),
                         (f"{key}_confidence", np.full(len(present), np.nan))):  # fmt: skip
        if name in table.column_names:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, pa.array(values, pa.float64()))
    return table


def choose_label_fills(
    table: pa.Table,
    *,
    primary: str,
    configured: str,
    chance: Sequence[float | None],
    confidence: float = 0.95,
) -> tuple[pa.Table, dict[str, Any] | None]:
    """``(the positive rows with each collapsed intervention's outcome replaced, the record)``
    (module docstring); ``None`` as record when no intervention ran. ``table``: the rows of
    (image, label) pairs where the image carries the label, every method (they share the
    images: the replacement applies to all; the test reads the primary method's rows)."""
    if "only_bg_correct" not in table.column_names or not table.num_rows:
        return table, None
    methods = np.asarray(table.column("method").to_pylist(), dtype=object)
    sel = methods == primary
    record: dict[str, Any] = {}
    for key in ("only_bg", "only_fg"):
        rec, present = _choose_one(table, key, configured, chance, confidence, sel)
        record[key] = rec
        if present is not None:
            table = _replace(table, key, present)
    return table, record
