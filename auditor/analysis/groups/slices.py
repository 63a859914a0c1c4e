"""Slice discovery: attribute × attribute and attribute × class cells with low accuracy.

Every cell ``a = x and b = y`` (two attributes) and ``a = x and class = c`` with at least
``max(min_group_size, MIN_SLICE_SIZE)`` samples (and as many outside it) is tested: its
accuracy minus the rest's with the Newcombe (1998) hybrid score interval at the
Bonferroni-adjusted level ``1 - alpha / m``, ``m`` = the number of cells tested. A cell is
reported when the whole interval lies below ``-ACCURACY_MARGIN`` (the margin of the group
tests), the ``MAX_SLICES`` largest gaps first. The auditor thus learns about
"site = B × age = [65, 120]" without naming it in advance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditor.analysis.groups.stats import accuracy_diff, proportion
from auditor.group_results import GroupsResult, Slice

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
    """The top low-accuracy slices (see the module docstring)."""
    min_size = max(groups.min_group_size, MIN_SLICE_SIZE)
    n = len(frame)
    correct = frame["correct"].to_numpy(dtype=bool)
    cells = [
        (where, mask)
        for where, mask in _cells(frame, attributes, classes)
        if min_size <= int(mask.sum()) <= n - min_size
    ]
    if not cells:
        return ()
    adj = 1 - (1 - groups.confidence) / len(cells)
    found = []
    for where, mask in cells:
        diff = accuracy_diff(correct[mask], correct[~mask], adj)
        if diff.high is not None and diff.high < -groups.accuracy_margin:
            acc = proportion(correct[mask], groups.confidence)
            found.append(Slice(where=where, n=int(mask.sum()), accuracy=acc, accuracy_vs_rest=diff))
    found.sort(key=lambda s: (s.accuracy_vs_rest.value or 0.0, s.label()))
    return tuple(found[:MAX_SLICES])
