"""Per-class and overall statistics from the per-sample rows (one row per sample × method).

* metric means per class and overall with bootstrap confidence intervals (BCa; Efron 1987)
  that exclude NaN and count it (:func:`metric_block`);
* accuracies with Wilson intervals (Wilson 1927);
* intervention accuracies and the only-foreground drop with a paired bootstrap interval over
  the same samples (Xiao et al. 2021);
* faithfulness means on the seeded subset, per-sample status counts, the confusion matrix and
  the agreement between methods (Spearman).

Everything returns :mod:`auditor.results` objects; nothing here decides a finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.analysis.empty_maps import empty_maps_by_method
from auditor.config import AuditSettings
from auditor.results import (
    ClassResult,
    Confusion,
    Interventions,
    MethodAgreement,
    OverallResult,
    Stat,
    freeze,
)
from auditor.stats import (
    Interval,
    bootstrap_mean_ci,
    grouped_bootstrap_mean_ci,
    paired_bootstrap_diff_ci,
    wilson_interval,
)

__all__ = [
    "PrimaryColumns",
    "accuracy_with_ci",
    "class_results",
    "col",
    "confusion_matrix",
    "faithfulness_block",
    "method_agreement",
    "metric_block",
    "overall_result",
    "status_counts",
]

#: Intervention correctness columns of samples.parquet, and the summary key of each.
INTERVENTION_CORRECT = {
    "only_fg_correct": "only_fg_accuracy",
    "only_bg_correct": "only_bg_accuracy",
    "mixed_rand_correct": "mixed_rand_accuracy",
}


def col(table: pa.Table, name: str, dtype: Any = None) -> np.ndarray:
    """Column ``name`` as numpy (all-NaN when absent); ``dtype=float`` maps nulls to NaN."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    arr = table.column(name).to_numpy(zero_copy_only=False)
    if dtype is not None:
        if dtype is float:
            arr = (
                np.asarray([np.nan if v is None else v for v in arr], float)
                if arr.dtype == object
                else arr.astype(float)
            )
        else:
            arr = arr.astype(dtype)
    return arr


def rows_of_method(table: pa.Table, method: str) -> pa.Table:
    """The rows of ``method``: ``col(table, "method", str) == method`` computed in Arrow
    (no Python string per row; a null method is not ``method`` either way)."""
    if "method" in table.column_names and pa.types.is_string(table.schema.field("method").type):
        return table.filter(pc.equal(table.column("method"), method))
    return table.filter(pa.array(col(table, "method", str) == method))


def stat_of(iv: Any) -> Stat:
    """The :class:`Stat` of an :class:`auditor.stats.Interval`."""
    return _stat(iv)


def _stat(iv: Any) -> Stat:
    d = iv.to_dict()
    return Stat(d.get("mean"), d.get("ci_low"), d.get("ci_high"), d.get("n", 0), d.get("n_nan", 0))


def metric_block(
    table: pa.Table,
    classes: Sequence[str],
    methods: Sequence[str],
    metrics: Sequence[str],
    settings: AuditSettings,
) -> tuple[dict[str, dict[str, Stat]], dict[str, dict[str, dict[str, Stat]]]]:
    """(overall ``{method: {metric: Stat}}``, per class ``{class: {method: {metric: Stat}}}``).

    A class without samples gets an empty :class:`Stat` (mean ``None``, ``n`` 0).
    """
    overall: dict[str, dict[str, Stat]] = {}
    per_class: dict[str, dict[str, dict[str, Stat]]] = {c: {} for c in classes}
    method_col = col(table, "method", str)
    labels_all = col(table, "label", int)
    conf, n_boot, seed = settings.confidence, settings.bootstrap, settings.seed
    for method in methods:
        sel = method_col == method
        labels = labels_all[sel]
        overall[method] = {}
        for c in classes:
            per_class[c][method] = {}
        for metric in metrics:
            if metric not in table.column_names:
                continue
            values = col(table, metric, float)[sel]
            overall[method][metric] = _stat(
                bootstrap_mean_ci(values, confidence=conf, n_boot=n_boot, seed=seed)
            )
            grouped = grouped_bootstrap_mean_ci(
                values, labels, confidence=conf, n_boot=n_boot, seed=seed
            )
            for ci, c in enumerate(classes):
                per_class[c][method][metric] = _stat(grouped[ci]) if ci in grouped else Stat()
    return overall, per_class


def accuracy_with_ci(
    correct: np.ndarray, confidence: float
) -> tuple[float | None, tuple[float | None, float | None]]:
    """Share of correct predictions (NaN rows excluded) and its Wilson interval."""
    ok = correct[~np.isnan(correct)] if correct.dtype.kind == "f" else correct
    n = int(len(ok))
    if n == 0:
        return None, (None, None)
    k = int(np.sum(ok))
    iv = wilson_interval(k, n, confidence=confidence)
    return k / n, (iv.low, iv.high)


class ArrowStrings(Sequence[str]):
    """A string column read as ``str`` values on access (``str(None)`` for a null, as
    ``numpy``'s ``astype(str)`` gives): a tuple of a million ids costs ~70 MB of Python
    strings, the Arrow column ~12 bytes per id (issue 14)."""

    def __init__(self, values: pa.Array | pa.ChunkedArray) -> None:
        self._a = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(str(v) for v in self._a[index].to_pylist())
        i = int(index)
        if not -len(self._a) <= i < len(self._a):
            raise IndexError(f"id index {index} out of range [0, {len(self._a)})")
        return str(self._a[i].as_py())


@dataclass(frozen=True)
class PrimaryColumns:
    """The primary method's per-sample columns the class statistics and finding rules read."""

    labels: np.ndarray
    correct: np.ndarray
    preds: np.ndarray
    background_focus: np.ndarray
    border_focus: np.ndarray
    energy_lift: np.ndarray
    interventions: Mapping[str, np.ndarray]
    ids: Sequence[str] = ()
    #: the class the background alone was predicted as (-1: not run); None: column absent
    only_bg_pred: np.ndarray | None = None
    #: the class the object alone was predicted as (-1: not run); None: column absent
    only_fg_pred: np.ndarray | None = None
    #: whether the model's logits were NaN/Inf (status ``nonfinite_logits``); None: no status
    nonfinite: np.ndarray | None = None
    #: per method ``(labels, empty)``: which maps hold no evidence (:mod:`.empty_maps`)
    empty_maps: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def of(cls, table: pa.Table, primary: str) -> PrimaryColumns:
        prim = rows_of_method(table, primary)
        iv = (
            {name: col(prim, name, float) for name in INTERVENTION_CORRECT}
            if "only_fg_correct" in prim.column_names
            else {}
        )
        return cls(
            labels=col(prim, "label", int),
            correct=col(prim, "correct", float),
            preds=col(prim, "pred", int),
            background_focus=col(prim, "background_focus", float),
            border_focus=col(prim, "border_focus", float),
            energy_lift=col(prim, "energy_lift", float),
            interventions=iv,
            ids=ArrowStrings(prim.column("id")) if "id" in prim.column_names else (),
            only_bg_pred=col(prim, "only_bg_pred", int)
            if "only_bg_pred" in prim.column_names
            else None,
            only_fg_pred=col(prim, "only_fg_pred", int)
            if "only_fg_pred" in prim.column_names
            else None,
            nonfinite=np.asarray(
                pc.fill_null(pc.equal(prim.column("status"), "nonfinite_logits"), False),
                bool,
            )
            if "status" in prim.column_names
            else None,
            empty_maps=empty_maps_by_method(table),
        )


def _interventions(
    p: PrimaryColumns,
    sel: np.ndarray,
    acc: float | None,
    n: int,
    settings: AuditSettings,
    drop: Interval | None = None,
) -> Interventions:
    means: dict[str, float | None] = {}
    for key, out in INTERVENTION_CORRECT.items():
        vals = p.interventions[key][sel]
        finite = vals[np.isfinite(vals)]
        means[out] = float(finite.mean()) if len(finite) else None
    if drop is None:
        drop = paired_bootstrap_diff_ci(
            p.interventions["only_fg_correct"][sel],
            p.correct[sel],
            confidence=settings.confidence,
            n_boot=settings.bootstrap,
            seed=settings.seed,
        )
    mixed = means["mixed_rand_accuracy"]
    return Interventions(
        accuracy=acc,
        n=n,
        only_fg_accuracy=means["only_fg_accuracy"],
        only_bg_accuracy=means["only_bg_accuracy"],
        mixed_rand_accuracy=mixed,
        only_fg_drop=drop.estimate if drop.n else None,
        only_fg_drop_ci=(drop.low, drop.high) if drop.n else (None, None),
        background_gap=(acc - mixed) if (acc is not None and mixed is not None) else None,
    )


def class_results(
    p: PrimaryColumns,
    classes: Sequence[str],
    class_metrics: Mapping[str, Mapping[str, Mapping[str, Stat]]],
    settings: AuditSettings,
    null: Mapping[str, Mapping[str, Any]] | None = None,
    drops: Mapping[int, Interval] | None = None,
) -> dict[str, ClassResult]:
    """One :class:`ClassResult` per class (not yet flagged: see ``findings.apply_flags``).

    ``null`` (from :func:`null_baselines`) lands in each class's ``null_baseline`` field.
    ``drops`` (class index -> interval of ``mean(correct - only_fg_correct)``) replaces the
    exact paired bootstrap of the only-foreground drop (the streamed path's Poisson
    bootstrap, :mod:`auditor.analysis.streamed`).
    """
    out: dict[str, ClassResult] = {}
    for ci, name in enumerate(classes):
        sel = p.labels == ci
        n = int(sel.sum())
        acc, acc_ci = accuracy_with_ci(p.correct[sel], settings.confidence)
        out[name] = ClassResult(
            name=name,
            index=ci,
            n=n,
            accuracy=acc,
            accuracy_ci=acc_ci,
            metrics=MappingProxyType(
                {m: MappingProxyType(dict(v)) for m, v in class_metrics[name].items()}
            ),
            interventions=(
                _interventions(p, sel, acc, n, settings, drops.get(ci) if drops else None)
                if p.interventions and n
                else None
            ),
            extra=freeze({"null_baseline": dict(null[name])} if null and name in null else {}),
        )
    return out


RANDOM_METHOD = "randomcam"


def null_baselines(
    table: pa.Table,
    classes: Sequence[str],
    primary: str,
    class_metrics: Mapping[str, Mapping[str, Mapping[str, Stat]]],
) -> dict[str, dict[str, Any]]:
    """Chance level of ``energy_in_mask`` per class: what a map that ignores the image scores.

    * ``area``: the mean mask area fraction ``E[|M| / N]`` of the class's annotated samples.
      For a map ``R`` whose value distribution is the same at every pixel (a spatially uniform
      or i.i.d. random map), ``E[sum_M R / sum R] = |M| / N``, so this is the exact expectation
      of energy in the object for "looking nowhere in particular" (Wang et al. 2020, Score-CAM,
      use the same energy-based pointing; the ratio ``energy_lift`` divides by this value).
    * ``randomcam``: the class's mean ``energy_in_mask`` (with its interval) of the
      ``randomcam`` method (random channel weights over the same activations, the null
      baseline pytorch-grad-cam offers), when that method was run: chance for maps built from
      this model's features, which are not spatially uniform.

    A class without annotated samples gets ``None`` for ``area``; ``randomcam`` is omitted when
    not run or when it is the primary method itself.
    """
    out: dict[str, dict[str, Any]] = {}
    if "mask_area" not in table.column_names or "label" not in table.column_names:
        return out
    prim = rows_of_method(table, primary)
    labels = col(prim, "label", int)
    area = col(prim, "mask_area", float)
    for ci, name in enumerate(classes):
        vals = area[(labels == ci) & np.isfinite(area)]
        entry: dict[str, Any] = {
            "metric": "energy_in_mask",
            "area": float(vals.mean()) if len(vals) else None,
        }
        if primary != RANDOM_METHOD:
            st = class_metrics.get(name, {}).get(RANDOM_METHOD, {}).get("energy_in_mask")
            if st is not None and st.mean is not None:
                entry["randomcam"] = st.to_json()
        out[name] = entry
    return out


def status_counts(table: pa.Table, methods: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{method: {status: count}}`` of the per-sample ``status`` column."""
    out: dict[str, dict[str, int]] = {}
    if "status" not in table.column_names:
        return out
    method_col = col(table, "method", str)
    st = col(table, "status", str)
    for method in methods:
        vals, counts = np.unique(st[method_col == method], return_counts=True)
        out[method] = {str(v): int(c) for v, c in zip(vals, counts)}
    return out


def overall_result(
    table: pa.Table,
    p: PrimaryColumns,
    methods: Sequence[str],
    metrics: Mapping[str, Mapping[str, Stat]],
    settings: AuditSettings,
) -> OverallResult:
    acc, acc_ci = accuracy_with_ci(p.correct, settings.confidence)
    return OverallResult(
        n=int(len(p.labels)),
        accuracy=acc,
        accuracy_ci=acc_ci,
        metrics=MappingProxyType({m: MappingProxyType(dict(v)) for m, v in metrics.items()}),
        status_counts=MappingProxyType(
            {m: MappingProxyType(v) for m, v in status_counts(table, methods).items()}
        ),
    )


def faithfulness_block(
    table: pa.Table, methods: Sequence[str], metrics: Sequence[str], settings: AuditSettings
) -> dict[str, dict[str, Stat]] | None:
    """Means of the faithfulness metrics over the seeded subset, per method (None: not run).

    Samples outside the subset are not "undefined", just not run: they are left out, not
    counted as NaN.
    """
    faith: dict[str, dict[str, Stat]] = {}
    method_col = col(table, "method", str)
    in_subset = (
        col(table, "faithfulness_subset").astype(bool)
        if "faithfulness_subset" in table.column_names
        else np.ones(table.num_rows, bool)
    )
    for method in methods:
        sel = (method_col == method) & in_subset
        block = {}
        for metric in metrics:
            if metric in table.column_names:
                vals = col(table, metric, float)[sel]
                if np.isfinite(vals).any():
                    block[metric] = _stat(
                        bootstrap_mean_ci(
                            vals,
                            confidence=settings.confidence,
                            n_boot=settings.bootstrap,
                            seed=settings.seed,
                        )
                    )
        if block:
            faith[method] = block
    return faith or None


def confusion_matrix(p: PrimaryColumns, classes: Sequence[str]) -> Confusion:
    n_cls = len(classes)
    confusion = np.zeros((n_cls, n_cls), dtype=int)
    ok = (p.labels >= 0) & (p.preds >= 0) & (p.preds < n_cls)
    np.add.at(confusion, (p.labels[ok], p.preds[ok]), 1)
    return Confusion(
        classes=tuple(classes), matrix=tuple(tuple(int(v) for v in r) for r in confusion)
    )


def method_agreement(table: pa.Table, methods: Sequence[str]) -> MethodAgreement | None:
    """Spearman correlation between methods of the per-sample energy in the object.

    ``None`` for a pair with fewer than 3 common finite values or a constant side.
    """
    if len(methods) < 2 or "energy_in_mask" not in table.column_names:
        return None
    from scipy.stats import spearmanr

    method_col = col(table, "method", str)
    idx = col(table, "index", int)
    values = col(table, "energy_in_mask", float)
    per = {}
    for m in methods:
        sel = method_col == m
        per[m] = dict(zip(idx[sel].tolist(), values[sel].tolist()))
    mat: list[tuple[float | None, ...]] = []
    for a in methods:
        row: list[float | None] = []
        for b in methods:
            keys = [
                k
                for k in per[a]
                if k in per[b] and np.isfinite(per[a][k]) and np.isfinite(per[b][k])
            ]
            if len(keys) < 3:
                row.append(None)
                continue
            va = np.array([per[a][k] for k in keys])
            vb = np.array([per[b][k] for k in keys])
            if np.ptp(va) == 0 or np.ptp(vb) == 0:
                row.append(None)
                continue
            row.append(float(spearmanr(va, vb).statistic))
        mat.append(tuple(row))
    return MethodAgreement(methods=tuple(methods), metric="energy_in_mask", spearman=tuple(mat))
