"""Metric metadata the report prints (in the spirit of Quantus' metric attributes).

Quantus: Hedström et al. 2023, "Quantus: An Explainable AI Toolkit for Responsible
Evaluation of Neural Network Explanations and Beyond" (JMLR). Each metric declares its
direction, category, whether it needs an object mask, its range, a plain-text formula and the
paper it comes from. Formulas use unicode only (no markup) so they are HTML- and PDF-safe once
escaped by the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from auditor.results import CATEGORIES, MetricInfo

__all__ = ["CATEGORIES", "METRICS", "MetricInfo", "metric_info"]

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

#: Every metric the auditor reports, by name (read-only).
METRICS: Mapping[str, MetricInfo] = MappingProxyType({m.name: m for m in _ALL})


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None
