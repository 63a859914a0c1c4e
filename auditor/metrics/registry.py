"""Metric metadata the report prints (in the spirit of Quantus' metric attributes).

Quantus: Hedström et al. 2023, "Quantus: An Explainable AI Toolkit for Responsible
Evaluation of Neural Network Explanations and Beyond" (JMLR). Each metric declares its
direction, category, whether it needs an object mask, its range, a plain-text formula and the
paper it comes from. Formulas use unicode only (no markup) so they are HTML- and PDF-safe once
escaped by the template.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from auditor.results import CATEGORIES, MetricInfo

if TYPE_CHECKING:  # torch is imported only where a batch is computed
    from torch import Tensor
else:
    Tensor = Any

__all__ = [
    "CATEGORIES",
    "METRICS",
    "MetricInfo",
    "metric",
    "metric_info",
    "registered_metrics",
    "sample_metric_names",
    "table_metric_names",
    "unregister",
]

_WANG = "Wang et al. 2020, “Score-CAM: Score-Weighted Visual Explanations for CNNs” (CVPR-W)"
_ARRAS = "Arras, Osman & Samek 2022, “CLEVR-XAI: A benchmark dataset for the ground truth "
_ARRAS += "evaluation of neural network explanations” (Information Fusion)"
_XIAO = "Xiao, Engstrom, Ilyas & Madry 2021, “Noise or Signal: The Role of Image Backgrounds "
_XIAO += "in Object Recognition” (ICLR)"
_PETSIUK = "Petsiuk, Das & Saenko 2018, “RISE: Randomized Input Sampling for Explanation of "
_PETSIUK += "Black-box Models” (BMVC)"
_CHATTO = "Chattopadhyay et al. 2018, “Grad-CAM++: Generalized Gradient-based Visual "
_CHATTO += "Explanations for Deep Convolutional Networks” (WACV)"

_ALL = [
    MetricInfo(
        "energy_in_mask",
        "Energy in object",
        True,
        "localisation",
        True,
        (0.0, 1.0),
        "Σ cam·mask / Σ cam",
        "Share of the CAM mass that falls inside the annotated object. Chance level is the "
        "object's area fraction.",
        f"{_WANG}; {_ARRAS} (relevance mass accuracy)",
    ),
    MetricInfo(
        "background_focus",
        "Background focus",
        False,
        "localisation",
        True,
        (0.0, 1.0),
        "1 − Σ cam·mask / Σ cam",
        "Share of the CAM mass on the background: how much the explanation points away from "
        "the object.",
        _WANG,
    ),
    MetricInfo(
        "energy_lift",
        "Energy lift over chance",
        True,
        "localisation",
        True,
        None,
        "(Σ cam·mask / Σ cam) / (|mask| / N)",
        "Energy in the object divided by the object's area fraction: 1 = no better than a "
        "uniform map; comparable across small and large objects. Bounded by N / |mask|.",
        f"{_WANG}; {_ARRAS}",
    ),
    MetricInfo(
        "pointing_game",
        "Pointing game",
        True,
        "localisation",
        True,
        (0.0, 1.0),
        "|argmax cam ∩ dilate(mask, r)| / |argmax cam|",
        "Hit if the CAM's maximum lies in the object (optionally within r pixels). Tied "
        "maxima count fractionally; undefined for a constant map.",
        "Zhang et al. 2018, “Top-down Neural Attention by Excitation Backprop” (IJCV)",
    ),
    MetricInfo(
        "relevance_rank_accuracy",
        "Relevance rank accuracy",
        True,
        "localisation",
        True,
        (0.0, 1.0),
        "|top-K(cam) ∩ mask| / K,  K = |mask|",
        "Share of the K most activated pixels that lie in the object, K being the object's "
        "size. Ties at the K-th value count fractionally.",
        _ARRAS,
    ),
    MetricInfo(
        "iou",
        "IoU at threshold",
        True,
        "localisation",
        True,
        (0.0, 1.0),
        "|{cam ≥ τ·max cam} ∩ mask| / |{cam ≥ τ·max cam} ∪ mask|",
        "Overlap between the thresholded map (τ relative to the image's maximum, 0.5 by "
        "default) and the object.",
        "Zhou et al. 2016, “Learning Deep Features for Discriminative Localization” (CVPR)",
    ),
    MetricInfo(
        "auc",
        "Localisation AUC",
        True,
        "localisation",
        True,
        (0.0, 1.0),
        "P(cam(object pixel) > cam(background pixel)) + ½·P(tie)",
        "ROC-AUC of the CAM values as a detector of object pixels (Mann–Whitney U): 0.5 = "
        "chance, 1 = every object pixel outranks every background pixel.",
        "Mann & Whitney 1947; Hanley & McNeil 1982, “The meaning and use of the area under a "
        "ROC curve” (Radiology)",
    ),
    MetricInfo(
        "density_diff",
        "Saliency density difference",
        True,
        "localisation",
        True,
        None,
        "(mean cam in object − mean cam outside) / mean cam",
        "Contrast of the average activation inside versus outside the object, relative to the "
        "image mean (scale invariant). 0 = no preference.",
        _ARRAS,
    ),
    MetricInfo(
        "border_focus",
        "Border focus",
        False,
        "concentration",
        False,
        (0.0, 1.0),
        "Σ cam·band / Σ cam",
        "Share of the CAM mass in the outer band of the image (10 % of the shorter side by "
        "default): frames, watermarks, rulers and other edge shortcuts.",
        "Lapuschkin et al. 2019, “Unmasking Clever Hans predictors and assessing what machines "
        "really learn” (Nature Communications)",
    ),
    MetricInfo(
        "entropy",
        "Concentration entropy",
        None,
        "concentration",
        False,
        (0.0, 1.0),
        "−Σ p log p / log N,  p = cam / Σ cam",
        "Normalised Shannon entropy of the map: 0 = all mass on one pixel, 1 = uniform. "
        "Describes how diffuse the explanation is.",
        "Shannon 1948, “A Mathematical Theory of Communication” (Bell System Technical Journal)",
    ),
    MetricInfo(
        "deletion_auc",
        "Deletion AUC",
        False,
        "faithfulness",
        False,
        (0.0, 1.0),
        "∫ p(class | image with the top-k% CAM pixels removed) dk",
        "Area under the class-probability curve while the most activated pixels are removed "
        "first: a faithful map makes the score drop fast.",
        _PETSIUK,
    ),
    MetricInfo(
        "insertion_auc",
        "Insertion AUC",
        True,
        "faithfulness",
        False,
        (0.0, 1.0),
        "∫ p(class | blurred image with the top-k% CAM pixels restored) dk",
        "Area under the class-probability curve while the most activated pixels are inserted "
        "first into a blurred image: a faithful map makes the score rise fast.",
        _PETSIUK,
    ),
    MetricInfo(
        "average_drop",
        "Average drop",
        False,
        "faithfulness",
        False,
        (0.0, 1.0),
        "max(0, y − y_masked) / y",
        "Relative drop of the class score when only the CAM-highlighted region is shown.",
        _CHATTO,
    ),
    MetricInfo(
        "increase_in_confidence",
        "Increase in confidence",
        True,
        "faithfulness",
        False,
        (0.0, 1.0),
        "[y_masked > y]",
        "Whether showing only the CAM-highlighted region increases the class score (its mean "
        "is the share of images where it does).",
        _CHATTO,
    ),
    MetricInfo(
        "only_fg_accuracy",
        "Accuracy, object only",
        True,
        "intervention",
        True,
        (0.0, 1.0),
        "accuracy on images with the background removed",
        "Accuracy when only the object is shown (background filled): the model can recognise "
        "the object by itself.",
        _XIAO,
    ),
    MetricInfo(
        "only_bg_accuracy",
        "Accuracy, background only",
        False,
        "intervention",
        True,
        (0.0, 1.0),
        "accuracy on images with the object removed",
        "Accuracy when the object is removed: well above chance means the class can be "
        "predicted from the background alone.",
        _XIAO,
    ),
    MetricInfo(
        "mixed_rand_accuracy",
        "Accuracy, random background",
        True,
        "intervention",
        True,
        (0.0, 1.0),
        "accuracy on objects pasted onto other images' backgrounds",
        "Accuracy when each object is placed on the background of another image: robustness "
        "to background changes.",
        _XIAO,
    ),
    MetricInfo(
        "background_gap",
        "Background gap",
        False,
        "intervention",
        True,
        (-1.0, 1.0),
        "accuracy(clean) − accuracy(mixed random background)",
        "Accuracy lost when the background is swapped for a random one: how much the model "
        "depends on the background.",
        _XIAO,
    ),
]

#: The per-class table of the report (primary method), in column order.
_TABLE = ("energy_in_mask", "background_focus", "energy_lift", "pointing_game", "iou", "auc")

_REGISTRY: dict[str, MetricInfo] = {m.name: replace(m, table=m.name in _TABLE) for m in _ALL}
#: Per-sample functions of metrics added with :func:`metric` (the built-in localisation
#: metrics are computed together by :func:`auditor.metrics.localisation_metrics`).
_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}

#: Every metric the auditor reports, by name (read-only, live: :func:`metric` adds to it).
METRICS: Mapping[str, MetricInfo] = MappingProxyType(_REGISTRY)

MetricFn = TypeVar("MetricFn", bound=Callable[..., Any])


def metric(
    name: str,
    *,
    title: str,
    formula: str,
    higher_is_better: bool | None,
    needs_mask: bool,
    range: tuple[float, float] | None = None,  # noqa: A002 - the metadata's own name
    category: str = "localisation",
    description: str = "",
    reference: str = "",
    table: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Register a per-sample metric: ``fn(cams [B, H, W] float >= 0, masks [B, H, W] bool)
    -> Tensor[B]`` (NaN where undefined), with the metadata the report prints.

    From this one registration the audit computes it for every method and batch (a column of
    ``samples.parquet``; NaN for samples without a mask when ``needs_mask``), aggregates it per
    class and overall (``summary.json``), lists it in the methodology, and, with
    ``table=True``, shows it in the report's per-class table.

    Raises:
        ValueError: ``name`` is already registered, or the metadata is invalid.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"`name` must be an identifier, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"metric {name!r} is already registered")
    info = MetricInfo(
        name,
        title,
        higher_is_better,
        category,
        needs_mask,
        range,
        formula,
        description,
        reference,
        table,
    )

    def deco(fn: MetricFn) -> MetricFn:
        if not callable(fn):
            raise TypeError(f"@metric({name!r}) must decorate a function, got {fn!r}")
        _REGISTRY[name] = info
        _FUNCTIONS[name] = fn
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove a metric added with :func:`metric` (built-in metrics cannot be removed)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"`name` must be a metric added with @metric, got {name!r}")
    del _FUNCTIONS[name]
    del _REGISTRY[name]


def sample_metric_names() -> tuple[str, ...]:
    """Per-sample metrics aggregated per class: the built-in localisation metrics, then the
    ones added with :func:`metric`, in registration order."""
    from auditor.metrics.names import METRIC_NAMES  # torch-free

    return tuple(METRIC_NAMES) + tuple(n for n in _FUNCTIONS if n not in METRIC_NAMES)


def table_metric_names(infos: Mapping[str, MetricInfo] | None = None) -> tuple[str, ...]:
    """The per-class table's columns: metrics with ``table=True`` (of ``infos``, default the
    registry), in registration order."""
    return tuple(n for n, m in (METRICS if infos is None else infos).items() if m.table)


def registered_metrics(cams: Tensor, masks: Tensor, has_mask: Tensor) -> dict[str, Tensor]:
    """The values of every metric added with :func:`metric` on one batch (float64, NaN for
    samples without a mask where the metric needs one)."""
    import torch

    out: dict[str, Tensor] = {}
    for name, fn in _FUNCTIONS.items():
        values = fn(cams, masks)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (cams.shape[0],):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"metric {name!r} must return a Tensor[{cams.shape[0]}], got {got}")
        values = values.to(torch.float64)
        if _REGISTRY[name].needs_mask:
            values = torch.where(has_mask.to(values.device), values, torch.nan)
        out[name] = values
    return out


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None
