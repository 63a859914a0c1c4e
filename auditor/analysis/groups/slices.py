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
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from auditor.analysis.groups.stats import accuracy_diff, mean_ci, mean_diff_ci, z_value
from auditor.group_results import Est, GroupsResult, Slice
from auditor.stats import two_proportion_diff_ci, wilson_interval

__all__ = ["MAX_SLICES", "MIN_SLICE_SIZE", "discover_slices"]

MIN_SLICE_SIZE = 20
"""Smallest cell tested (and never below ``[report] min_group_size``)."""
MAX_SLICES = 10
"""Most slices reported."""


@dataclass(frozen=True)
class _Cells:
    """Per-cell sufficient statistics of one attribute pair (or attribute × class): cell
    ``(i, j)`` is ``where[i, j]``; counts, hits, and the finite background focus' count,
    sum and sum of squares. ``O(cells)`` memory: no per-cell mask is ever built."""

    names: tuple[tuple[str, str], tuple[str, str]]
    levels: tuple[Sequence[str], Sequence[str]]
    n: np.ndarray
    hits: np.ndarray
    bf_n: np.ndarray
    bf_sum: np.ndarray
    bf_sq: np.ndarray


def _codes(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    levels, codes = np.unique(values.astype(str), return_inverse=True)
    return [str(v) for v in levels], codes.astype(np.int64)


def _tally(
    names: tuple[str, str],
    a: tuple[list[str], np.ndarray],
    b: tuple[list[str], np.ndarray],
    correct: np.ndarray,
    bf: np.ndarray,
) -> _Cells:
    nb = len(b[0])
    size = len(a[0]) * nb
    key = a[1] * nb + b[1]
    fin = np.isfinite(bf)
    bf0 = np.where(fin, bf, 0.0)

    def count(w: np.ndarray | None) -> np.ndarray:
        return np.bincount(key, weights=w, minlength=size).reshape(len(a[0]), nb)

    return _Cells(
        names=((names[0], ""), (names[1], "")),
        levels=(a[0], b[0]),
        n=count(None),
        hits=count(correct.astype(np.float64)),
        bf_n=count(fin.astype(np.float64)),
        bf_sum=count(bf0),
        bf_sq=count(bf0 * bf0),
    )


def _welch(
    n1: float, s1: float, q1: float, n2: float, s2: float, q2: float, level: float
) -> Est:
    """:func:`~auditor.analysis.groups.stats.mean_diff_ci` from counts, sums and sums of
    squares (sample variances ``(q - s²/n) / (n - 1)``)."""
    if n1 < 2 or n2 < 2:
        return Est()
    m1, m2 = s1 / n1, s2 / n2
    v1 = max(q1 - s1 * m1, 0.0) / (n1 - 1)
    v2 = max(q2 - s2 * m2, 0.0) / (n2 - 1)
    half = z_value(level) * math.sqrt(v1 / n1 + v2 / n2)
    return Est(m1 - m2, m1 - m2 - half, m1 - m2 + half)


def _tables(
    frame: pd.DataFrame, attributes: Sequence[str], classes: Sequence[str], bf: np.ndarray
) -> list[_Cells]:
    correct = frame["correct"].to_numpy(dtype=bool)
    codes = {a: _codes(frame[f"group_{a}"].to_numpy()) for a in attributes}
    out = [
        _tally((a, b), codes[a], codes[b], correct, bf)
        for a, b in itertools.combinations(attributes, 2)
    ]
    label = frame["label"].to_numpy().astype(np.int64)
    ok = (label >= 0) & (label < len(classes))
    cls = (list(classes), np.where(ok, label, 0))
    for a in attributes:
        la, ca = codes[a]
        # samples with a label outside the classes fall in no class cell (weight 0 via n)
        t = _tally((a, "class"), (la, ca), cls, correct & ok, np.where(ok, bf, np.nan))
        n = np.bincount(ca[ok] * len(classes) + cls[1][ok], minlength=len(la) * len(classes))
        out.append(replace(t, n=n.reshape(len(la), len(classes)).astype(np.float64)))
    return out


def discover_slices(
    frame: pd.DataFrame,
    attributes: Sequence[str],
    classes: Sequence[str],
    groups: GroupsResult,
) -> tuple[Slice, ...]:
    """The top slices with an accuracy or attention gap (see the module docstring).

    Streams over cells: per attribute pair one ``bincount`` of the rows (``O(rows + cells)``
    memory), whatever the number of levels."""
    min_size = max(groups.min_group_size, MIN_SLICE_SIZE)
    n = len(frame)
    correct = frame["correct"].to_numpy(dtype=bool)
    bf = (
        frame["background_focus"].to_numpy(dtype=np.float64, na_value=np.nan)
        if "background_focus" in frame.columns
        else np.full(n, np.nan)
    )
    tables = _tables(frame, attributes, classes, bf)
    n_cells = sum(int(((t.n >= min_size) & (t.n <= n - min_size)).sum()) for t in tables)
    if not n_cells:
        return ()
    has_bf = bool(np.isfinite(bf).any())
    adj = 1 - (1 - groups.confidence) / (n_cells * (2 if has_bf else 1))
    tot = (float(correct.sum()), float(np.isfinite(bf).sum()))
    bf_tot = (float(np.nansum(bf)), float(np.nansum(bf * bf)))
    found: list[Slice] = []
    for t in tables:
        for i, j in zip(*np.nonzero((t.n >= min_size) & (t.n <= n - min_size))):
            k, m = int(t.hits[i, j]), int(t.n[i, j])
            # an interval holds its estimate: a cell whose point difference does not clear
            # the margin cannot be flagged, and its interval is not computed (same result)
            diff = Est(k / m - (tot[0] - k) / (n - m))
            if (diff.value or 0.0) < -groups.accuracy_margin:
                diff = Est.of(two_proportion_diff_ci(k, m, int(tot[0]) - k, n - m, adj))
            bf_diff = Est()
            bn, bs = t.bf_n[i, j], t.bf_sum[i, j]
            if has_bf and bn >= 2 and tot[1] - bn >= 2 and (
                bs / bn - (bf_tot[0] - bs) / (tot[1] - bn) > groups.background_focus_margin
            ):
                bf_diff = _welch(bn, bs, t.bf_sq[i, j], tot[1] - bn, bf_tot[0] - bs,
                                 bf_tot[1] - t.bf_sq[i, j], adj)  # fmt: skip
            acc_gap = diff.high is not None and diff.high < -groups.accuracy_margin
            bf_gap = bf_diff.low is not None and bf_diff.low > groups.background_focus_margin
            if acc_gap or bf_gap:
                where = ((t.names[0][0], t.levels[0][i]), (t.names[1][0], t.levels[1][j]))
                found.append(
                    Slice(
                        where=where, n=m,
                        accuracy=Est.of(wilson_interval(k, m, groups.confidence)),
                        accuracy_vs_rest=diff, background_focus_vs_rest=bf_diff,
                        accuracy_gap=acc_gap, attention_gap=bf_gap,
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
    top = found[:MAX_SLICES]
    # the few reported slices get every interval (a skipped one is computed now)
    return tuple(_complete(frame, s, correct, bf, classes, groups, adj, has_bf) for s in top)


def _complete(
    frame: pd.DataFrame,
    s: Slice,
    correct: np.ndarray,
    bf: np.ndarray,
    classes: Sequence[str],
    groups: GroupsResult,
    adj: float,
    has_bf: bool,
) -> Slice:
    mask = np.ones(len(frame), dtype=bool)
    for attr, level in s.where:
        if attr == "class":
            mask &= frame["label"].to_numpy() == list(classes).index(level)
        else:
            mask &= frame[f"group_{attr}"].astype(str).to_numpy() == level
    if s.accuracy_vs_rest.high is None:
        s = replace(s, accuracy_vs_rest=accuracy_diff(correct[mask], correct[~mask], adj))
    if has_bf:
        bf_ci = mean_ci(bf[mask], level=groups.confidence, n_boot=200, seed=0)
        s = replace(s, background_focus=bf_ci)
        if s.background_focus_vs_rest.high is None:
            s = replace(s, background_focus_vs_rest=mean_diff_ci(bf[mask], bf[~mask], adj))
    return s
