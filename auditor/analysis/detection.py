"""Detection rows -> per-class statistics with intervals and findings (issue 26; no torch).

Per class ``c`` (rows of one method; every method has the same boxes):

* **recall** = found ground-truth boxes / ground-truth boxes, Wilson interval (Wilson 1927);
* **precision** = found boxes / (found boxes + false-positive detections of ``c`` at or above
  the score threshold), Wilson interval. Matching: :mod:`auditor.metrics.detection`;
* **object-only recall**: the share of ``c``'s boxes still found when every pixel outside the
  box is filled; Wilson interval;
* **context recall drop** = recall − object-only recall, paired over the same boxes; interval
  by the paired bootstrap of the per-box difference ``found − found_object_only`` (Efron &
  Tibshirani 1993; :func:`auditor.stats.paired_bootstrap_diff_ci`);
* **context-only hit rate**: the share of ``c``'s boxes where a detection of ``c`` still
  matches the box after the box itself was filled (the detector "finds" the object from its
  context); Wilson interval;
* the localisation metrics of the maps of the matched detections, on the ground-truth box
  (``energy_in_mask`` = energy in the box, ``background_focus`` = 1 − it, ``energy_lift`` =
  energy in the box / box area fraction, ``pointing_game``), bootstrap intervals as the
  classifier path (:func:`auditor.stats.bootstrap_mean_ci`).

Finding rules (margins fixed before any test number was read; never tuned per case):

* ``detection_context_dependence``: drop >= :data:`MIN_DROP` and the drop's lower bound >
  :data:`DROP_MARGIN`; severity high when the drop >= 0.5, else medium.
* ``detection_from_context_alone``: the context-only hit rate's Wilson lower bound >
  :data:`CONTEXT_HIT_MARGIN`; medium when the same class also has a context-dependence
  finding, else low (the filled hole can itself look like an object: its silhouette).
* ``detection_map_off_box``: the primary method's energy-lift interval lies below 1 (the map
  is no denser on the box than a uniform map); low.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.config_detection import DETECTION_METRICS
from auditor.results import ClassResult, Finding, OverallResult, Stat
from auditor.stats import bootstrap_mean_ci, paired_bootstrap_diff_ci, wilson_interval

__all__ = [
    "CONTEXT_HIT_MARGIN",
    "DROP_MARGIN",
    "MIN_DROP",
    "RULES",
    "analyse_detection",
    "class_detection_stats",
    "detection_findings",
]

MIN_DROP = 0.20
DROP_MARGIN = 0.10
CONTEXT_HIT_MARGIN = 0.10

RULES: Mapping[str, str] = MappingProxyType({
    "detection_context_dependence": (
        f"Flag a class when its detection recall falls by at least {MIN_DROP:.2f} once the "
        f"context is removed (every pixel outside the box filled), with the paired interval's "
        f"lower bound above {DROP_MARGIN:.2f}; high from a drop of 0.50."
    ),
    "detection_from_context_alone": (
        f"Flag a class when a detection of it still matches the box after the box was filled "
        f"(context alone) with a Wilson lower bound above {CONTEXT_HIT_MARGIN:.2f}; medium with "
        f"a context-dependence finding, else low (the filled hole's silhouette may be read)."
    ),
    "detection_map_off_box": (
        "Note a class when the primary method's energy lift on the box has its whole interval "
        "below 1: the maps are no denser on the object than a uniform map."
    ),
})  # fmt: skip


def _col(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(
        [np.nan if v is None else float(v) for v in table.column(name).to_pylist()], np.float64
    )


def _wilson(k: int, n: int, confidence: float) -> tuple[float | None, list[float | None]]:
    if n == 0:
        return None, [None, None]
    iv = wilson_interval(k, n, confidence)
    return k / n, [iv.low, iv.high]


def _stat(values: np.ndarray, s: Any) -> Stat:
    iv = bootstrap_mean_ci(values, confidence=s.confidence, n_boot=s.bootstrap, seed=s.seed)
    d = iv.to_dict()
    return Stat(d["mean"], d["ci_low"], d["ci_high"], int(d["n"] or 0), int(d["n_nan"] or 0))


def class_detection_stats(prim: pa.Table, cls: int, settings: Any) -> dict[str, Any]:
    """The ``classes.<c>.detection`` block of class index ``cls`` from one method's rows."""
    s = settings
    kind = np.asarray(prim.column("kind").to_pylist(), dtype=object)
    label = np.asarray(prim.column("label").to_pylist())
    gt = (kind == "gt") & (label == cls)
    fp = (kind == "fp") & (label == cls)
    det = _col(prim, "detected")[gt]
    k, n = int(np.nansum(det)), int(gt.sum())
    recall, recall_ci = _wilson(k, n, s.confidence)
    precision, precision_ci = _wilson(k, k + int(fp.sum()), s.confidence)
    obj = _col(prim, "object_only_detected")[gt]
    ctx = _col(prim, "context_only_hit")[gt]
    have = np.isfinite(obj)
    obj_rate, obj_ci = _wilson(int(np.nansum(obj)), int(have.sum()), s.confidence)
    ctx_rate, ctx_ci = _wilson(int(np.nansum(ctx)), int(np.isfinite(ctx).sum()), s.confidence)
    drop: float | None = None
    drop_ci: list[float | None] = [None, None]
    if have.any():
        iv = paired_bootstrap_diff_ci(obj[have], det[have], confidence=s.confidence,
                                      n_boot=s.bootstrap, seed=s.seed)  # fmt: skip
        d = iv.to_dict()
        drop, drop_ci = d["mean"], [d["ci_low"], d["ci_high"]]
    return {
        "n_boxes": n, "n_found": k, "recall": recall, "recall_ci": recall_ci,
        "n_false_positives": int(fp.sum()), "precision": precision, "precision_ci": precision_ci,
        "n_interventions": int(have.sum()),
        "object_only_recall": obj_rate, "object_only_recall_ci": obj_ci,
        "context_recall_drop": drop, "context_recall_drop_ci": drop_ci,
        "context_only_hit_rate": ctx_rate, "context_only_hit_rate_ci": ctx_ci,
    }  # fmt: skip


def _metric_stats(rows: pa.Table, mask: np.ndarray, methods: Sequence[str], s: Any
                  ) -> dict[str, dict[str, Stat]]:  # fmt: skip
    method = np.asarray(rows.column("method").to_pylist(), dtype=object)
    out: dict[str, dict[str, Stat]] = {}
    for m in methods:
        sel = mask & (method == m)
        out[m] = {k: _stat(_col(rows, k)[sel], s) for k in DETECTION_METRICS}
    return out


def analyse_detection(
    rows: pa.Table, classes: Sequence[str], settings: Any
) -> tuple[dict[str, ClassResult], OverallResult, tuple[Finding, ...], dict[str, Any]]:
    """``(classes, overall, findings, overall detection block)`` from every method's rows.

    The metrics use the ground-truth rows whose box was found; where the map is not defined
    (``status`` other than ``ok``) the metrics are NaN and counted in ``n_nan``.
    """
    s = settings
    methods = tuple(s.methods)
    if rows.num_rows == 0:
        empty = {c: ClassResult(name=c, index=i) for i, c in enumerate(classes)}
        return empty, OverallResult(), (), {}
    method = np.asarray(rows.column("method").to_pylist(), dtype=object)
    prim = rows.filter(pa.array(method == s.primary))
    kind = np.asarray(rows.column("kind").to_pylist(), dtype=object)
    label = np.asarray(rows.column("label").to_pylist())
    # found boxes: a map that is not defined there (zero map, ...) counts as NaN in the Stat
    ok = (kind == "gt") & (_col(rows, "detected") == 1)
    out: dict[str, ClassResult] = {}
    for i, c in enumerate(classes):
        block = class_detection_stats(prim, i, s)
        out[c] = ClassResult(
            name=c, index=i, n=block["n_boxes"], risk=None,
            metrics=MappingProxyType(_metric_stats(rows, ok & (label == i), methods, s)),
            extra=MappingProxyType({"detection": block}),
        )  # fmt: skip
    findings = detection_findings(out, s.primary)
    flagged = {f.cls for f in findings if f.severity in ("high", "medium")}
    out = {c: _flag(r, c in flagged, findings) for c, r in out.items()}
    pkind = np.asarray(prim.column("kind").to_pylist(), dtype=object)
    det = _col(prim, "detected")[pkind == "gt"]
    k, n, n_fp = int(np.nansum(det)), int((pkind == "gt").sum()), int((pkind == "fp").sum())
    recall, recall_ci = _wilson(k, n, s.confidence)
    precision, precision_ci = _wilson(k, k + n_fp, s.confidence)
    overall = OverallResult(n=n, metrics=MappingProxyType(_metric_stats(rows, ok, methods, s)))
    block = {"n_boxes": n, "n_found": k, "n_false_positives": n_fp, "recall": recall,
             "recall_ci": recall_ci, "precision": precision, "precision_ci": precision_ci,
             "n_images": len(set(prim.column("index").to_pylist()))}  # fmt: skip
    return out, overall, findings, block


def _flag(r: ClassResult, flagged: bool, findings: Sequence[Finding]) -> ClassResult:
    from dataclasses import replace

    return replace(r, flagged=flagged, flags=tuple(f.kind for f in findings if f.cls == r.name))


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def detection_findings(classes: Mapping[str, ClassResult], primary: str) -> tuple[Finding, ...]:
    """The three rules of the module docstring, numbered ``F1``… by severity."""
    found: list[Finding] = []
    dependent: set[str] = set()
    for c, r in classes.items():
        d = r.extra.get("detection") or {}
        drop, lo = d.get("context_recall_drop"), (d.get("context_recall_drop_ci") or [None])[0]
        if drop is not None and lo is not None and drop >= MIN_DROP and lo > DROP_MARGIN:
            dependent.add(c)
            found.append(Finding(
                kind="detection_context_dependence", cls=c,
                severity="high" if drop >= 0.5 else "medium",
                title=f"'{c}' is detected from its context",
                message=(f"'{c}' is detected from its context: recall falls from "
                         f"{_pct(d['recall'])} to {_pct(d['object_only_recall'])} without "
                         f"context (drop {_pct(drop)}, {_pct(lo)} to "
                         f"{_pct(d['context_recall_drop_ci'][1])})."),
                evidence={"recall": d["recall"], "object_only_recall": d["object_only_recall"],
                          "context_recall_drop": drop, "ci": d["context_recall_drop_ci"],
                          "n": d["n_interventions"]},
            ))  # fmt: skip
    for c, r in classes.items():
        d = r.extra.get("detection") or {}
        rate, ci = d.get("context_only_hit_rate"), d.get("context_only_hit_rate_ci") or [None]
        if rate is not None and ci[0] is not None and ci[0] > CONTEXT_HIT_MARGIN:
            found.append(Finding(
                kind="detection_from_context_alone", cls=c,
                severity="medium" if c in dependent else "low",
                title=f"'{c}' is found where its box was removed",
                message=(f"With the box filled, a '{c}' detection still matches the box in "
                         f"{_pct(rate)} of cases ({_pct(ci[0])} to {_pct(ci[1])}); recall "
                         f"with the object is {_pct(d.get('recall'))}."),
                evidence={"context_only_hit_rate": rate, "ci": ci, "recall": d.get("recall")},
            ))  # fmt: skip
        lift = r.stat(primary, "energy_lift")
        if lift is not None and lift.ci_high is not None and lift.ci_high < 1.0:
            found.append(Finding(
                kind="detection_map_off_box", cls=c, severity="low",
                title=f"'{c}': maps not on the box",
                message=(f"The {primary} maps of '{c}' detections are no denser on the box than "
                         f"uniform: energy lift {_pct(lift.mean)} ({_pct(lift.ci_low)} to "
                         f"{_pct(lift.ci_high)})."),
                evidence={"energy_lift": lift.mean, "ci": [lift.ci_low, lift.ci_high]},
            ))  # fmt: skip
    order = {"high": 0, "medium": 1, "low": 2}
    found.sort(key=lambda f: (order[f.severity], f.cls or "", f.kind))
    from dataclasses import replace

    return tuple(replace(f, id=f"F{i + 1}") for i, f in enumerate(found))
