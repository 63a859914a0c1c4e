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

**only-foreground** (background removed): runs since issue 22's fill choice store the class
predicted (``only_fg_pred``), and the same concentration test applies to it. That test was
added after the benchmark's clean twin showed why it is needed (the cause, not a number: with
the ``mean`` fill the background-removed images of three classes were mostly called 'zero',
and the test below, blind to WHICH class they were called, saw two classes still above
chance and let an "evidence_disagreement" through as a medium finding on clean classes).
Without ``only_fg_pred`` (older runs), or when the concentration test does not fire, the
edit collapses when at most one class keeps its only-foreground accuracy above
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

_WORDS = {"only_bg": "background-only", "only_fg": "object-only (background removed)"}

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
    return concentration_collapse(
        "only_bg", labels, preds, only_bg_pred, n_classes, confidence=confidence, margin=margin
    )


def concentration_collapse(
    intervention: str,
    labels: np.ndarray,
    preds: np.ndarray,
    only_bg_pred: np.ndarray | None,
    n_classes: int,
    *,
    confidence: float = 0.95,
    margin: float = COLLAPSE_MARGIN,
) -> Collapse:
    """The concentration test of the module docstring on any intervention's predicted classes
    (``only_bg_pred`` here names the edited images' predictions, -1: not run)."""
    if only_bg_pred is None:
        return Collapse(intervention, False, "not run")
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
        return Collapse(intervention, False, "too few edited images to test")
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
        "intervention": intervention,
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
        f"{k} of {n} {_WORDS.get(intervention, intervention)} images ({k / n:.0%}) are "
        "predicted as one class, "
        f"against {q_orig:.0%} of the same images unedited"
        if collapsed
        else "no collapse"
    )
    return Collapse(intervention, collapsed, reason, evidence)


def only_fg_collapse(
    labels: np.ndarray,
    correct: np.ndarray,
    only_fg_correct: np.ndarray | None,
    n_classes: int,
    *,
    confidence: float = 0.95,
    preds: np.ndarray | None = None,
    only_fg_pred: np.ndarray | None = None,
) -> Collapse:
    """Whether the only-foreground edit collapses (module doc): the concentration test on the
    edited images' predicted classes when ``preds`` and ``only_fg_pred`` are given (runs since
    issue 22 store ``only_fg_pred``), else (or when it does not fire) the weaker below-chance
    test on ``only_fg_correct``."""
    if preds is not None and only_fg_pred is not None:
        res = concentration_collapse(
            "only_fg", labels, preds, only_fg_pred, n_classes, confidence=confidence
        )
        if res.collapsed:
            return res
    return _only_fg_below_chance(labels, correct, only_fg_correct, n_classes, confidence)


def _only_fg_below_chance(
    labels: np.ndarray,
    correct: np.ndarray,
    only_fg_correct: np.ndarray | None,
    n_classes: int,
    confidence: float,
) -> Collapse:
    """Every class but one pushed below chance at once (the test without predicted classes)."""
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
