"""Config checks of object-detector audits: ``[model] task = "detection"`` (issue 26).

Torch-free (``auditor.config`` imports it). A detection audit reuses the run directory,
store/resume, statistics, gates and report of the classifier path, but not every key makes
sense for it; what cannot be honoured is refused here, before any model is loaded (exit 2):

* ``[data] format`` must be ``"coco"`` (boxes with a category per box) and ``[data] resize``
  ``"direct"`` (boxes are scaled by the same factors as the image);
* ``[audit] methods`` must be capture methods that need only the target layer's activations
  and the gradient of one detection score (:data:`DETECTION_METHODS`); default
  ``["gradcam", "eigencam"]``;
* ``[gates]``: the localisation metrics (on the box), the finding counts and the detection
  gates (:data:`DETECTION_GATES`) and, with ``--baseline`` or in ``auditor compare``, the
  comparison gates ``max_<q>_increase`` / ``_decrease`` of
  :data:`DETECTION_COMPARE_QUANTITIES` and the box metrics; with ``[data] groups`` the
  detection group gates :data:`DETECTION_GROUP_GATES` (per-group detection recall and
  precision, :mod:`auditor.analysis.detection_groups`); gates on accuracy, interventions of
  classifiers, faithfulness or the classifier's group gates are refused; the detection gates
  are refused in a classification run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from auditor.errors import ConfigError

__all__ = [
    "DETECTION_COMPARE_DIRECTION",
    "DETECTION_COMPARE_QUANTITIES",
    "DETECTION_GATES",
    "DETECTION_GROUP_GATES",
    "DETECTION_METHODS",
    "DETECTION_METRICS",
    "DETECTION_QUANTITIES",
    "TASKS",
    "check_detection_config",
    "check_task_gates",
    "parse_task",
]

TASKS = ("classification", "detection")
#: capture methods whose map needs only A (and dS/dA of the explained detection score)
DETECTION_METHODS = (
    "gradcam",
    "eigencam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigengradcam",
)
DEFAULT_DETECTION_METHODS = ("gradcam", "eigencam")
#: localisation metrics measured on the box (the box is the object's mask)
DETECTION_METRICS = ("energy_in_mask", "background_focus", "energy_lift", "pointing_game")
#: per-class detection quantities (summary.json classes.<c>.detection), gate key -> quantity
DETECTION_GATES: Mapping[str, tuple[str, str]] = {
    "min_detection_recall": ("recall", "min"),
    "min_detection_precision": ("precision", "min"),
    "min_object_only_recall": ("object_only_recall", "min"),
    "max_context_recall_drop": ("context_recall_drop", "max"),
    "max_context_only_hit_rate": ("context_only_hit_rate", "max"),
}
#: gates on ``[data] groups`` of a detection run: key -> (quantity, bound), scope "group"
#: (:mod:`auditor.analysis.detection_groups`)
DETECTION_GROUP_GATES: Mapping[str, tuple[str, str]] = {
    "min_group_detection_recall": ("group_detection_recall", "min"),
    "max_group_detection_recall_gap": ("group_detection_recall_gap", "max"),
    "min_group_detection_precision": ("group_detection_precision", "min"),
}
DETECTION_QUANTITIES = tuple(q for q, _ in DETECTION_GATES.values())
#: quantities paired by ``auditor compare`` of two detection runs (:mod:`auditor.compare.
#: detection`) -> higher is better; their comparison gates are ``max_<q>_increase`` /
#: ``max_<q>_decrease`` (the box metrics' gates are the classifier ones)
DETECTION_COMPARE_DIRECTION: Mapping[str, bool] = {
    "detection_recall": True,
    "detection_precision": True,
    "object_only_recall": True,
    "context_only_hit_rate": False,
    "context_recall_drop": False,
}
DETECTION_COMPARE_QUANTITIES = tuple(DETECTION_COMPARE_DIRECTION)
DEFAULT_SCORE_THRESHOLD = 0.5


def parse_task(table: Mapping[str, Any], source: str) -> tuple[str, float | None]:
    """``([model] task, [model] score_threshold)``; the threshold only with detection."""
    task = table.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(
            f"{source}: [model] task must be 'classification' or 'detection', got {task!r}"
        )
    raw = table.get("score_threshold")
    if raw is None:
        return task, (DEFAULT_SCORE_THRESHOLD if task == "detection" else None)
    if task != "detection":
        raise ConfigError(
            f"{source}: [model] score_threshold = {raw!r} applies to detectors only; set "
            f'[model] task = "detection" or remove it'
        )
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ConfigError(f"{source}: [model] score_threshold must be a number, got {raw!r}")
    if not 0 <= raw < 1:
        raise ConfigError(f"{source}: [model] score_threshold must be in [0, 1), got {raw!r}")
    return task, float(raw)


def _compare_gate_quantity(key: str) -> str | None:
    """``q`` of a comparison gate key ``max_<q>_increase`` / ``max_<q>_decrease``, else None."""
    for end in ("_increase", "_decrease"):
        if key.startswith("max_") and key.endswith(end):
            return key[len("max_") : -len(end)]
    return None


def _allowed_gate(key: str) -> bool:
    if key in DETECTION_GATES or key in DETECTION_GROUP_GATES:
        return True
    q = _compare_gate_quantity(key)
    if q is not None:  # the baseline comparison of two detection runs
        return q in DETECTION_COMPARE_QUANTITIES or q in DETECTION_METRICS
    if key.startswith("max_findings_"):
        return True
    for prefix in ("max_overall_", "min_overall_", "max_", "min_"):
        if key.startswith(prefix):
            return key[len(prefix) :] in DETECTION_METRICS
    return False


def check_task_gates(raw_gates: Mapping[str, Any], task: str, source: str) -> None:
    """Refuse gates that do not exist for ``task`` (before they silently check nothing)."""
    for key in raw_gates:
        if key == "rule":
            if task == "detection" and raw_gates["rule"]:
                raise ConfigError(
                    f"{source}: [[gates.rule]] tables are not supported for detection audits; "
                    f"use the shorthand gates ({', '.join(DETECTION_GATES)}, max_/min_ of "
                    f"{', '.join(DETECTION_METRICS)}, max_findings_<severity>)"
                )
            continue
        if task == "detection" and not _allowed_gate(key):
            raise ConfigError(
                f"{source}: [gates] {key} does not apply to a detection audit ([model] task = "
                f'"detection"); detection gates: {", ".join(DETECTION_GATES)}, max_/min_ of '
                f"{', '.join(DETECTION_METRICS)} (on the box), max_findings_<severity>, with "
                f"[data] groups {', '.join(DETECTION_GROUP_GATES)}; with "
                f"--baseline: max_<q>_increase / _decrease of "
                f"{', '.join(DETECTION_COMPARE_QUANTITIES + DETECTION_METRICS)}"
            )
        if task != "detection" and (
            key in DETECTION_GATES
            or key in DETECTION_GROUP_GATES
            or _compare_gate_quantity(key) in DETECTION_COMPARE_QUANTITIES
        ):
            raise ConfigError(
                f'{source}: [gates] {key} is a detection gate; it needs [model] task = "detection"'
            )


def check_detection_config(raw: Mapping[str, Any], data: Any, audit: Any, source: str) -> Any:
    """Refuse what a detection audit cannot honour; returns the ``[audit]`` settings with the
    detection defaults (methods ``gradcam`` + ``eigencam`` unless given)."""
    fmt = getattr(data, "format", None)
    if fmt != "coco":
        raise ConfigError(
            f"{source}: [data] format = {fmt!r}: a detection audit reads COCO boxes (a category "
            f'per box); set [data] format = "coco" and annotations = "instances.json"'
        )
    if getattr(data, "resize", "direct") != "direct":
        raise ConfigError(
            f"{source}: [data] resize = {data.resize!r} is not supported for detection (a crop "
            f'would cut boxes); use resize = "direct"'
        )
    if "methods" not in raw.get("audit", {}):
        audit = replace(audit, methods=DEFAULT_DETECTION_METHODS)
    bad = [m for m in audit.methods if m not in DETECTION_METHODS]
    if bad:
        raise ConfigError(
            f"{source}: [audit] methods {bad!r} cannot explain a detection score (they need "
            f"a classifier's logits, extra forwards or their own pass); detection methods: "
            f"{', '.join(DETECTION_METHODS)}"
        )
    check_task_gates(raw.get("gates", {}), "detection", source)
    return audit
