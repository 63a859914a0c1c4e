"""One-vs-rest AUROC with the DeLong interval, and the per-class scores it reads (issue 24).

For class ``c`` in a group, the positives are the group's samples labelled ``c`` and the
negatives the group's other samples; the score of a sample is ``p_c(x)``, its softmax
probability of ``c`` (``samples.parquet`` ``top_classes``/``top_probs``/``label_confidence``,
:mod:`auditor.audit.probabilities`). Torch-free.

AUROC (Mann–Whitney form, Hanley & McNeil 1982), ties counted one half:

.. math:: \\hat A = \\frac{1}{mn}\\sum_{i=1}^{m}\\sum_{j=1}^{n} \\psi(X_i, Y_j),\\quad
          \\psi(x, y) = [x > y] + \\tfrac12 [x = y]

with ``X`` the positives' and ``Y`` the negatives' scores. Its variance is DeLong's (DeLong,
DeLong & Clarke-Pearson 1988, Biometrics 44:837), from the structural components computed with
midranks (Sun & Xu 2014, IEEE SPL 21:1389):

.. math:: V_{10}(X_i) = \\frac{R(X_i) - R_X(X_i)}{n},\\quad
          V_{01}(Y_j) = 1 - \\frac{R(Y_j) - R_Y(Y_j)}{m},\\quad
          \\widehat{\\mathrm{Var}} = \\frac{s^2_{10}}{m} + \\frac{s^2_{01}}{n}

(``R`` the midrank among all scores, ``R_X``/``R_Y`` within the positives/negatives, ``s^2``
sample variances), and the interval ``A ± z sqrt(Var)`` clipped to [0, 1]. A perfect
separation has variance 0 and the interval ``[1, 1]``: read it with the group's ``n``.

A group with no positive or no negative sample of the class has **no AUROC** ("not
estimable", never a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.group_results import Est

__all__ = ["ClassScores", "auroc_ci", "class_scores"]


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.size
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks_sorted = np.repeat(avg, ends - starts)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def auroc_ci(positives: np.ndarray, negatives: np.ndarray, level: float) -> tuple[Est, str]:
    """AUROC of ``positives`` over ``negatives`` with the DeLong interval at ``level``.

    Returns ``(estimate, note)``: ``note`` is ``""`` or why there is no number
    (``"not estimable: no negative sample"``). Non-finite scores are an error (the caller
    drops samples without a prediction first).
    """
    x = np.asarray(positives, dtype=np.float64).ravel()
    y = np.asarray(negatives, dtype=np.float64).ravel()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("`positives` and `negatives` must be finite scores")
    if x.size == 0:
        return Est(), "not estimable: no positive sample in the group"
    if y.size == 0:
        return Est(), "not estimable: no negative sample in the group"
    m, n = x.size, y.size
    r_all = _midranks(np.concatenate([x, y]))
    v10 = (r_all[:m] - _midranks(x)) / n
    v01 = 1.0 - (r_all[m:] - _midranks(y)) / m
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    from auditor.analysis.groups.stats import z_value

    half = z_value(level) * math.sqrt(max(var, 0.0))
    return Est(auc, max(0.0, auc - half), min(1.0, auc + half)), ""


@dataclass(frozen=True)
class ClassScores:
    """``p_c(x)`` for every sample and class: ``probs`` [n, C] (NaN where not stored: a class
    outside the sample's top-k that is not its label), ``bound`` [n] (the sample's smallest
    stored probability, an upper bound of every probability not stored; NaN when the full
    vector is stored) and ``valid`` [n] (the sample has probabilities)."""

    probs: np.ndarray
    bound: np.ndarray
    valid: np.ndarray

    def column(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """``(score, censored)`` of class ``c``: censored scores are replaced by their upper
        bound (so the AUROC computed from them is a lower bound of the true one)."""
        s = self.probs[:, c].astype(np.float64)
        censored = ~np.isfinite(s) & self.valid
        s = np.where(censored, self.bound, s)
        return s, censored


def class_scores(
    n_classes: int,
    label: np.ndarray,
    label_confidence: np.ndarray,
    top_classes: Any,
    top_probs: Any,
) -> ClassScores | None:
    """The :class:`ClassScores` of the rows (``top_*``: list arrays, one list or null per row,
    as read from ``samples.parquet``); None when the run stored no probabilities (an older
    run). Vectorised: memory ``4 n C`` bytes for the matrix."""
    if top_classes is None or top_probs is None:
        return None
    tc = (
        pa.chunked_array([top_classes])
        if not isinstance(top_classes, pa.ChunkedArray)
        else top_classes
    )
    tp = pa.chunked_array([top_probs]) if not isinstance(top_probs, pa.ChunkedArray) else top_probs
    n = len(label)
    if len(tc) != n or len(tp) != n:
        raise ValueError(f"`top_classes`/`top_probs` must have {n} rows, got {len(tc)}/{len(tp)}")
    lengths = pc.fill_null(pc.list_value_length(tc), 0).to_numpy().astype(np.int64)
    valid = lengths > 0
    if not valid.any():
        return None
    flat_c = pc.list_flatten(tc).to_numpy().astype(np.int64)
    flat_p = pc.list_flatten(tp).to_numpy().astype(np.float32)
    if flat_c.size != flat_p.size or (
        flat_c.size and (flat_c.min() < 0 or flat_c.max() >= n_classes)
    ):
        raise ValueError("`top_classes` and `top_probs` do not match the classes")
    rows = np.repeat(np.arange(n), lengths)
    probs = np.full((n, n_classes), np.nan, dtype=np.float32)
    probs[rows, flat_c] = flat_p
    bound = np.full(n, np.nan)
    part = valid & (lengths < n_classes)
    if part.any():
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        mins = np.minimum.reduceat(flat_p, starts[valid]).astype(np.float64)
        bound[np.flatnonzero(valid)] = mins
        bound[~part] = np.nan
    lab = np.asarray(label, dtype=np.int64)
    lc = np.asarray(label_confidence, dtype=np.float64)
    ok = valid & (lab >= 0) & (lab < n_classes) & np.isfinite(lc)
    probs[np.flatnonzero(ok), lab[ok]] = lc[ok]
    return ClassScores(probs=probs, bound=bound, valid=valid)
