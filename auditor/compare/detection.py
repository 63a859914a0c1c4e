"""Paired comparison of two detection audits (issue 26): ``auditor compare`` and ``auditor run
--baseline`` for runs with ``[model] task = "detection"``.

A detection run's ``samples.parquet`` holds one row per (explained box, method): ``kind ==
"gt"`` for every ground-truth box, ``"fp"`` for every false-positive detection
(:mod:`auditor.audit.detection`). The ground-truth boxes are the same in both runs (same
dataset sha256), so they are **paired by (index, box)** (and checked: same image id, same
class). Per class and overall, with the paired interval of ``mean(B − A)``:

* ``detection_recall``: ``detected`` (0/1 per box); McNemar's exact test;
* ``object_only_recall``: ``object_only_detected`` (the box found with its context filled);
  McNemar's exact test;
* ``context_only_hit_rate``: ``context_only_hit`` (a detection of the class on the box's
  context alone, the box filled); McNemar's exact test;
* ``context_recall_drop``: ``detected − object_only_detected`` per box (in {−1, 0, 1}; its
  class mean is the run's context recall drop); Wilcoxon signed-rank test;
* the box metrics of the maps (``energy_in_mask``, ``background_focus``, ``energy_lift``,
  ``pointing_game``) over the boxes found (and explained) in both runs; Wilcoxon.

Intervals: paired bootstrap of the per-box difference (BCa, percentile fallback; Efron &
Tibshirani 1993), as the classifier comparison (:mod:`auditor.compare`).

* ``detection_precision``: ``P = TP / (TP + FP)`` per run (TP = found boxes, FP =
  false-positive detections at the run's score threshold) is a ratio, not a mean over boxes:
  its difference ``P_B − P_A`` gets a **paired image bootstrap** (the images are resampled
  with replacement, the same draw for both runs, ``P`` recomputed on each draw; percentile
  interval; a draw without any detection of the class is dropped). No test (p = null).

Status per quantity as :func:`auditor.compare.classify_change`: the interval excludes 0 on
the harmful side ("regressed"; recall and precision: lower is worse, drop and context hits:
higher is worse). A class is regressed when one of :data:`VERDICT` regressed.

Gates: ``max_<q>_increase`` / ``max_<q>_decrease`` for the quantities above
(:data:`auditor.config_detection.DETECTION_COMPARE_QUANTITIES`), evaluated per class by
:func:`auditor.compare.evaluate_comparison_gates`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auditor.compare.core import LoadedRun, block_of, mcnemar_exact, stat_block
from auditor.config_detection import DETECTION_COMPARE_DIRECTION, DETECTION_METRICS
from auditor.errors import AuditorInputError
from auditor.stats import Interval, paired_bootstrap_diff_ci, paired_test

__all__ = [
    "BOX_BINARY",
    "VERDICT",
    "compare_detection_methods",
    "detection_metrics_info",
    "is_detection_run",
    "paired_box_table",
    "precision_diff",
]

#: per-box 0/1 quantities -> samples.parquet column
BOX_BINARY: Mapping[str, str] = {
    "detection_recall": "detected",
    "object_only_recall": "object_only_detected",
    "context_only_hit_rate": "context_only_hit",
}
#: the quantities that decide a class's verdict
VERDICT = ("detection_recall", "detection_precision", "context_recall_drop", "background_focus")
_COLUMNS = ("index", "id", "box", "label", *BOX_BINARY.values(), *DETECTION_METRICS)


def is_detection_run(run: LoadedRun) -> bool:
    """Whether ``run`` is a detection audit (its summary has a ``detection`` block)."""
    return isinstance(run.summary.extra.get("detection"), Mapping)


def _rows(run: LoadedRun, method: str, kind: str) -> pa.Table:
    """The ``kind`` rows of ``method`` (sorted by index, box) with the compared columns."""
    import pyarrow.compute as pc

    for col in ("kind", "box", "detected"):
        if col not in run.columns:
            raise AuditorInputError(
                f"{run.role.upper()} {run.samples}: column {col!r} missing (not the samples of "
                f"a detection audit)"
            )
    want = [c for c in _COLUMNS if c in run.columns]
    try:
        t = pq.read_table(run.samples, columns=want,
                          filters=(pc.field("method") == method) & (pc.field("kind") == kind))
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc  # fmt: skip
    return t.sort_by([("index", "ascending"), ("box", "ascending")])


def _f(t: pa.Table, name: str) -> np.ndarray:
    """Column ``name`` as float64 (null -> NaN, bool -> 0/1); all NaN when absent."""
    if name not in t.column_names or pa.types.is_null(t.column(name).type):
        return np.full(t.num_rows, np.nan)
    col = t.column(name).cast(pa.float64()).fill_null(math.nan)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def pair_boxes(ta: pa.Table, tb: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``ta`` / ``tb`` of the ground-truth boxes in both, paired by (index, box);
    an :class:`AuditorInputError` when a pair's image id or class differs."""
    key_a = {(int(i), int(k)): j for j, (i, k) in enumerate(zip(
        ta.column("index").to_pylist(), ta.column("box").to_pylist(), strict=True))}  # fmt: skip
    pa_, pb_ = [], []
    ids_a, ids_b = ta.column("id").to_pylist(), tb.column("id").to_pylist()
    la, lb = ta.column("label").to_pylist(), tb.column("label").to_pylist()
    for jb, (i, k) in enumerate(zip(tb.column("index").to_pylist(), tb.column("box").to_pylist(),
                                    strict=True)):  # fmt: skip
        ja = key_a.get((int(i), int(k)))
        if ja is None:
            continue
        if str(ids_a[ja]) != str(ids_b[jb]) or int(la[ja]) != int(lb[jb]):
            raise AuditorInputError(
                f"box {k} of sample index {i} is {ids_a[ja]!r} (class {la[ja]}) in RUN_A but "
                f"{ids_b[jb]!r} (class {lb[jb]}) in RUN_B: the runs did not see the same boxes"
            )
        pa_.append(ja)
        pb_.append(jb)
    return np.asarray(pa_, np.int64), np.asarray(pb_, np.int64)


def _values(t: pa.Table, q: str) -> np.ndarray:
    if q in BOX_BINARY:
        return _f(t, BOX_BINARY[q])
    if q == "context_recall_drop":
        return _f(t, "detected") - _f(t, "object_only_detected")
    return _f(t, q)


def _block(q: str, a: np.ndarray, b: np.ndarray, kw: Mapping[str, Any]) -> dict[str, Any]:
    iv = paired_bootstrap_diff_ci(a, b, **kw)
    test = mcnemar_exact(a, b) if q in BOX_BINARY else paired_test(a, b)
    out = stat_block(a, b, q, iv, test)
    return _directed(out, q)


def _directed(out: dict[str, Any], q: str) -> dict[str, Any]:
    """The block's direction and status for a detection quantity (the metric registry does
    not know them)."""
    from auditor.compare.core import classify_change

    better = DETECTION_COMPARE_DIRECTION.get(q, out.get("higher_is_better"))
    out["higher_is_better"] = better
    out["status"] = classify_change(out["ci_low"], out["ci_high"], better) if out["n"] else "n/a"
    return out


def _fp_counts(t: pa.Table, n_cls: int, images: np.ndarray) -> np.ndarray:
    """``[len(images), n_cls]`` false-positive detections per image and class."""
    pos = {int(i): r for r, i in enumerate(images.tolist())}
    out = np.zeros((images.size, n_cls), np.int64)
    for i, c in zip(t.column("index").to_pylist(), t.column("label").to_pylist(), strict=True):
        r = pos.get(int(i))
        if r is not None and 0 <= int(c) < n_cls:
            out[r, int(c)] += 1
    return out


def precision_diff(
    tp_a: np.ndarray, fp_a: np.ndarray, tp_b: np.ndarray, fp_b: np.ndarray,
    *, confidence: float, n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The ``detection_precision`` block from per-image counts (1-D, one entry per image
    present in both runs): ``P = ΣTP / (ΣTP + ΣFP)`` per run, ``diff = P_B − P_A``, and the
    paired image bootstrap's percentile interval (module docstring). E.g. A: TP 3, FP 1
    (0.75), B: TP 3, FP 3 (0.5): diff −0.25."""
    ta, fa, tb, fb = (np.asarray(v, np.float64) for v in (tp_a, fp_a, tp_b, fp_b))
    da, db = ta.sum() + fa.sum(), tb.sum() + fb.sum()
    if da == 0 or db == 0:
        iv = Interval(math.nan, math.nan, math.nan, 0, int(ta.size), "none")
        return _directed(block_of("detection_precision", 0, int(ta.size), (None, None, None),
                                  iv, {"test": None}), "detection_precision")  # fmt: skip
    pa_, pb_ = float(ta.sum() / da), float(tb.sum() / db)
    rng = np.random.default_rng(seed)
    n = ta.size
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_boot)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (w @ tb) / (w @ (tb + fb)) - (w @ ta) / (w @ (ta + fa))
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - confidence) / 2
    lo, hi = (np.quantile(boot, [alpha, 1 - alpha]).tolist() if boot.size else [math.nan] * 2)
    iv = Interval(pb_ - pa_, lo, hi, int(n), 0, "percentile")
    out = block_of("detection_precision", int(n), int(n), (pa_, pb_, pb_ - pa_), iv,
                   {"test": "paired image bootstrap"})  # fmt: skip
    out.update(tp_a=int(ta.sum()), fp_a=int(fa.sum()), tp_b=int(tb.sum()), fp_b=int(fb.sum()))
    return _directed(out, "detection_precision")


def _class_blocks(
    ta: pa.Table, tb: pa.Table, prec: Mapping[str, Any], n_cls: int, kw: Mapping[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(overall, per class) statistics of the paired box tables ``ta``/``tb``."""
    labels = np.asarray(ta.column("label").to_pylist(), np.int64)
    quantities = [*BOX_BINARY, "context_recall_drop", *DETECTION_METRICS]
    overall: dict[str, Any] = {}
    per: list[dict[str, Any]] = [{} for _ in range(n_cls)]
    for q in quantities:
        a, b = _values(ta, q), _values(tb, q)
        if not (np.isfinite(a).any() or np.isfinite(b).any()):
            continue  # e.g. interventions off in both runs
        overall[q] = _block(q, a, b, kw)
        for c in range(n_cls):
            sel = labels == c
            per[c][q] = _block(q, a[sel], b[sel], kw)
    overall["detection_precision"] = prec["overall"]
    for c in range(n_cls):
        per[c]["detection_precision"] = prec["classes"][c]
    return overall, per


def _precision(ra: LoadedRun, rb: LoadedRun, ma: str, mb: str, ta: pa.Table, tb: pa.Table,
               n_cls: int, kw: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """``detection_precision`` blocks (overall and per class) over the images of both runs."""
    images = np.intersect1d(np.unique(ta.column("index").to_numpy()),
                            np.unique(tb.column("index").to_numpy()))  # fmt: skip
    pos = {int(i): r for r, i in enumerate(images.tolist())}

    def tp(t: pa.Table) -> np.ndarray:
        out = np.zeros((images.size, n_cls), np.int64)
        det = _f(t, "detected")
        for i, c, d in zip(t.column("index").to_pylist(), t.column("label").to_pylist(), det,
                           strict=True):  # fmt: skip
            r = pos.get(int(i))
            if r is not None and d == 1:
                out[r, int(c)] += 1
        return out

    tpa, tpb = tp(ta), tp(tb)
    fpa = _fp_counts(_rows(ra, ma, "fp"), n_cls, images)
    fpb = _fp_counts(_rows(rb, mb, "fp"), n_cls, images)
    classes = [precision_diff(tpa[:, c], fpa[:, c], tpb[:, c], fpb[:, c], **kw)
               for c in range(n_cls)]  # fmt: skip
    overall = precision_diff(tpa.sum(1), fpa.sum(1), tpb.sum(1), fpb.sum(1), **kw)
    return {"overall": overall, "classes": classes}


def compare_detection_methods(
    ra: LoadedRun, rb: LoadedRun, method_a: str, method_b: str, classes: Sequence[str],
    kw: Mapping[str, Any],
) -> tuple[dict[str, Any], pa.Table]:  # fmt: skip
    """The paired block of ``method_a`` (run A) vs ``method_b`` (run B) in the shape of
    ``comparison.json``'s ``primary`` (``method_a``, ``method_b``, ``n``, ``overall``,
    ``classes``), and the paired box table for ``comparison.parquet``."""
    ta_all, tb_all = _rows(ra, method_a, "gt"), _rows(rb, method_b, "gt")
    if ta_all.num_rows == 0 or tb_all.num_rows == 0:
        role, run, m = ("run_a", ra, method_a) if ta_all.num_rows == 0 else ("run_b", rb, method_b)
        raise AuditorInputError(f"{role.upper()} {run.path}: no ground-truth box rows for "
                                f"method {m!r}")  # fmt: skip
    pos_a, pos_b = pair_boxes(ta_all, tb_all)
    if pos_a.size == 0:
        raise AuditorInputError(
            f"no ground-truth box of RUN_A {ra.path} could be paired with RUN_B {rb.path} by "
            f"(index, box)"
        )
    ta, tb = ta_all.take(pa.array(pos_a)), tb_all.take(pa.array(pos_b))
    n_cls = len(classes)
    prec = _precision(ra, rb, method_a, method_b, ta, tb, n_cls, kw)
    overall, per = _class_blocks(ta, tb, prec, n_cls, kw)
    labels = np.asarray(ta.column("label").to_pylist(), np.int64)
    counts = np.bincount(labels, minlength=n_cls)
    block = {
        "method_a": method_a, "method_b": method_b, "n": int(pos_a.size),
        "n_only_a": int(ta_all.num_rows - pos_a.size),
        "n_only_b": int(tb_all.num_rows - pos_b.size),
        "overall": overall,
        "classes": {name: {"index": c, "n": int(counts[c]), "metrics": per[c]}
                    for c, name in enumerate(classes)},
    }  # fmt: skip
    return block, paired_box_table(ta, tb, method_a, method_b, classes)


def paired_box_table(ta: pa.Table, tb: pa.Table, method_a: str, method_b: str,
                     classes: Sequence[str]) -> pa.Table:  # fmt: skip
    """One row per paired ground-truth box: keys and each quantity's A, B and B − A."""
    n = ta.num_rows
    labels = np.asarray(ta.column("label").to_pylist(), np.int64)
    cols: dict[str, Any] = {
        "method_a": [method_a] * n, "method_b": [method_b] * n,
        "index": ta.column("index"), "id": ta.column("id").cast(pa.string()),
        "box": ta.column("box"), "label": labels,
        "label_name": [classes[int(c)] for c in labels],
    }  # fmt: skip
    for q in [*BOX_BINARY, "context_recall_drop", *DETECTION_METRICS]:
        a, b = _values(ta, q), _values(tb, q)
        cols[f"{q}_a"], cols[f"{q}_b"] = a, b
        cols[f"{q}_diff"] = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
    return pa.table(cols)


def class_verdict(metrics: Mapping[str, Any]) -> str:
    """``regressed`` when a :data:`VERDICT` quantity regressed, else ``improved`` when one
    improved, ``n/a`` when none could be computed, else ``unchanged``."""
    st = [metrics[q]["status"] for q in VERDICT if q in metrics]
    if "regressed" in st:
        return "regressed"
    if "improved" in st:
        return "improved"
    return "n/a" if not st or all(s == "n/a" for s in st) else "unchanged"


def detection_metrics_info() -> dict[str, Any]:
    """Titles, formulas and directions of the compared detection quantities (for the report)."""
    info = {
        "detection_recall": ("Detection recall", "found boxes / boxes (IoU ≥ threshold)"),
        "detection_precision": ("Detection precision", "TP / (TP + FP) at the score threshold"),
        "object_only_recall": ("Recall, object only", "found boxes with the context filled"),
        "context_only_hit_rate": ("Hit on context alone",
                                  "boxes matched after the box itself was filled"),
        "context_recall_drop": ("Context recall drop", "recall − object-only recall"),
    }  # fmt: skip
    return {
        q: {"title": t, "formula": f, "higher_is_better": DETECTION_COMPARE_DIRECTION[q]}
        for q, (t, f) in info.items()
    }
