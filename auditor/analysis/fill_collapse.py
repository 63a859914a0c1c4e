"""Fill collapse: is an intervention testing the model, or the fill? (issue 22)

An intervention (Xiao, Engstrom, Ilyas & Madry 2021, "Noise or Signal", ICLR) replaces part of
each image by a fill. When the filled images are out of distribution for the model, they may
all be called the same class whatever they showed: the edit, not the model's use of the
background, then moves the predictions, and a drop in accuracy is no evidence about any class.
This module decides, from the stored per-sample outcomes and BEFORE any rule reads them,
whether an intervention collapsed. The rules and margins were fixed before any benchmark
number was read and are the same for every case.

**only-background** (object removed; the stored ``only_bg_pred``): with :math:`n` valid edited
images, :math:`c^*` the class predicted most often for them and :math:`k` how often,

.. math:: \\text{collapsed} \\iff c^* \\text{ is the modal edited prediction of every true class}
          \\;\\wedge\\; \\mathrm{Wilson}_{low}(k, n) > q_{orig}(c^*) + m

with :math:`q_{orig}(c^*)` the share of the SAME images' unedited predictions that are
:math:`c^*` and :math:`m` = ``margin`` (0.25). A model that predicts each class's background
as its own class does not collapse (the modal prediction differs between classes).

**only-foreground** (background removed; only ``only_fg_correct`` is stored, not the class
predicted): the edit collapses when at most one class keeps its only-foreground accuracy above
chance (:math:`1/C`, Wilson upper bound ≤ chance for all the others) while at least two of those
others were above chance unedited (Wilson lower bound > chance) — every class but one is
pushed below chance at once, which is what a fill mistaken for one class does. The concentration
itself cannot be checked without the edited predictions, so this is the weaker of the two tests
(stated in docs/validity.md).

A collapsed intervention never becomes a class finding by itself: the rules that read it
(``background_reliance``'s disagreement, ``background_sufficiency``) skip it, and the run-wide
``intervention_uninformative`` finding (info) names it with its numbers and the fill used.
Alternative fills (blur, noise, the image's own mean, inpainting) are not retried yet: the
intervention is marked uninformative instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.stats import wilson_interval

__all__ = ["COLLAPSE_MARGIN", "Collapse", "only_bg_collapse", "only_fg_collapse"]

#: how far (share of images) the edited images' modal prediction must exceed the unedited share
COLLAPSE_MARGIN = 0.25


@dataclass(frozen=True)
class Collapse:
    """Outcome of a collapse check of one intervention (``evidence`` goes into summary.json)."""

    intervention: str
    collapsed: bool
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


def only_bg_collapse(
    labels: np.ndarray,
    preds: np.ndarray,
    only_bg_pred: np.ndarray | None,
    n_classes: int,
    *,
    confidence: float = 0.95,
    margin: float = COLLAPSE_MARGIN,
) -> Collapse:
    """Whether the only-background edit collapses every class to one prediction (module doc).

    Args:
        labels, preds: true and predicted (unedited) classes, ``[N]``.
        only_bg_pred: the class the background alone was predicted as, ``[N]`` (-1: not run).
        n_classes: number of classes.
    """
    if only_bg_pred is None:
        return Collapse("only_bg", False, "not run")
    lab = np.asarray(labels, dtype=np.int64)
    ob = np.asarray(only_bg_pred, dtype=np.int64)
    pr = np.asarray(preds, dtype=np.int64)
    if not (lab.shape == ob.shape == pr.shape):
        raise ValueError(
            f"`labels`, `preds` and `only_bg_pred` must have the same shape, got "
            f"{lab.shape}, {pr.shape}, {ob.shape}"
        )
    valid = ob >= 0
    n = int(valid.sum())
    present = np.unique(lab[valid])
    if n < 2 * max(n_classes, 1) or present.size < 2:
        return Collapse("only_bg", False, "too few edited images to test")
    counts = np.bincount(ob[valid], minlength=n_classes)
    top = int(np.argmax(counts))
    k = int(counts[top])
    modal_everywhere = all(
        int(np.argmax(np.bincount(ob[valid & (lab == c)], minlength=n_classes))) == top
        for c in present
    )
    w = wilson_interval(k, n, confidence=confidence)
    q_orig = float(np.mean(pr[valid] == top))
    collapsed = bool(modal_everywhere and w.low > q_orig + margin)
    evidence = {
        "intervention": "only_bg",
        "modal_class_index": top,
        "n": n,
        "k": k,
        "share": k / n,
        "ci": [w.low, w.high],
        "unedited_share": q_orig,
        "margin": margin,
        "modal_for_every_class": modal_everywhere,
    }
    reason = (
        f"{k} of {n} background-only images ({k / n:.0%}) are predicted as one class, "
        f"against {q_orig:.0%} of the same images unedited"
        if collapsed
        else "no collapse"
    )
    return Collapse("only_bg", collapsed, reason, evidence)


def only_fg_collapse(
    labels: np.ndarray,
    correct: np.ndarray,
    only_fg_correct: np.ndarray | None,
    n_classes: int,
    *,
    confidence: float = 0.95,
) -> Collapse:
    """Whether the only-foreground edit pushes every class but one below chance (module doc)."""
    if only_fg_correct is None:
        return Collapse("only_fg", False, "not run")
    lab = np.asarray(labels, dtype=np.int64)
    cor = np.asarray(correct, dtype=np.float64)
    fg = np.asarray(only_fg_correct, dtype=np.float64)
    if not (lab.shape == cor.shape == fg.shape):
        raise ValueError(
            f"`labels`, `correct` and `only_fg_correct` must have the same shape, got "
            f"{lab.shape}, {cor.shape}, {fg.shape}"
        )
    chance = 1.0 / max(n_classes, 1)
    valid = np.isfinite(fg) & np.isfinite(cor)
    kept, pushed, was_above = [], [], []
    per_class: dict[int, dict[str, float]] = {}
    for c in np.unique(lab[valid]):
        sel = valid & (lab == c)
        n = int(sel.sum())
        if n < 5:
            continue
        we = wilson_interval(int(fg[sel].sum()), n, confidence=confidence)
        wo = wilson_interval(int(cor[sel].sum()), n, confidence=confidence)
        per_class[int(c)] = {"n": n, "accuracy": wo.estimate, "only_fg_accuracy": we.estimate}
        if we.high <= chance:
            pushed.append(int(c))
            if wo.low > chance:
                was_above.append(int(c))
        else:
            kept.append(int(c))
    tested = len(kept) + len(pushed)
    collapsed = bool(tested >= 2 and len(kept) <= 1 and len(was_above) >= 2)
    evidence = {
        "intervention": "only_fg",
        "chance": chance,
        "classes_kept_above_chance": kept,
        "classes_pushed_below_chance": pushed,
        "per_class": {str(c): v for c, v in per_class.items()},
    }
    reason = (
        f"the background-removed images of {len(pushed)} of {tested} classes fall below "
        "chance at once"
        if collapsed
        else "no collapse"
    )
    return Collapse("only_fg", collapsed, reason, evidence)
