"""Names of the per-sample localisation metrics (no torch import: the analysis, the report and
``auditor compare`` need the names, not the tensor code of :mod:`auditor.metrics.localisation`).
"""

from __future__ import annotations

from auditor.audit.status import METRIC_STATUSES

__all__ = ["MASK_METRICS", "METRIC_NAMES", "SANITY_THRESHOLD", "STATUSES"]

#: Keys of :func:`auditor.metrics.localisation.localisation_metrics`, in report order.
METRIC_NAMES: tuple[str, ...] = (
    "energy_in_mask",
    "background_focus",
    "energy_lift",
    "pointing_game",
    "relevance_rank_accuracy",
    "iou",
    "auc",
    "density_diff",
    "border_focus",
    "entropy",
)
#: The metrics that need an object mask.
MASK_METRICS: frozenset[str] = frozenset(METRIC_NAMES) - {"border_focus", "entropy"}
#: Per-sample status values of :func:`localisation_metrics`, in priority order (the first
#: that applies is reported): the metrics' part of the one vocabulary, :mod:`auditor.audit.status`.
STATUSES: tuple[str, ...] = METRIC_STATUSES
#: Default Spearman threshold of the model-randomisation sanity check (Adebayo et al. 2018):
#: maps at least this similar after the randomisation (the head and the target layer's block)
#: fail it
#: (:func:`auditor.metrics.sanity.randomisation_sanity_check`'s ``threshold``).
SANITY_THRESHOLD: float = 0.5
