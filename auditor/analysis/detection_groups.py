"""Detection audits by metadata groups (issue 26 with issue 24's ``[data] groups``; no torch).

A detection run's rows are boxes (:mod:`auditor.audit.detection`): ground-truth boxes
(``kind = "gt"``, ``detected`` true when a detection of the box's class matched it) and
false-positive detections (``kind = "fp"``). A group attribute belongs to an **image** (COCO
``images`` entries, or ``[data] groups_file``); every box of the image is in the image's
group. Per attribute and level (the primary method's rows):

* ``n_images``; ``n_boxes``; **recall** = found ground-truth boxes / ground-truth boxes and
  **precision** = found / (found + false-positive detections), Wilson intervals (Wilson 1927);
  **object-only recall** (the box kept, its context filled), Wilson, where interventions ran;
* **recall vs rest**: the level's recall minus the recall of every other image's boxes, with
  the Newcombe hybrid score interval (Newcombe 1998, method 10) at the Bonferroni-adjusted
  level ``1 - alpha / m``, ``m`` = the number of tested levels of the run.

The boxes are the unit of every proportion, as in the per-class detection statistics: boxes
of one image are treated as independent (an image with many boxes weighs more).

Small cells: a level with fewer than ``[report] min_group_size`` images carries no number
(``suppressed``), is never tested, gated or named in a finding; a level is tested only when
the rest also has that many images. A level is **flagged** (finding
``group_detection_disparity``, high) when the whole adjusted interval of its recall vs the
rest lies below ``-`` :data:`RECALL_MARGIN` (fixed before any measurement, the classifier
groups' accuracy margin).

Gates (``[gates]``, scope ``"group"``; number or ``{attribute = t, "attribute=level" = t}``):
``min_group_detection_recall`` (the worst shown level's recall, or one level's),
``max_group_detection_recall_gap`` (best minus worst level, or best minus that level) and
``min_group_detection_precision``. A gate on a suppressed or unknown level, or on an attribute
without a shown level, fails with the reason (never passes by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.config_detection import DETECTION_GROUP_GATES
from auditor.results import Finding, GateResult
from auditor.stats import two_proportion_diff_ci, wilson_interval

__all__ = [
    "DETECTION_GROUP_GATES",
    "RECALL_MARGIN",
    "analyse_detection_groups",
    "detection_group_findings",
    "evaluate_detection_group_gates",
]

RECALL_MARGIN = 0.05
"""A level is flagged when its recall is lower than the rest's by more than this (whole
adjusted interval below ``-margin``). Fixed before any measurement; not tuned per case."""


def _est(k: int, n: int, confidence: float) -> dict[str, float | None]:
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None}
    iv = wilson_interval(k, n, confidence)
    return {"value": k / n, "ci_low": float(iv.low), "ci_high": float(iv.high)}


def _diff(a: np.ndarray, b: np.ndarray, level: float) -> dict[str, float | None]:
    if not a.size or not b.size:
        return {"value": None, "ci_low": None, "ci_high": None}
    iv = two_proportion_diff_ci(int(a.sum()), int(a.size), int(b.sum()), int(b.size), level)
    return {"value": float(iv.estimate), "ci_low": float(iv.low), "ci_high": float(iv.high)}


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(
        [np.nan if v is None else float(v) for v in table.column(name).to_pylist()], np.float64
    )


def analyse_detection_groups(
    prim: pa.Table,
    levels: Mapping[str, Sequence[str]],
    *,
    min_group_size: int = 10,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The ``detection.groups`` block (module docstring) of the primary method's rows
    ``prim`` (columns ``id``, ``kind``, ``detected``, optional ``object_only_detected``);
    ``levels[attribute]``: the level of each row's image, aligned with ``prim``."""
    if min_group_size < 1:
        raise ValueError(f"`min_group_size` must be >= 1, got {min_group_size!r}")
    ids = np.asarray([str(v) for v in prim.column("id").to_pylist()], dtype=object)
    kind = np.asarray(prim.column("kind").to_pylist(), dtype=object)
    gt, fp = kind == "gt", kind == "fp"
    found = np.nan_to_num(_floats(prim, "detected")) > 0.5
    obj = _floats(prim, "object_only_detected")
    cols = {a: np.asarray([str(v) for v in levels[a]], dtype=object) for a in levels}
    n_img_all = len(set(ids.tolist()))
    shown: dict[str, set[str]] = {}
    tested: dict[str, set[str]] = {}
    for a, col in cols.items():
        counts = {lev: len(set(ids[col == lev].tolist())) for lev in set(col.tolist())}
        shown[a] = {lev for lev, c in counts.items() if c >= min_group_size}
        tested[a] = {lev for lev in shown[a] if n_img_all - counts[lev] >= min_group_size}
    m = sum(len(v) for v in tested.values())
    adj = 1 - (1 - confidence) / max(m, 1)
    attributes = []
    for a, col in cols.items():
        out_levels = []
        for lev in sorted(set(col.tolist())):
            inside = col == lev
            if lev not in shown[a]:
                out_levels.append({"level": lev, "n_images": None, "suppressed": True})
                continue
            g_in, g_out = gt & inside, gt & ~inside
            k, n = int(found[g_in].sum()), int(g_in.sum())
            have = g_in & np.isfinite(obj)
            entry: dict[str, Any] = {
                "level": lev, "suppressed": False,
                "n_images": len(set(ids[inside].tolist())), "n_boxes": n, "n_found": k,
                "n_false_positives": int((fp & inside).sum()),
                "recall": _est(k, n, confidence),
                "precision": _est(k, k + int((fp & inside).sum()), confidence),
                "object_only_recall": _est(int(obj[have].sum()), int(have.sum()), confidence),
                "recall_vs_rest": {"value": None, "ci_low": None, "ci_high": None},
                "flagged": False,
            }  # fmt: skip
            if lev in tested[a]:
                vs = _diff(found[g_in], found[g_out], adj)
                entry["recall_vs_rest"] = vs
                entry["flagged"] = vs["ci_high"] is not None and vs["ci_high"] < -RECALL_MARGIN
            out_levels.append(entry)
        attributes.append(_attribute(a, out_levels))
    return {
        "attributes": attributes, "min_group_size": int(min_group_size),
        "confidence": float(confidence), "adjustment": "bonferroni", "n_tests": int(m),
        "recall_margin": RECALL_MARGIN, "unit": "ground-truth boxes, grouped by their image",
    }  # fmt: skip


def _attribute(name: str, levels: list[dict[str, Any]]) -> dict[str, Any]:
    shown = [g for g in levels if not g["suppressed"] and g["recall"]["value"] is not None]
    worst = min(shown, key=lambda g: (g["recall"]["value"], g["level"])) if shown else None
    best = max(shown, key=lambda g: (g["recall"]["value"], g["level"])) if shown else None
    gap = None if not shown else best["recall"]["value"] - worst["recall"]["value"]  # type: ignore[index]
    return {
        "name": name, "levels": levels, "worst": None if worst is None else worst["level"],
        "worst_recall": None if worst is None else worst["recall"]["value"],
        "largest_recall_gap": gap,
    }  # fmt: skip


def _fmt(e: Mapping[str, Any]) -> str:
    v, lo, hi = e.get("value"), e.get("ci_low"), e.get("ci_high")
    if v is None:
        return "n/a"
    return f"{v:.2f}" if lo is None or hi is None else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def detection_group_findings(block: Mapping[str, Any] | None) -> list[Finding]:
    """One ``group_detection_disparity`` finding (high) per flagged level: "'site = B'
    (12 images, 12 boxes): detection recall 0.08 [0.01, 0.35] vs 0.95 for the rest"."""
    out: list[Finding] = []
    for attr in (block or {}).get("attributes", ()):
        for g in attr["levels"]:
            if g["suppressed"] or not g["flagged"]:
                continue
            rec, vs = g["recall"], g["recall_vs_rest"]
            rest = rec["value"] - vs["value"]
            out.append(Finding(
                kind="group_detection_disparity", severity="high",
                title=f"Group '{attr['name']} = {g['level']}': objects found less often",
                message=(
                    f"'{attr['name']} = {g['level']}' ({g['n_images']} images, {g['n_boxes']} "
                    f"boxes): detection recall {_fmt(rec)} vs {rest:.2f} for the rest (difference "
                    f"{_fmt(vs)} at the Bonferroni-adjusted level over {block['n_tests']} "  # type: ignore[index]
                    f"tests, margin {block['recall_margin']:g}): the detector misses this "  # type: ignore[index]
                    f"group's objects more often."
                ),
                evidence={"attribute": attr["name"], "group": g["level"],
                          "n_images": g["n_images"], "n_boxes": g["n_boxes"],
                          "recall": rec["value"], "recall_vs_rest": dict(vs)},
            ))  # fmt: skip
    return out


def _value(quantity: str, attr: Mapping[str, Any], level: Mapping[str, Any] | None
           ) -> float | None:  # fmt: skip
    shown = [g for g in attr["levels"] if not g["suppressed"]]
    rec = [g["recall"]["value"] for g in shown if g["recall"]["value"] is not None]
    if quantity == "group_detection_recall":
        return (min(rec) if rec else None) if level is None else level["recall"]["value"]
    if quantity == "group_detection_recall_gap":
        if not rec:
            return None
        if level is None:
            return max(rec) - min(rec)
        v = level["recall"]["value"]
        return None if v is None else max(rec) - v
    if quantity == "group_detection_precision":
        prec = [g["precision"]["value"] for g in shown if g["precision"]["value"] is not None]
        if level is None:
            return min(prec) if prec else None
        return level["precision"]["value"]
    return None


def evaluate_detection_group_gates(
    block: Mapping[str, Any] | None, rules: Sequence[Any]
) -> list[GateResult]:
    """Check the detection group gates of ``rules`` (scope ``"group"``, quantities of
    :data:`DETECTION_GROUP_GATES`); ``cls`` of each result is ``"attribute"`` or
    ``"attribute=level"``."""
    from auditor.analysis.gates import gate_result

    quantities = {q for q, _ in DETECTION_GROUP_GATES.values()}
    out: list[GateResult] = []
    for rule in (r for r in rules if r.scope == "group" and r.quantity in quantities):
        if not block:
            out.append(gate_result(rule, rule.group, None, "no group results ([data] groups)"))
            continue
        attr_name, _, level_name = (rule.group or "").partition("=")
        attr_name, level_name = attr_name.strip(), level_name.strip()
        attrs = [a for a in block["attributes"] if rule.group is None or a["name"] == attr_name]
        if not attrs:
            out.append(gate_result(rule, rule.group, None, "unknown attribute"))
        for attr in attrs:
            if not level_name:
                value = _value(rule.quantity, attr, None)
                out.append(gate_result(rule, attr["name"], value, "no group large enough to gate"))
                continue
            level = next((g for g in attr["levels"] if g["level"] == level_name), None)
            where = f"{attr['name']}={level_name}"
            if level is None:
                out.append(gate_result(rule, where, None, "unknown group"))
            elif level["suppressed"]:
                out.append(gate_result(rule, where, None, "group below min_group_size"))
            else:
                out.append(gate_result(rule, where, _value(rule.quantity, attr, level)))
    return out
