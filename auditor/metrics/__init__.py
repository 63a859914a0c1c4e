"""Metrics on class activation maps: localisation, concentration, interventions, metadata.

Public API::

    from auditor.metrics import energy_in_mask, localisation_metrics, METRICS
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.lazy import lazy_attribute
from auditor.metrics.names import MASK_METRICS, METRIC_NAMES, STATUSES
from auditor.metrics.registry import CATEGORIES, METRICS, MetricInfo, metric_info

if TYPE_CHECKING:
    from auditor.metrics.interventions import (
        FILLS,
        derangement,
        masked_gaussian_blur,
        mixed_random,
        only_background,
        only_foreground,
    )
    from auditor.metrics.localisation import (
        background_focus,
        border_focus,
        concentration_entropy,
        dilate_masks,
        energy_in_mask,
        energy_lift,
        iou_at_threshold,
        localisation_auc,
        localisation_metrics,
        pointing_game,
        relevance_rank_accuracy,
        saliency_density_difference,
    )

#: Names served lazily (their modules import torch): name -> module.
_LAZY = {
    **dict.fromkeys(
        (
            "FILLS",
            "derangement",
            "masked_gaussian_blur",
            "mixed_random",
            "only_background",
            "only_foreground",
        ),
        "auditor.metrics.interventions",
    ),
    **dict.fromkeys(
        (
            "background_focus",
            "border_focus",
            "concentration_entropy",
            "dilate_masks",
            "energy_in_mask",
            "energy_lift",
            "iou_at_threshold",
            "localisation_auc",
            "localisation_metrics",
            "pointing_game",
            "relevance_rank_accuracy",
            "saliency_density_difference",
        ),
        "auditor.metrics.localisation",
    ),
}


def __getattr__(name: str) -> Any:
    """The tensor functions, imported on first use: ``import auditor.metrics`` (and the
    metadata in :data:`METRICS`) does not import torch."""
    return lazy_attribute(globals(), _LAZY, __name__, name)


__all__ = [
    "CATEGORIES",
    "FILLS",
    "MASK_METRICS",
    "METRICS",
    "METRIC_NAMES",
    "STATUSES",
    "MetricInfo",
    "background_focus",
    "border_focus",
    "concentration_entropy",
    "derangement",
    "dilate_masks",
    "energy_in_mask",
    "energy_lift",
    "iou_at_threshold",
    "localisation_auc",
    "localisation_metrics",
    "masked_gaussian_blur",
    "metric_info",
    "mixed_random",
    "only_background",
    "only_foreground",
    "pointing_game",
    "relevance_rank_accuracy",
    "saliency_density_difference",
]
