"""Per-group statistics: accuracy, attention evidence, calibration, class × group cells.

Everything is computed on the primary method's rows (one per sample) of ``samples.parquet``
with the ``group_<attribute>`` columns (:mod:`auditor.data.groups`). Torch-free.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np
import pandas as pd

from auditor.analysis.groups.auroc import ClassScores, auroc_ci
from auditor.group_results import ClassCell, Est
from auditor.stats import Interval, bootstrap_mean_ci, two_proportion_diff_ci, wilson_interval

__all__ = [
    "BOOT_MAX_N",
    "ECE_BINS",
    "ece",
    "ece_ci",
    "mean_diff_ci",
    "proportion",
    "z_value",
    "class_cells",
]

ECE_BINS = 10
"""Equal-width confidence bins of the expected calibration error."""
_CHUNK = 2_000_000  # resampled indices held at once by the ECE bootstrap

BOOT_MAX_N = 20_000
"""Above this many values a group's mean and ECE intervals come from large-sample
approximations (:func:`mean_ci`, :func:`ece_ci`) instead of resampling: the audit's cost then
stays linear in the samples at a million images."""


@functools.lru_cache(maxsize=64)
def z_value(level: float) -> float:
    """The two-sided normal quantile ``z_{1 - (1 - level) / 2}`` (cached: called per cell)."""
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - level) / 2))


def proportion(hits: np.ndarray, confidence: float) -> Est:
    """Wilson interval (Wilson 1927) of the share of ``True`` among the finite values of
    ``hits`` (1/0 or bool; NaN = not run, excluded)."""
    h = np.asarray(hits, dtype=np.float64)
    h = h[np.isfinite(h)]
    if not h.size:
        return Est()
    return Est.of(wilson_interval(int(h.sum()), int(h.size), confidence))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    r"""Expected calibration error of the top-label confidence (Guo et al. 2017, "On
    calibration of modern neural networks", ICML; Naeini et al. 2015):

    .. math:: \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{n}
              \left| \mathrm{acc}(S_b) - \mathrm{conf}(S_b) \right|

    with ``B`` equal-width bins ``(0, 1/B], ..., ((B-1)/B, 1]`` (a confidence of exactly 0
    falls in the first). Rows with a non-finite confidence are excluded; none left: NaN.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    ok = np.isfinite(conf) & np.isfinite(corr)
    if not ok.any():
        return math.nan
    conf, corr = conf[ok], corr[ok]
    b = _bins(conf, bins)
    gap = np.bincount(b, weights=corr - conf, minlength=bins)
    return float(np.abs(gap).sum() / conf.size)


def _bins(conf: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)


def ece_ci(
    confidence: np.ndarray,
    correct: np.ndarray,
    *,
    level: float,
    n_boot: int,
    seed: int,
    bins: int = ECE_BINS,
) -> Est:
    """:func:`ece` with a percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13):
    samples are resampled with replacement ``n_boot`` times and the ECE recomputed; the
    interval is the ``(1-level)/2`` and ``(1+level)/2`` quantiles. Deterministic for a seed.
    Above :data:`BOOT_MAX_N` samples the replicates come from :func:`_ece_reps_large`.

    The plug-in ECE is biased upwards (Kumar, Liang & Ma 2019, "Verified uncertainty
    calibration", NeurIPS): its replicates are too, so with small bins the interval can lie
    entirely above the estimate. Read it as the sampling spread of the plug-in statistic."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    ok = np.isfinite(conf) & np.isfinite(corr)
    conf, corr = conf[ok], corr[ok]
    if not conf.size:
        return Est()
    est = ece(conf, corr, bins)
    b = _bins(conf, bins)
    d = corr - conf
    rng = np.random.default_rng(seed)
    if conf.size > BOOT_MAX_N:
        reps = _ece_reps_large(b, d, bins, n_boot, rng)
        lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
        return Est(est, float(lo), float(hi))
    m = conf.size
    reps = np.empty(n_boot)
    rows = max(1, min(n_boot, _CHUNK // m))  # replicates drawn at once (memory bound)
    for start in range(0, n_boot, rows):
        r = min(rows, n_boot - start)
        idx = rng.integers(0, m, size=(r, m))
        key = (np.arange(r)[:, None] * bins + b[idx]).ravel()
        sums = np.bincount(key, weights=d[idx].ravel(), minlength=r * bins).reshape(r, bins)
        reps[start : start + r] = np.abs(sums).sum(axis=1) / m
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Est(est, float(lo), float(hi))


def _ece_reps_large(
    b: np.ndarray, d: np.ndarray, bins: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """ECE replicates of a large sample without resampling it: the bootstrap's bin counts are
    drawn exactly (``Multinomial(n, n_b / n)``) and each bin's resampled sum of
    ``d = correct - confidence`` from its normal limit ``N(n*_b mean_b, n*_b var_b)`` (CLT
    within the bin). ``O(bins x n_boot)`` work and memory, whatever ``n``."""
    n = d.size
    cnt = np.bincount(b, minlength=bins).astype(np.float64)
    s1 = np.bincount(b, weights=d, minlength=bins)
    s2 = np.bincount(b, weights=d * d, minlength=bins)
    mean = np.divide(s1, cnt, out=np.zeros(bins), where=cnt > 0)
    var = np.divide(s2, cnt, out=np.zeros(bins), where=cnt > 0) - mean**2
    star = rng.multinomial(n, cnt / n, size=n_boot).astype(np.float64)
    sums = star * mean + np.sqrt(star * np.maximum(var, 0.0)) * rng.standard_normal(star.shape)
    return np.abs(sums).sum(axis=1) / n


def mean_ci(values: np.ndarray, *, level: float, n_boot: int, seed: int) -> Est:
    """Mean with a BCa bootstrap interval (Efron 1987), NaN excluded
    (:func:`auditor.stats.bootstrap_mean_ci`). Above :data:`BOOT_MAX_N` finite values the
    normal interval ``mean ± z s / sqrt(n)`` is used (BCa's corrections are ``O(1/sqrt(n))``
    and the resampling would cost ``n_boot x n``)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).any():
        return Est()
    x = v[np.isfinite(v)]
    if x.size > BOOT_MAX_N:
        m = float(x.mean())
        half = z_value(level) * float(x.std(ddof=1)) / math.sqrt(x.size)
        return Est(m, m - half, m + half)
    return Est.of(bootstrap_mean_ci(v, confidence=level, n_boot=n_boot, seed=seed))


def mean_diff_ci(a: np.ndarray, b: np.ndarray, level: float) -> Est:
    r"""Difference of two independent means with a Welch (normal-approximation) interval:

    .. math:: \bar a - \bar b \pm z_{1-\alpha/2}\sqrt{s_a^2/n_a + s_b^2/n_b}

    (Welch 1947); NaN excluded; fewer than two values on a side: undefined."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return Est()
    z = z_value(level)
    d = float(x.mean() - y.mean())
    se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    return Est(d, d - z * se, d + z * se)


def accuracy_diff(a: np.ndarray, b: np.ndarray, level: float) -> Est:
    """Accuracy of ``a`` minus accuracy of ``b`` (bool arrays, independent samples) with the
    Newcombe hybrid score interval (Newcombe 1998, method 10)."""
    iv: Interval = two_proportion_diff_ci(
        int(np.sum(a)), int(len(a)), int(np.sum(b)), int(len(b)), level
    )
    return Est.of(iv)


def class_cells(
    frame: pd.DataFrame,
    attribute: str,
    classes: list[str],
    *,
    min_size: int,
    level: float,
    scores: ClassScores | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[ClassCell, ...]:
    """One-vs-rest statistics per class × level (rows of ``frame`` aligned with ``scores``).

    sensitivity = #(pred = c, label = c) / #(label = c); specificity = #(pred != c,
    label != c) / #(label != c), both within the level (Wilson intervals); AUROC of ``p_c``
    (:func:`auditor.analysis.groups.auroc.auroc_ci`, DeLong) and the class-wise ECE of ``p_c``
    against ``[label = c]`` (Kull et al. 2019, "Beyond temperature scaling", NeurIPS: the
    :func:`ece` formula with ``p_c`` as the confidence; bootstrap interval), over the level's
    samples with a prediction. A cell is suppressed when the class has fewer than
    ``min_size`` samples in the level; a class absent from the level has no cell; with fewer
    than ``min_size`` samples of other classes in the level, specificity and AUROC (which
    describe those few samples) are not shown (``auroc_note`` says so).
    """
    out: list[ClassCell] = []
    col = frame[f"group_{attribute}"].astype(str).to_numpy()
    label_all = frame["label"].to_numpy()
    pred_all = frame["pred"].to_numpy()
    for li, lev in enumerate(sorted(set(col.tolist()))):
        rows = np.flatnonzero(col == lev)
        label, pred = label_all[rows], pred_all[rows]
        for c, name in enumerate(classes):
            pos = label == c
            n_pos = int(pos.sum())
            if n_pos == 0:
                continue
            if n_pos < min_size:
                out.append(ClassCell(cls=name, level=str(lev), n=0, suppressed=True))
                continue
            neg = ~pos
            # privacy: specificity and AUROC describe the negatives; fewer than min_size of
            # them would describe a handful of people
            few_neg = int(neg.sum()) < min_size
            spec = (
                Est.of(wilson_interval(int((pred[neg] != c).sum()), int(neg.sum()), level))
                if not few_neg
                else Est()
            )
            sens = Est.of(wilson_interval(int((pred[pos] == c).sum()), n_pos, level))
            cell = ClassCell(
                cls=name, level=str(lev), n=n_pos, sensitivity=sens, specificity=spec,
                n_negative=int(neg.sum()),
            )  # fmt: skip
            if scores is not None and few_neg and neg.any():
                note = f"not shown: fewer than {min_size} samples of other classes in the group"
                cell = replace(cell, auroc_note=note)
            elif scores is not None:
                cell = _score_stats(cell, scores, rows, pos, c, level, n_boot, seed + li)
            out.append(cell)
    return tuple(out)


def _score_stats(
    cell: ClassCell,
    scores: ClassScores,
    rows: np.ndarray,
    pos: np.ndarray,
    c: int,
    level: float,
    n_boot: int,
    seed: int,
) -> ClassCell:
    """``cell`` with the AUROC and class-wise ECE of ``p_c`` over the rows with a prediction."""
    s, censored = scores.column(c)
    s, censored = s[rows], censored[rows]
    ok = scores.valid[rows] & np.isfinite(s)
    auc, note = auroc_ci(s[ok & pos], s[ok & ~pos], level)
    if censored[ok].any() and auc.value is not None:
        note = "lower bound: the probability of this class is stored only in each sample's top-k"
    calib = (
        Est()
        if censored[ok].any()
        else ece_ci(s[ok], pos[ok].astype(np.float64), level=level, n_boot=n_boot, seed=seed)
    )
    return replace(cell, auroc=auc, auroc_note=note, ece=calib)
