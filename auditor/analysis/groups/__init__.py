"""Audit by metadata groups (issue 24): per-group statistics, tested disparities, findings.

``analyse_groups(frame, ...)`` takes the primary method's rows (one per sample) with one
``group_<attribute>`` column per ``[data] groups`` attribute and returns a
:class:`~auditor.group_results.GroupsResult`:

* per level: n, accuracy (Wilson 1927), background focus and energy in mask (BCa bootstrap
  means, samples with a mask), only-background and only-object accuracy (Wilson; where the
  interventions ran), top-label ECE (Guo et al. 2017) with a percentile bootstrap interval;
* per class × level: one-vs-rest sensitivity and specificity (Wilson), AUROC of ``p_c``
  (DeLong interval; "not estimable" where the level lacks positives or negatives) and the
  class-wise ECE of ``p_c`` (Kull et al. 2019) with a bootstrap interval;
* disparity: each level against the rest of the data (accuracy: Newcombe 1998 hybrid score
  interval; background focus: Welch normal interval), at a **Bonferroni**-adjusted level
  ``1 - alpha / m`` where ``m`` counts every test of the run (2 per eligible level); a level
  is flagged only when the whole adjusted interval clears a margin fixed before measuring:
  accuracy lower by more than :data:`ACCURACY_MARGIN`, or background focus higher by more
  than :data:`BACKGROUND_FOCUS_MARGIN`. Also each level against the best level and the
  largest gap per attribute (unadjusted intervals, descriptive).
* small cells: levels with fewer than ``min_group_size`` samples carry no number, are never
  tested, gated or named in a finding.

Slice discovery (attribute × attribute and attribute × class cells) lives in
:mod:`auditor.analysis.groups.slices`; gates in :mod:`auditor.analysis.groups.gates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from auditor.analysis.groups.auroc import ClassScores
from auditor.analysis.groups.stats import (
    accuracy_diff,
    class_cells,
    ece_ci,
    mean_ci,
    mean_diff_ci,
    proportion,
)
from auditor.group_results import AttributeResult, ClassCell, Est, GroupsResult, GroupStat
from auditor.results import Finding

__all__ = [
    "ACCURACY_MARGIN",
    "BACKGROUND_FOCUS_MARGIN",
    "analyse_groups",
    "group_findings",
]

ACCURACY_MARGIN = 0.05
"""A group is flagged when its accuracy is lower than the rest's by more than this (whole
adjusted interval below ``-margin``). Fixed before any measurement; not tuned per case."""
BACKGROUND_FOCUS_MARGIN = 0.10
"""A group is flagged when its mean background focus exceeds the rest's by more than this
(whole adjusted interval above ``margin``)."""

_COLUMNS = ("label", "pred", "correct", "pred_confidence", "background_focus", "energy_in_mask")


def _col(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _eligible(
    frame: pd.DataFrame, attrs: Sequence[str], min_size: int
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Levels shown (``n >= min_size``) and tested (also ``n_rest >= min_size``: a test
    against a small rest would reveal the small groups) per attribute."""
    shown: dict[str, set[str]] = {}
    tested: dict[str, set[str]] = {}
    n = len(frame)
    for a in attrs:
        counts = frame[f"group_{a}"].astype(str).value_counts()
        shown[a] = {str(k) for k, c in counts.items() if c >= min_size}
        tested[a] = {k for k in shown[a] if n - int(counts[k]) >= min_size}
    return shown, tested


def analyse_groups(
    frame: pd.DataFrame,
    attributes: Sequence[str],
    classes: Sequence[str],
    *,
    min_group_size: int = 10,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    scores: ClassScores | None = None,
) -> GroupsResult:
    """Per-attribute group statistics and disparity tests (see the module docstring).

    ``scores``: the rows' class probabilities (:func:`~auditor.analysis.groups.auroc.
    class_scores`, aligned with ``frame``) for the class × group AUROC and class-wise ECE;
    None (a run without them): those cells carry no AUROC/ECE.
    """
    if min_group_size < 1:
        raise ValueError(f"`min_group_size` must be >= 1, got {min_group_size!r}")
    shown, tested = _eligible(frame, attributes, min_group_size)
    has_bf = bool(np.isfinite(_col(frame, "background_focus")).any())
    m = sum(len(v) for v in tested.values()) * (2 if has_bf else 1)
    adj = 1 - (1 - confidence) / max(m, 1)
    correct = frame["correct"].to_numpy(dtype=bool)
    bf = _col(frame, "background_focus")
    results = []
    for i, a in enumerate(attributes):
        col = frame[f"group_{a}"].astype(str).to_numpy()
        levels = []
        for lev in sorted(set(col.tolist())):
            inside = col == lev
            if lev not in shown[a]:
                levels.append(GroupStat(level=lev, n=0, suppressed=True))
                continue
            sub = frame[inside]
            g = GroupStat(
                level=lev,
                n=int(inside.sum()),
                accuracy=proportion(correct[inside], confidence),
                background_focus=mean_ci(bf[inside], level=confidence, n_boot=n_boot, seed=seed),
                energy_in_mask=mean_ci(
                    _col(sub, "energy_in_mask"), level=confidence, n_boot=n_boot, seed=seed
                ),
                only_bg_accuracy=proportion(_col(sub, "only_bg_correct"), confidence),
                only_fg_accuracy=proportion(_col(sub, "only_fg_correct"), confidence),
                ece=ece_ci(
                    _col(sub, "pred_confidence"),
                    correct[inside],
                    level=confidence,
                    n_boot=min(n_boot, 500),
                    seed=seed + i,
                ),
            )
            if lev in tested[a]:
                g = replace(
                    g,
                    accuracy_vs_rest=accuracy_diff(correct[inside], correct[~inside], adj),
                    background_focus_vs_rest=mean_diff_ci(bf[inside], bf[~inside], adj),
                )
            levels.append(g)
        cells = class_cells(frame, a, list(classes), min_size=min_group_size, level=confidence,
                            scores=scores, n_boot=min(n_boot, 200), seed=seed)  # fmt: skip
        results.append(_attribute(a, levels, col, correct, confidence, cells))
    bf_all = bf[np.isfinite(bf)]
    return GroupsResult(
        attributes=tuple(results),
        overall_accuracy=float(correct.mean()) if correct.size else None,
        overall_background_focus=float(bf_all.mean()) if bf_all.size else None,
        min_group_size=int(min_group_size),
        confidence=float(confidence),
        adjustment="bonferroni",
        n_tests=int(m),
        accuracy_margin=ACCURACY_MARGIN,
        background_focus_margin=BACKGROUND_FOCUS_MARGIN,
    )


def _flagged(g: GroupStat) -> bool:
    acc = g.accuracy_vs_rest.high is not None and g.accuracy_vs_rest.high < -ACCURACY_MARGIN
    low = g.background_focus_vs_rest.low
    return acc or (low is not None and low > BACKGROUND_FOCUS_MARGIN)


def _attribute(
    name: str,
    levels: list[GroupStat],
    col: np.ndarray,
    correct: np.ndarray,
    confidence: float,
    cells: tuple[ClassCell, ...],
) -> AttributeResult:
    """Worst group, gaps to the best group, the largest gap and the flags of one attribute."""
    shown = [g for g in levels if not g.suppressed and g.accuracy.value is not None]
    worst = best = None
    gap = Est()
    if shown:
        worst = min(shown, key=lambda g: (g.accuracy.value, g.level))
        best = max(shown, key=lambda g: (g.accuracy.value, g.level))
        gap = accuracy_diff(correct[col == best.level], correct[col == worst.level], confidence)
    out = []
    for g in levels:
        if not g.suppressed and best is not None:
            vs_best = accuracy_diff(correct[col == g.level], correct[col == best.level], confidence)
            g = replace(g, accuracy_vs_best=vs_best, flagged=_flagged(g))
        out.append(g)
    return AttributeResult(
        name=name,
        levels=tuple(out),
        worst=None if worst is None else worst.level,
        worst_accuracy=None if worst is None else worst.accuracy.value,
        largest_gap=gap,
        classes=cells,
    )


def _fmt(e: Est) -> str:
    if e.value is None:
        return "n/a"
    if e.low is None or e.high is None:
        return f"{e.value:.2f}"
    return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"


def _rest(value: float | None, diff: float | None) -> str:
    return "n/a" if value is None or diff is None else f"{value - diff:.2f}"


def group_findings(groups: GroupsResult) -> list[Finding]:
    """One finding per flagged group (never for a suppressed one), naming it and its evidence:
    "'site = B' (n = 412): accuracy 0.71 [0.66, 0.75] vs 0.93 for the rest; background focus
    0.62 vs 0.31: ...". Unflagged groups stay silent."""
    out: list[Finding] = []
    for attr in groups.attributes:
        for g in attr.levels:
            if g.suppressed or not g.flagged:
                continue
            acc_low = (g.accuracy_vs_rest.high or 0.0) < -groups.accuracy_margin
            bf_high = (g.background_focus_vs_rest.low or 0.0) > groups.background_focus_margin
            parts = [
                f"accuracy {_fmt(g.accuracy)} vs "
                f"{_rest(g.accuracy.value, g.accuracy_vs_rest.value)} for the rest"
            ]
            if g.background_focus.value is not None:
                parts.append(
                    f"background focus {g.background_focus.value:.2f} vs "
                    f"{_rest(g.background_focus.value, g.background_focus_vs_rest.value)}"
                )
            why = (
                "the model reads this group's images from outside the object"
                if bf_high
                else "the model is less accurate on this group"
            )
            if bf_high and not acc_low:
                why = "the model looks outside the object more on this group's images"
            out.append(
                Finding(
                    kind="group_disparity",
                    severity="high" if acc_low else "medium",
                    title=f"Group '{attr.name} = {g.level}' differs from the rest",
                    message=f"'{attr.name} = {g.level}' (n = {g.n}): "
                    + "; ".join(parts)
                    + f": {why} (differences tested at the Bonferroni-adjusted level over "
                    f"{groups.n_tests} tests, margins {groups.accuracy_margin:g} accuracy, "
                    f"{groups.background_focus_margin:g} background focus).",
                    evidence={
                        "attribute": attr.name,
                        "group": g.level,
                        "n": g.n,
                        "accuracy": g.accuracy.value,
                        "accuracy_vs_rest": g.accuracy_vs_rest.to_json(),
                        "background_focus": g.background_focus.value,
                        "background_focus_vs_rest": g.background_focus_vs_rest.to_json(),
                    },
                )
            )
    return out
