"""Interventions that test the model, not the fill: choose a fill that does not collapse.

An intervention whose edited images of every class collapse to one prediction
(:mod:`auditor.analysis.fill_collapse`) measures the fill, not the model. The audit loop also
predicts the only-background and only-foreground images with the alternative fills
(:data:`auditor.metrics.interventions.ALTERNATIVE_FILLS`: blur, noise with the image's own
statistics, the image's own mean colour; per channel, so one grey value on grey data) and
stores the predicted classes (``only_bg_pred_<fill>``, ``only_fg_pred_<fill>``). Before any
rule reads the interventions, for each of the two:

1. the configured fill is checked for collapse; no collapse: it is used, nothing changes;
2. collapsed: the alternatives are checked in the fixed order blur, noise, image mean (the
   configured one skipped); the FIRST that does not collapse replaces the configured fill's
   outcome: ``only_bg_pred`` and ``<k>_correct = [pred == label]`` (``<k>_confidence`` is not
   measured for the alternatives: NaN);
3. every fill collapses (or none was run): the configured outcome stays, and the rules treat
   the intervention as uninformative (``intervention_uninformative``, info): it never becomes
   a class finding by itself.

The collapse tests and their margin are fill_collapse's, the same for every fill and every
run, fixed before any benchmark number was read. The choice goes into ``summary.json`` under
the additive key ``intervention_fills``::

    {"only_bg": {"configured": "mean", "collapsed": true, "tried": ["blur"],
                 "used": "blur", "reason": "..."}, "only_fg": {...}}

and into the report's limitations. ``samples.parquet`` keeps every fill's raw columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.analysis.fill_collapse import only_bg_collapse, only_fg_collapse

__all__ = ["ALTERNATIVE_FILLS", "choose_fills", "fill_sentences"]

#: the order alternatives are tried in (the same as auditor.metrics.interventions', torch-free)
ALTERNATIVE_FILLS: tuple[str, ...] = ("blur", "noise", "image_mean")


def _col(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def _collapsed(
    key: str, labels: np.ndarray, preds: np.ndarray, alt_pred: np.ndarray, n_classes: int,
    confidence: float,
) -> tuple[bool, str]:
    """Collapse check of one intervention from its predicted classes (-1: not run)."""
    if key == "only_bg":
        res = only_bg_collapse(labels, preds, alt_pred, n_classes, confidence=confidence)
    else:
        correct = (preds == labels).astype(np.float64)
        # -1: not run; -2 (an older run's configured fill): a wrong class, not known which
        fg = np.where(alt_pred != -1, (alt_pred == labels).astype(np.float64), np.nan)
        known = alt_pred if (alt_pred != -2).all() else None
        res = only_fg_collapse(
            labels, correct, fg, n_classes, confidence=confidence, preds=preds,
            only_fg_pred=known,
        )  # fmt: skip
    return res.collapsed, res.reason


def _configured_pred(table: pa.Table, key: str, labels: np.ndarray) -> np.ndarray | None:
    """The configured fill's predicted classes (only_fg stores correctness only: label where
    correct, -2 (a wrong class, never a label) where wrong, -1 where not run)."""
    if f"{key}_pred" in table.column_names:
        return _col(table, f"{key}_pred", np.int64)
    if key == "only_bg" or "only_fg_correct" not in table.column_names:
        return None
    fg = _col(table, "only_fg_correct", np.float64)
    return np.where(np.isfinite(fg), np.where(fg > 0.5, labels, -2), -1).astype(np.int64)


def _choose_one(
    table: pa.Table, key: str, configured: str, n_classes: int, confidence: float, sel: Any
) -> tuple[dict[str, Any], np.ndarray | None]:
    """(the record of one intervention, the chosen alternative's predictions or None)."""
    all_labels = _col(table, "label", np.int64)
    labels = all_labels[sel]
    preds = _col(table, "pred", np.int64)[sel]
    base = _configured_pred(table, key, all_labels)
    record: dict[str, Any] = {"configured": configured, "collapsed": False, "tried": [],
                              "used": configured, "reason": "not run"}  # fmt: skip
    if base is None:
        return record, None
    # only_fg's configured check uses the stored correctness (fill_collapse's test)
    collapsed, reason = _collapsed(key, labels, preds, base[sel], n_classes, confidence)
    record.update(collapsed=collapsed, reason=reason)
    if not collapsed:
        return record, None
    for fill in ALTERNATIVE_FILLS:
        name = f"{key}_pred_{fill}"
        if fill == configured or name not in table.column_names:
            continue
        alt = _col(table, name, np.int64)
        if not (alt[sel] >= 0).any():
            continue
        record["tried"].append(fill)
        alt_collapsed, _ = _collapsed(key, labels, preds, alt[sel], n_classes, confidence)
        if not alt_collapsed:
            record["used"] = fill
            return record, alt
    record["used"] = None  # every fill collapsed: uninformative
    return record, None


def _replace(table: pa.Table, key: str, alt: np.ndarray) -> pa.Table:
    labels = _col(table, "label", np.int64)
    correct = np.where(alt >= 0, (alt == labels).astype(np.float64), np.nan)
    cols = {f"{key}_correct": pa.array(correct, pa.float64()),
            f"{key}_confidence": pa.array(np.full(len(alt), np.nan), pa.float64())}  # fmt: skip
    cols[f"{key}_pred"] = pa.array(alt, pa.int64())
    for name, values in cols.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


def choose_fills(
    table: pa.Table,
    *,
    classes: Sequence[str],
    primary: str,
    configured: str,
    confidence: float = 0.95,
) -> tuple[pa.Table, dict[str, Any] | None]:
    """``(rows with each collapsed intervention's outcome replaced, the record)`` (module
    docstring); the record is ``None`` when no intervention ran. Rows of every method share
    the images, so the replacement applies to all of them; the check reads the primary's."""
    if "only_bg_pred" not in table.column_names or not table.num_rows:
        return table, None
    methods = np.asarray(table.column("method").to_pylist(), dtype=object)
    sel = methods == primary
    record: dict[str, Any] = {}
    for key in ("only_bg", "only_fg"):
        rec, alt = _choose_one(table, key, configured, len(classes), confidence, sel)
        record[key] = rec
        if alt is not None:
            table = _replace(table, key, alt)
    return table, record


def fill_sentences(record: Mapping[str, Any] | None) -> list[str]:
    """The report's sentences about replaced or uninformative fills (limitations)."""
    out: list[str] = []
    words = {"only_bg": "object-removed (background only)", "only_fg": "background-removed"}
    for key, rec in (record or {}).items():
        if not isinstance(rec, Mapping) or not rec.get("collapsed"):
            continue
        what = words.get(key, key)
        if rec.get("used"):
            out.append(
                f"The {what} images with the configured '{rec.get('configured')}' fill collapsed "
                f"to one prediction ({rec.get('reason')}): the fill, not the model, moved the "
                f"predictions, so the '{rec.get('used')}' fill, which does not collapse, is used "
                f"for that intervention instead."
            )
        else:
            tried = ", ".join(rec.get("tried") or ()) or "none available"
            out.append(
                f"The {what} images collapsed to one prediction with the '{rec.get('configured')}'"
                f" fill and with every alternative tried ({tried}): that intervention is "
                f"uninformative for this model and data, and no finding rests on it."
            )
    return out
