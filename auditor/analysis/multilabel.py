"""Per-label statistics of a multi-label (sigmoid) run: summary.json ``labels`` (issue 26).

For each label ``l`` over the ``n`` evaluated images (scores ``p_i = sigmoid(z_il)``, truth
``y_i``, decision ``p_i >= t`` at ``[audit] threshold``):

* prevalence ``sum y / n``, sensitivity ``TP / (TP + FN)``, specificity ``TN / (TN + FP)``:
  Wilson intervals (Wilson 1927);
* AUROC (Mann-Whitney; ties count 1/2):
  ``A = 1/(m n_0) sum_i sum_j psi(p_i, p_j)``, ``psi = 1 [p_i > p_j] + 1/2 [p_i = p_j]`` over
  positives ``i`` and negatives ``j``, with DeLong's variance (DeLong, DeLong & Clarke-Pearson
  1988, Biometrics 44:837): ``V10_i = mean_j psi``, ``V01_j = mean_i psi``,
  ``Var A = s^2(V10)/m + s^2(V01)/n_0``; interval ``A +- z sqrt(Var)`` clipped to [0, 1];
* average precision as scikit-learn defines it: ``AP = sum_k (R_k - R_{k-1}) P_k`` over the
  distinct score thresholds in decreasing order (no interpolation); interval: stratified
  percentile bootstrap (positives and negatives resampled separately, seeded).

A statistic whose denominator is empty is ``None`` with ``not_estimable`` naming why, never a
number (a label with no positive image has no sensitivity, AUROC or AP). The attention evidence
of a label is its entry in ``classes`` (the classifier's per-class statistics computed over the
images that CARRY the label, on that label's mask); this module adds the mean only-object and
only-background probability of the label (the interventions' ``*_confidence``) with bootstrap
intervals, and the explained negatives' background focus (false-positive evidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.results import Finding, freeze
from auditor.stats import bootstrap_mean_ci, wilson_interval

__all__ = [
    "attach_labels",
    "auroc_delong",
    "average_precision",
    "label_chance",
    "label_statistics",
    "positive_rows",
]


def positive_rows(table: pa.Table) -> pa.Table:
    """The rows of (image, label) pairs where the image carries the label (``explained ==
    "positive"``): what the classifier's per-class analysis reads as "the samples of a class"."""
    if "explained" not in table.column_names or not table.num_rows:
        return table
    return table.filter(pc.equal(table.column("explained"), "positive"))


def _interval(iv: Any) -> dict[str, Any]:
    est = float(iv.estimate)
    if not math.isfinite(est):
        return {"value": None, "ci_low": None, "ci_high": None, "n": int(iv.n)}
    return {"value": est, "ci_low": float(iv.low), "ci_high": float(iv.high), "n": int(iv.n)}


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``psi[i, j] = 1 [pos_i > neg_j] + 1/2 [pos_i == neg_j]`` (Mann-Whitney kernel)."""
    d = pos[:, None] - neg[None, :]
    return (d > 0).astype(float) + 0.5 * (d == 0)


def auroc_delong(
    scores: np.ndarray, truth: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """``(AUROC, low, high)`` with DeLong's interval; ``None`` without a positive or a negative.

    With one positive or one negative the variance term of that side is undefined: the
    interval is ``(nan, nan)`` around the point estimate.
    """
    from statistics import NormalDist

    s = np.asarray(scores, float)
    y = np.asarray(truth, bool)
    if s.shape != y.shape:
        raise ValueError(f"`scores` and `truth` must have the same shape, got {s.shape}, {y.shape}")
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    psi = _psi(pos, neg)
    auc = float(psi.mean())
    if pos.size < 2 or neg.size < 2:
        return auc, math.nan, math.nan
    v10, v01 = psi.mean(1), psi.mean(0)
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """scikit-learn's ``average_precision_score``: ``sum_k (R_k - R_{k-1}) P_k`` over the
    distinct thresholds (decreasing); ``None`` without a positive."""
    s = np.asarray(scores, float)
    y = np.asarray(truth, bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _ap_interval(
    scores: np.ndarray, truth: np.ndarray, confidence: float, n_boot: int, seed: int
) -> tuple[float, float]:
    pos, neg = scores[truth], scores[~truth]
    if pos.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values: list[float] = []
    y = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    for _ in range(n_boot):
        s = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size) if neg.size else neg]
        values.append(float(average_precision(s, y) or 0.0))  # >= 2 positives: never None
    a = (1 - confidence) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def _proportion(k: int, n: int, confidence: float, why: str) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "not_estimable": why}
    return _interval(wilson_interval(k, n, confidence=confidence))


def _one_label(
    p: np.ndarray, y: np.ndarray, t: float, confidence: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Detection statistics of one label from its scores ``p`` and truth ``y`` (finite ``p``)."""
    pred = p >= t
    n, n_pos = int(p.size), int(y.sum())
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    out: dict[str, Any] = {
        "n": n,
        "n_positive": n_pos,
        "n_predicted": int(pred.sum()),
        "prevalence": _proportion(n_pos, n, confidence, "no image evaluated"),
        "sensitivity": _proportion(tp, n_pos, confidence, "no image carries the label"),
        "specificity": _proportion(tn, n - n_pos, confidence, "every image carries the label"),
    }
    auc = auroc_delong(p, y, confidence)
    if auc is None:
        why = "no image carries the label" if n_pos == 0 else "every image carries the label"
        out["auroc"] = {"value": None, "ci_low": None, "ci_high": None, "not_estimable": why}
    else:
        lo, hi = auc[1], auc[2]
        out["auroc"] = {
            "value": auc[0],
            "ci_low": None if math.isnan(lo) else lo,
            "ci_high": None if math.isnan(hi) else hi,
            "method": "delong",
        }
    ap = average_precision(p, y)
    if ap is None:
        out["average_precision"] = {
            "value": None, "ci_low": None, "ci_high": None,
            "not_estimable": "no image carries the label",
        }  # fmt: skip
    else:
        lo, hi = _ap_interval(p, y, confidence, n_boot, seed)
        out["average_precision"] = {
            "value": ap,
            "ci_low": None if math.isnan(lo) else lo,
            "ci_high": None if math.isnan(hi) else hi,
            "method": "stratified percentile bootstrap",
        }
    return out


def _mean(values: np.ndarray, confidence: float, n_boot: int, seed: int) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    return _interval(bootstrap_mean_ci(v, confidence=confidence, n_boot=n_boot, seed=seed))


def _col(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(pc.fill_null(pc.cast(table.column(name), pa.float64()), np.nan), float)


def label_statistics(
    table: pa.Table,
    classes: Sequence[str],
    *,
    primary: str,
    threshold: float,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """summary.json ``labels``: ``{n_images, threshold, labels: {name: {...}}}`` from every
    (image, label) row of the primary method (module docstring)."""
    prim = table.filter(pc.equal(table.column("method"), primary)) if table.num_rows else table
    lab = np.asarray(prim.column("label").to_numpy(), np.int64) if prim.num_rows else np.zeros(0)
    p = _col(prim, "confidence")
    y = (
        np.asarray(prim.column("positive").to_numpy(zero_copy_only=False), bool)
        if prim.num_rows
        else np.zeros(0, bool)
    )
    expl = np.asarray(prim.column("explained").to_pylist() if prim.num_rows else [], object)
    img = prim.column("image_index").to_numpy() if prim.num_rows else np.zeros(0)
    fg, bg = _col(prim, "only_fg_confidence"), _col(prim, "only_bg_confidence")
    bf = _col(prim, "background_focus")
    out: dict[str, Any] = {}
    for li, name in enumerate(classes):
        sel = (lab == li) & np.isfinite(p)
        entry = _one_label(p[sel], y[sel], threshold, confidence, n_boot, seed + li)
        pos = (lab == li) & y
        entry["only_object_probability"] = _mean(fg[pos], confidence, n_boot, seed + li)
        entry["only_background_probability"] = _mean(bg[pos], confidence, n_boot, seed + li)
        neg = (lab == li) & (expl == "negative")
        entry["explained_negatives"] = {
            "n": int(neg.sum()),
            "false_positives": int((neg & (p >= threshold)).sum()),
            "background_focus": _mean(bf[neg], confidence, n_boot, seed + li),
        }
        out[name] = entry
    return {
        "n_images": int(np.unique(img).size),
        "threshold": float(threshold),
        "labels": out,
    }


def label_chance(
    table: pa.Table, n_labels: int, *, primary: str, threshold: float
) -> tuple[float | None, ...]:
    """Per label ``l``: ``P(p_l >= t | image without l)``, the model's positive rate for the
    label on the images that do not carry it, from every (image, label) row of the primary
    method (``positive`` false); ``None`` when every image carries the label. The chance
    baseline of the only-background test for independent sigmoid labels (the background
    alone should not trigger the label more often than an image that never had it); e.g.
    negatives scoring 0.7, 0.2, 0.6, 0.1 at ``t = 0.5``: 0.5."""
    if not table.num_rows:
        return tuple(None for _ in range(n_labels))
    prim = table.filter(pc.equal(table.column("method"), primary))
    lab = np.asarray(prim.column("label").to_numpy(), np.int64)
    p = _col(prim, "confidence")
    y = np.asarray(prim.column("positive").to_numpy(zero_copy_only=False), bool)
    out: list[float | None] = []
    for li in range(n_labels):
        neg = (lab == li) & ~y & np.isfinite(p)
        out.append(float((p[neg] >= threshold).mean()) if neg.any() else None)
    return tuple(out)


def _not_estimable_findings(labels: Mapping[str, Any]) -> list[Finding]:
    """One ``label_not_estimable`` note per label without positives or without negatives."""
    out = []
    for name, e in labels.items():
        why = e["auroc"].get("not_estimable")
        if why is None:
            continue
        missing = "sensitivity" if e["n_positive"] == 0 else "specificity"
        out.append(
            Finding(
                kind="label_not_estimable",
                severity="info",
                cls=name,
                title=f"'{name}': detection statistics not estimable",
                message=(
                    f"'{name}': {why} among the {e['n']} evaluated images, so its AUROC, "
                    f"average precision and {missing} "
                    f"are not estimable (reported as not estimable, not as a number)."
                ),
                evidence={"n": e["n"], "n_positive": e["n_positive"]},
            )
        )
    return out


def attach_labels(result: Any, table: pa.Table, classes: Sequence[str], settings: Any) -> Any:
    """Add summary.json ``labels`` and the label notes to ``result`` (an
    :class:`~auditor.results.AuditResult` analysed from the positive rows); the single-label
    confusion matrix is dropped (labels are not exclusive)."""
    block = label_statistics(
        table,
        classes,
        primary=settings.primary,
        threshold=settings.threshold,
        confidence=settings.confidence,
        n_boot=max(200, min(int(settings.bootstrap), 1000)),
        seed=int(settings.seed),
    )
    from auditor.analysis.findings import number_findings
    from auditor.analysis.multilabel_fp import RULE, false_positive_findings

    fps = false_positive_findings(table, classes, settings)
    found = number_findings([*result.findings, *fps, *_not_estimable_findings(block["labels"])])
    classes_out = {
        name: replace(c, flagged=True, flags=(*c.flags, "label_false_positive_background"))
        if any(f.cls == name for f in fps) else c
        for name, c in result.classes.items()
    }  # fmt: skip
    extra = dict(result.extra)
    extra["labels"] = block
    extra["output"] = "sigmoid"
    rules = {**dict(result.rules), "label_false_positive_background": RULE}
    return result.replace(findings=tuple(found), extra=freeze(extra), confusion=None,
                          classes=MappingProxyType(classes_out), rules=freeze(rules))  # fmt: skip
