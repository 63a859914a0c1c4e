"""Slice discovery: attribute × attribute and attribute × class cells with an error or
attention gap.

Every cell ``a = x and b = y`` (two attributes) and ``a = x and class = c`` with at least
``max(min_group_size, MIN_SLICE_SIZE)`` samples (and as many outside it) is tested against the
rest of the data, at the Bonferroni-adjusted level ``1 - alpha / m`` (``m`` = the cells tested
times the quantities tested):

* accuracy: the cell's minus the rest's, Newcombe (1998) hybrid score interval; a gap when the
  whole interval lies below ``-ACCURACY_MARGIN`` (the group tests' margin);
* background focus (where the maps were measured against masks): the cell's mean minus the
  rest's, Welch interval; a gap when the whole interval lies above
  ``BACKGROUND_FOCUS_MARGIN``.

Cells with a gap are reported, the ``MAX_SLICES`` largest accuracy gaps first, then attention
gaps. The auditor thus learns about "site = B × age = [65, 120]" without naming it in advance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditor.analysis.groups.stats import accuracy_diff, mean_ci, mean_diff_ci, proportion
from auditor.group_results import Est, GroupsResult, Slice

__all__ = ["MAX_SLICES", "MIN_SLICE_SIZE", "discover_slices"]

MIN_SLICE_SIZE = 20
"""Smallest cell tested (and never below ``[report] min_group_size``)."""
MAX_SLICES = 10
"""Most slices reported."""


def _cells(
    frame: pd.DataFrame, attributes: Sequence[str], classes: Sequence[str]
) -> list[tuple[tuple[tuple[str, str], ...], np.ndarray]]:
    out: list[tuple[tuple[tuple[str, str], ...], np.ndarray]] = []
    cols = {a: frame[f"group_{a}"].astype(str).to_numpy() for a in attributes}
    for a, b in itertools.combinations(attributes, 2):
        for x in sorted(set(cols[a].tolist())):
            for y in sorted(set(cols[b].tolist())):
                out.append((((a, x), (b, y)), (cols[a] == x) & (cols[b] == y)))
    label = frame["label"].to_numpy()
    for a in attributes:
        for x in sorted(set(cols[a].tolist())):
            for c, name in enumerate(classes):
                out.append((((a, x), ("class", name)), (cols[a] == x) & (label == c)))
    return out


def discover_slices(
    frame: pd.DataFrame,
    attributes: Sequence[str],
    classes: Sequence[str],
    groups: GroupsResult,
) -> tuple[Slice, ...]:
    """The top slices with an accuracy or attention gap (see the module docstring)."""
    min_size = max(groups.min_group_size, MIN_SLICE_SIZE)
    n = len(frame)
    correct = frame["correct"].to_numpy(dtype=bool)
    bf = (
        frame["background_focus"].to_numpy(dtype=np.float64, na_value=np.nan)
        if "background_focus" in frame.columns
        else np.full(n, np.nan)
    )
    cells = [
        (where, mask)
        for where, mask in _cells(frame, attributes, classes)
        if min_size <= int(mask.sum()) <= n - min_size
    ]
    if not cells:
        return ()
    has_bf = bool(np.isfinite(bf).any())
    adj = 1 - (1 - groups.confidence) / (len(cells) * (2 if has_bf else 1))
    found = []
    for where, mask in cells:
        diff = accuracy_diff(correct[mask], correct[~mask], adj)
        bf_diff = mean_diff_ci(bf[mask], bf[~mask], adj) if has_bf else Est()
        acc_gap = diff.high is not None and diff.high < -groups.accuracy_margin
        bf_gap = bf_diff.low is not None and bf_diff.low > groups.background_focus_margin
        if acc_gap or bf_gap:
            acc = proportion(correct[mask], groups.confidence)
            found.append(
                Slice(
                    where=where, n=int(mask.sum()), accuracy=acc, accuracy_vs_rest=diff,
                    background_focus=mean_ci(bf[mask], level=groups.confidence, n_boot=200,
                                             seed=0) if has_bf else Est(),
                    background_focus_vs_rest=bf_diff, accuracy_gap=acc_gap,
                    attention_gap=bf_gap,
                )
            )  # fmt: skip
    found.sort(
        key=lambda s: (
            not s.accuracy_gap,
            s.accuracy_vs_rest.value or 0.0 if s.accuracy_gap else 0.0,
            -(s.background_focus_vs_rest.value or 0.0),
            s.label(),
        )
    )
    return tuple(found[:MAX_SLICES])
