"""One status vocabulary: every per-sample status value the audit can write, defined once.

Three producers report on a sample, each with a precedence order over its own values (the
highest applicable one is reported):

- the CAM engine (:class:`auditor.cam.CamEngine`, ``CamBatch.status``, the ``cam_status``
  column of ``samples.parquet``): :data:`CAM_STATUSES`, lowest precedence first;
- the localisation metrics (:func:`auditor.metrics.localisation_metrics`):
  :data:`METRIC_STATUSES`, highest precedence first;
- the runner: ``nonfinite_logits`` (the model's logits are NaN/inf: no prediction).

``samples.parquet`` ``status`` (:data:`SAMPLE_STATUSES`) is the sample's status for the metrics:
``nonfinite_logits`` when the logits are not finite, else ``nonfinite`` when the engine or the
map reports non-finite values, else the metrics' status. The same word means the same thing
everywhere (:data:`STATUSES`). Older run directories (0.1.0 development builds) say
``nonfinite_cam`` where they now say ``nonfinite``; :func:`migrate_status` /
:data:`LEGACY_STATUSES` read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CAM_STATUSES",
    "LEGACY_STATUSES",
    "METRIC_STATUSES",
    "SAMPLE_STATUSES",
    "STATUSES",
    "STATUS_MEANINGS",
    "migrate_status",
    "sample_status",
    "statuses_markdown",
]

STATUS_MEANINGS: Mapping[str, str] = {
    "ok": "the map and the metrics are defined",
    "zero_map": "engine: the map is 0 everywhere after ReLU",
    "constant_activation": "engine: every channel of the target layer is spatially constant",
    "zero_gradient": "engine: gradient methods, dy_c/dA = 0 everywhere",
    "nonfinite": "NaN/inf in the sample's activations, gradients or map; map zeroed, metrics NaN",
    "method_failed": "engine: the method could not compute this sample's map (zeros)",
    "zero_cam": "metrics: the map is 0 everywhere; every metric NaN",
    "no_mask": "metrics: the sample has no object mask; mask metrics NaN",
    "empty_mask": "metrics: the mask is empty; mask metrics NaN",
    "full_mask": "metrics: the mask covers the whole image; mask metrics NaN",
    "constant_cam": "metrics: the map is constant; metrics that select top pixels NaN",
    "nonfinite_logits": "the model's logits are NaN/inf: prediction -1, metrics NaN",
}
"""What each status means (docs/run-directory.md lists the same table)."""

STATUSES: tuple[str, ...] = tuple(STATUS_MEANINGS)
"""The one vocabulary: every status value any producer may write."""

CAM_STATUSES: tuple[str, ...] = (
    "ok",
    "zero_map",
    "constant_activation",
    "zero_gradient",
    "nonfinite",
    "method_failed",
)
"""The engine's statuses, by increasing precedence (``auditor.cam.STATUSES``)."""

METRIC_STATUSES: tuple[str, ...] = (
    "nonfinite",
    "zero_cam",
    "no_mask",
    "empty_mask",
    "full_mask",
    "constant_cam",
    "ok",
)
"""The localisation metrics' statuses, first that applies wins (``auditor.metrics.STATUSES``)."""

SAMPLE_STATUSES: tuple[str, ...] = ("nonfinite_logits", *METRIC_STATUSES)
"""Values of ``samples.parquet`` ``status``, by decreasing precedence."""

LEGACY_STATUSES: Mapping[str, str] = {"nonfinite_cam": "nonfinite"}
"""Old status values → their name now (run directories written before the vocabulary was one)."""

if set(CAM_STATUSES) | set(SAMPLE_STATUSES) != set(STATUSES) or set(LEGACY_STATUSES) & set(
    STATUSES
):  # pragma: no cover - a definition error, caught on import
    raise RuntimeError(
        "auditor.audit.status: the producers' statuses must make up STATUSES exactly"
    )


def migrate_status(value: str) -> str:
    """The current name of a status value read from an old run directory (else ``value``)."""
    return LEGACY_STATUSES.get(value, value)


def sample_status(
    metric_status: Iterable[str], cam_status: Iterable[str], bad_logits: Iterable[Any]
) -> list[str]:
    """``samples.parquet`` ``status`` per sample: see the module docstring (its precedence).

    ``bad_logits`` is a per-sample sequence of bools (non-finite logits).
    """
    out = []
    for st, cam, bad in zip(metric_status, cam_status, bad_logits):
        if bad:
            out.append("nonfinite_logits")
        elif cam == "nonfinite":
            out.append("nonfinite")
        else:
            out.append(st)
    return out


def statuses_markdown() -> str:
    """A markdown table of :data:`STATUS_MEANINGS` (docs/run-directory.md prints it)."""
    where: dict[str, list[str]] = {s: [] for s in STATUSES}
    for column, values in (("cam_status", CAM_STATUSES), ("status", SAMPLE_STATUSES)):
        for value in values:
            where[value].append(f"`{column}`")
    lines = ["| status | column | meaning |", "|---|---|---|"]
    lines += [f"| `{s}` | {', '.join(where[s])} | {STATUS_MEANINGS[s]} |" for s in STATUSES]
    return "\n".join(lines)
