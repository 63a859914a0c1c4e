"""Which maps are empty (issue 27): per method, the samples whose map carries no spatial
evidence, read from the status columns of ``samples.parquet``.

A map is empty when the engine reports ``zero_map``, ``constant_activation``,
``zero_gradient``, ``nonfinite`` or ``method_failed`` (``cam_status``), or the metrics report
``zero_cam``, ``constant_cam`` or ``nonfinite`` (``status``); :data:`EMPTY_STATUSES`. Samples
whose LOGITS were not finite are left out (no prediction, no map: the ``nonfinite_logits``
finding reports them). The finding rule ``empty_maps``
(:mod:`auditor.analysis.findings.maps`) reads the result. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: statuses (either column) meaning the map holds no spatial evidence
EMPTY_STATUSES: tuple[str, ...] = (
    "zero_map",
    "constant_activation",
    "zero_gradient",
    "nonfinite",
    "method_failed",
    "zero_cam",
    "constant_cam",
)


def empty_maps_by_method(table: pa.Table) -> Mapping[str, tuple[np.ndarray, np.ndarray]]:
    """``{method: (labels, empty)}`` over the samples with finite logits; ``{}`` when the
    table has no ``method``/``label`` column or no status column."""
    names = set(table.column_names)
    if not {"method", "label"} <= names or not names & {"cam_status", "status"}:
        return {}
    empty = pa.array(np.zeros(table.num_rows, bool))
    for column in ("cam_status", "status"):
        if column in names:
            hit = pc.fill_null(pc.is_in(table.column(column), pa.array(EMPTY_STATUSES)), False)
            empty = pc.or_(empty, hit)
    keep = (
        pc.fill_null(pc.not_equal(table.column("status"), "nonfinite_logits"), True)
        if "status" in names
        else pa.array(np.ones(table.num_rows, bool))
    )
    methods = table.column("method").to_pylist()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
    flags = np.asarray(empty.to_numpy(zero_copy_only=False), bool)
    kept = np.asarray(keep.to_numpy(zero_copy_only=False), bool)
    method_arr = np.asarray(methods, dtype=object)
    for m in dict.fromkeys(methods):
        sel = (method_arr == m) & kept
        out[str(m)] = (labels[sel].astype(int), flags[sel])
    return out
