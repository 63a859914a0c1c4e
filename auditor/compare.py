"""Paired comparison of two audit runs on the same data (``auditor compare RUN_A RUN_B``).

Run A is the baseline (e.g. the model in production), run B the candidate. Both runs must have
audited the same evaluation set (same ``summary["dataset"]["sha256"]``, same classes). Samples
are paired by ``(index, id)``; every statistic is computed on the pairs, so the noise that the
two models share (hard images, small objects) cancels out.

Statistics, per class and overall, for every metric both runs measured
    * ``mean_a``, ``mean_b``: means over the pairs where both values are finite (NaN values,
      e.g. an empty mask, drop the pair and are counted in ``n_nan``); ``diff = mean_b −
      mean_a`` is then exactly the mean paired difference
      ``d̄ = (1/n) Σ_i (b_i − a_i)``.
    * ``[ci_low, ci_high]``: paired bootstrap interval of ``d̄``: the pairs are resampled
      together (the differences ``d_i`` are resampled), BCa with a percentile fallback
      (Efron & Tibshirani 1993, "An Introduction to the Bootstrap"; Efron 1987, "Better
      bootstrap confidence intervals", JASA). Per-class intervals use the same seed as the
      overall one (:func:`auditor.stats.grouped_bootstrap_mean_ci`).
    * ``p_value``: Wilcoxon signed-rank test of the ``d_i`` for continuous metrics (Wilcoxon
      1945, "Individual comparisons by ranking methods"); for correctness (accuracy and the
      intervention accuracies) McNemar's exact test: with ``n01`` pairs right in A only and
      ``n10`` right in B only, ``p = P(|X − m/2| ≥ |n10 − m/2|)``, ``X ~ Binomial(m, ½)``,
      ``m = n01 + n10`` (McNemar 1947, "Note on the sampling error of the difference between
      correlated proportions or percentages", Psychometrika; exact form via
      ``scipy.stats.binomtest``).
    * ``status``: ``"regressed"`` when the interval excludes 0 on the harmful side (the
      metric's ``higher_is_better`` from :data:`auditor.metrics.registry.METRICS`),
      ``"improved"`` when it excludes 0 on the beneficial side, ``"changed"`` for a metric
      without a good direction (entropy), ``"unchanged"`` when the interval contains 0, and
      ``"n/a"`` without pairs.

A class is *regressed* when its background focus or its accuracy (primary methods) regressed,
*improved* when one of them improved and neither regressed.

Gates (``[gates]`` shorthands with ``scope == "compare"``)
    ``max_<q>_increase = t``: for every class, ``mean_b − mean_a`` of ``q`` must be ``≤ t``;
    ``max_<q>_decrease = t``: ``mean_a − mean_b ≤ t``. A value that cannot be computed fails
    the gate (as in :func:`auditor.analysis.evaluate_gates`).

Outputs (in ``out``): ``comparison.json``, ``comparison.parquet`` (one row per paired sample
and comparison), ``gallery/moved-*.png``, ``junit.xml``, ``compare.html`` and ``compare.pdf``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tomllib

from auditor._version import __version__
from auditor.analysis import AGG_METRICS, FAITH_METRICS, gate_result
from auditor.config import GateRule
from auditor.errors import AuditorError, AuditorInputError, ConfigError
from auditor.format import finite_or_none, fmt, slugify
from auditor.report.compare import build_compare_context, focus_comparison_figure, moved_panel
from auditor.results import (
    COMPARISON_SCHEMA_VERSION,
    AuditResult,
    ComparisonResult,
    GateResult,
    Gates,
)
from auditor.stats import (
    bootstrap_mean_ci,
    grouped_bootstrap_mean_ci,
    paired_bootstrap_diff_ci,
    paired_test,
)
from auditor.store import atomic_write_bytes, atomic_write_json, migrate_samples
from auditor.streaming import PoissonBootstrap

__all__ = [
    "COMPARISON_SCHEMA_VERSION",
    "ComparisonResult",
    "classify_change",
    "compare_runs",
    "evaluate_comparison_gates",
    "focus_comparison_figure",
    "load_compare_gates",
    "mcnemar_exact",
    "moved_panel",
]

log = logging.getLogger("auditor")


#: Accuracy-like quantities: name → correctness column of samples.parquet (0/1 per sample).
BINARY_QUANTITIES: Mapping[str, str] = {
    "accuracy": "correct",
    "only_fg_accuracy": "only_fg_correct",
    "only_bg_accuracy": "only_bg_correct",
    "mixed_rand_accuracy": "mixed_rand_correct",
}
#: Per-sample intervention effects: name → (clean correctness, edited correctness); the value
#: of a sample is ``clean − edited`` ∈ {−1, 0, 1}, its class mean the summary's quantity.
DERIVED_QUANTITIES: Mapping[str, tuple[str, str]] = {
    "only_fg_drop": ("correct", "only_fg_correct"),
    "background_gap": ("correct", "mixed_rand_correct"),
}
#: What decides a class's verdict (primary methods).
VERDICT_QUANTITIES = ("background_focus", "accuracy")
#: How an interval from the streamed keyed Poisson bootstrap is named in comparison.json.
POISSON_INTERVAL = "poisson bootstrap keyed by dataset index (BCa, percentile fallback)"

#: Pairs (per compared method) from which the *overall* intervals use the streamed Poisson
#: bootstrap (:class:`auditor.streaming.PoissonBootstrap`, keyed by dataset index) instead of
#: the exact multinomial one; per-class intervals stay exact (a class is a small share).
STREAM_MIN_PAIRS = 200_000
STATUS_ORDER = {"regressed": 0, "changed": 1, "unchanged": 2, "n/a": 3, "improved": 4}
_INCREASE, _DECREASE = "_increase", "_decrease"


def higher_is_better(quantity: str) -> bool | None:
    """Direction of ``quantity``: True/False, or None when neither direction is "good"."""
    from auditor.metrics.registry import METRICS

    if quantity == "accuracy":
        return True
    if quantity == "only_fg_drop":
        return False
    info = METRICS.get(quantity)
    return None if info is None else info.higher_is_better


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test for paired binary outcomes (0/1; NaN pairs are dropped).

    With ``n01`` = #(a=1, b=0) and ``n10`` = #(a=0, b=1), under H0 the discordant pairs split
    evenly: ``n10 ~ Binomial(n01 + n10, ½)``; the two-sided exact p-value is that of
    ``scipy.stats.binomtest``. No discordant pair: ``p_value = 1.0``. McNemar 1947, "Note on
    the sampling error of the difference between correlated proportions or percentages"
    (Psychometrika).

    Returns ``{"statistic": n10, "p_value", "test": "mcnemar_exact", "n", "a_only", "b_only"}``
    where ``a_only = n01`` (right in A only) and ``b_only = n10`` (right in B only).
    """
    from scipy.stats import binomtest

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"`a` and `b` must be 1-D of the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    bad = ~np.isin(x, (0.0, 1.0)) | ~np.isin(y, (0.0, 1.0))
    if bad.any():
        odd = sorted(set(x[bad].tolist()) | set(y[bad].tolist()))[:5]
        raise ValueError(f"`a` and `b` must hold 0/1 values, got {odd}")
    n01 = int(np.sum((x == 1) & (y == 0)))
    n10 = int(np.sum((x == 0) & (y == 1)))
    m = n01 + n10
    p = 1.0 if m == 0 else float(binomtest(n10, m, 0.5).pvalue)
    return {
        "statistic": float(n10),
        "p_value": p,
        "test": "mcnemar_exact",
        "n": int(x.size),
        "a_only": n01,
        "b_only": n10,
    }


def classify_change(low: float | None, high: float | None, better_higher: bool | None) -> str:
    """Status of a paired difference ``B − A`` from its interval ``[low, high]``.

    ``"unchanged"`` when the interval contains 0; otherwise ``"improved"``/``"regressed"``
    according to ``better_higher`` (a higher value is beneficial when True), or ``"changed"``
    when the metric has no good direction (None). A missing bound gives ``"n/a"``.
    """
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    if low <= 0.0 <= high:
        return "unchanged"
    if better_higher is None:
        return "changed"
    up = low > 0.0
    return "improved" if up == bool(better_higher) else "regressed"


_num = finite_or_none


def _stat_block(
    a: np.ndarray,
    b: np.ndarray,
    quantity: str,
    interval: Any,
    test: Mapping[str, Any],
) -> dict[str, Any]:
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    means = (
        (float(a[ok].mean()), float(b[ok].mean()), float((b[ok] - a[ok]).mean()))
        if n
        else (None, None, None)
    )
    return _block_of(quantity, n, int(a.size), means, interval, test)


def _block_of(
    quantity: str,
    n: int,
    n_total: int,
    means: tuple[float | None, float | None, float | None],
    interval: Any,
    test: Mapping[str, Any],
) -> dict[str, Any]:
    """One statistics block from ``n`` used pairs of ``n_total``, ``(mean_a, mean_b, diff)``,
    the interval and the test (shared by the in-memory and the streamed path)."""
    better = higher_is_better(quantity)
    low, high = (_num(interval.low), _num(interval.high)) if n else (None, None)
    out: dict[str, Any] = {
        "mean_a": means[0] if n else None,
        "mean_b": means[1] if n else None,
        "diff": means[2] if n else None,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "n_nan": int(n_total - n),
        "test": test.get("test"),
        "statistic": _num(test.get("statistic")),
        "p_value": _num(test.get("p_value")),
        "higher_is_better": better,
        "status": classify_change(low, high, better) if n else "n/a",
    }
    if "a_only" in test:
        out["a_only"] = int(test["a_only"])
        out["b_only"] = int(test["b_only"])
    return out


def _paired_quantity(
    quantity: str,
    a: np.ndarray,
    b: np.ndarray,
    groups: list[np.ndarray],
    *,
    labels: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float,
    overall_interval: Any | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(overall block, [block per class]) for one quantity; ``groups[c]`` = pair positions.

    ``overall_interval``: the overall interval when already computed (the streamed path),
    else the exact paired bootstrap.
    """
    binary = quantity in BINARY_QUANTITIES
    kw: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    overall = _stat_block(
        a,
        b,
        quantity,
        overall_interval if overall_interval is not None else paired_bootstrap_diff_ci(a, b, **kw),
        mcnemar_exact(a, b) if binary else paired_test(a, b),
    )
    d = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
    grouped = grouped_bootstrap_mean_ci(d, labels, **kw) if d.size else {}
    per_class = []
    for ci, sel in enumerate(groups):
        xa, xb = a[sel], b[sel]
        iv = grouped.get(ci)
        if iv is None:
            iv = bootstrap_mean_ci(np.array([], dtype=float), **kw)
        test = mcnemar_exact(xa, xb) if binary else paired_test(xa, xb)
        per_class.append(_stat_block(xa, xb, quantity, iv, test))
    return overall, per_class


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    role: str
    path: Path
    summary: AuditResult
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.summary.model.name or self.path.name)

    @property
    def primary(self) -> str:
        return self.summary.primary_method or (self.summary.methods or ("",))[0]

    @property
    def samples(self) -> Path:
        return self.path / "samples.parquet"


def _load_run(path: Path, role: str) -> _Run:
    """The run's summary and the *schema* of its samples table (rows are read per method)."""
    if not isinstance(path, str | Path):
        raise TypeError(f"`{role}` must be a path, got {type(path).__name__}")
    p = Path(path)
    if not p.is_dir():
        raise AuditorInputError(f"{role.upper()} {p}: not a directory")
    sp = p / "summary.json"
    if not sp.is_file():
        raise AuditorInputError(f"{role.upper()} {p}: no summary.json (not a run directory)")
    try:
        summary = json.loads(sp.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditorInputError(f"{role.upper()} {sp}: unreadable summary.json: {exc}") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("dataset"), dict):
        raise AuditorInputError(f"{role.upper()} {sp}: summary.json has no 'dataset' section")
    try:
        result = AuditResult.from_json(summary)
    except (TypeError, ValueError) as exc:
        raise AuditorInputError(f"{role.upper()} {sp}: {exc}") from exc
    pp = p / "samples.parquet"
    if not pp.is_file():
        raise AuditorInputError(f"{role.upper()} {p}: no samples.parquet (the run has no rows)")
    try:
        names = tuple(pq.read_schema(pp).names)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(f"{role.upper()} {pp}: unreadable samples.parquet: {exc}") from exc
    for col in ("index", "id", "method", "label"):
        if col not in names:
            raise AuditorInputError(f"{role.upper()} {pp}: column {col!r} missing")
    return _Run(role, p, result, names)


def _float_col(table: pa.Table, name: str) -> np.ndarray:
    """Column ``name`` as float64 (null → NaN, bool → 0/1); all NaN when absent."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    col = table.column(name)
    if pa.types.is_null(col.type):
        return np.full(table.num_rows, np.nan)
    values = col.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.float64)


#: Columns of samples.parquet that the comparison reads besides the quantities.
_KEY_COLUMNS = ("index", "id", "label", "pred", "correct", "confidence")


def _needed_columns(run: _Run, with_accuracy: bool) -> list[str]:
    cols = [c for c in _KEY_COLUMNS if c in run.columns]
    for q in _quantities(run.columns, run.columns, with_accuracy):
        if q in BINARY_QUANTITIES:
            cols.append(BINARY_QUANTITIES[q])
        elif q in DERIVED_QUANTITIES:
            cols.extend(DERIVED_QUANTITIES[q])
        else:
            cols.append(q)
    return list(dict.fromkeys(cols))


def _method_rows(run: _Run, method: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of ``method``, sorted by dataset index, with only ``columns`` (default: all).

    Read with column projection and the method filter pushed into the Parquet reader (one row
    group at a time), so the other methods' rows and unused columns are never materialised.
    """
    import pyarrow.compute as pc

    want = [c for c in (columns if columns is not None else run.columns) if c != "method"]
    try:
        rows = pq.read_table(run.samples, columns=want, filters=pc.field("method") == method)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc
    return migrate_samples(rows).sort_by([("index", "ascending")])


def _pair_rows(ta: pa.Table, tb: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``ta`` and ``tb`` of the samples present in both, paired by (index, id).

    Both tables are sorted by index. With unique indices (every run) the pairing is a
    vectorised intersection and the ids are compared column-wise; duplicated indices fall back
    to the row loop (the last row of B with an index wins, as before).
    """
    import pyarrow.compute as pc

    ia = ta.column("index").to_numpy().astype(np.int64)
    ib = tb.column("index").to_numpy().astype(np.int64)
    if (ia.size < 2 or bool(np.all(np.diff(ia) > 0))) and (
        ib.size < 2 or bool(np.all(np.diff(ib) > 0))
    ):
        _, ja, jb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
        ja, jb = ja.astype(np.int64), jb.astype(np.int64)
        ida = pc.cast(ta.column("id").take(pa.array(ja)), pa.string()).fill_null("None")
        idb = pc.cast(tb.column("id").take(pa.array(jb)), pa.string()).fill_null("None")
        diff = np.asarray(pc.not_equal(ida, idb).to_numpy(zero_copy_only=False), dtype=bool)
        if diff.any():
            j = int(np.flatnonzero(diff)[0])
            raise AuditorInputError(
                f"sample index {int(ia[ja[j]])} is {ida[j].as_py()!r} in RUN_A but "
                f"{idb[j].as_py()!r} in RUN_B: the runs did not see the same data in the same "
                "order"
            )
        return ja, jb
    ids_a = ta.column("id").to_pylist()
    ids_b = tb.column("id").to_pylist()
    pos_b = {int(i): j for j, i in enumerate(ib)}
    pa_, pb_ = [], []
    for j, i in enumerate(ia):
        k = pos_b.get(int(i))
        if k is None:
            continue
        if str(ids_a[j]) != str(ids_b[k]):
            raise AuditorInputError(
                f"sample index {int(i)} is {ids_a[j]!r} in RUN_A but {ids_b[k]!r} in RUN_B: the "
                f"runs did not see the same data in the same order"
            )
        pa_.append(j)
        pb_.append(k)
    return np.asarray(pa_, dtype=np.int64), np.asarray(pb_, dtype=np.int64)


def _quantities(cols_a: Sequence[str], cols_b: Sequence[str], with_accuracy: bool) -> list[str]:
    both = set(cols_a) & set(cols_b)
    out = [m for m in AGG_METRICS if m in both]
    out += [m for m in FAITH_METRICS if m in both]
    if with_accuracy:
        out += [q for q, col in BINARY_QUANTITIES.items() if col in both]
        out += [q for q, (c1, c2) in DERIVED_QUANTITIES.items() if c1 in both and c2 in both]
    return out


def _values(table: pa.Table, quantity: str) -> np.ndarray:
    if quantity in BINARY_QUANTITIES:
        return _float_col(table, BINARY_QUANTITIES[quantity])
    if quantity in DERIVED_QUANTITIES:
        c1, c2 = DERIVED_QUANTITIES[quantity]
        return _float_col(table, c1) - _float_col(table, c2)
    return _float_col(table, quantity)


def _streamed_overall(
    keys: np.ndarray, columns: dict[str, np.ndarray], *, n_boot: int, seed: int, confidence: float
) -> dict[str, Any]:
    """Overall Poisson-bootstrap intervals ``{column: Interval}`` of the means of ``columns``
    (NaN = undefined, dropped per column), fed one block of dataset indices at a time.

    Memory: one block's weights (``BLOCK x n_boot``) and ``columns x n_boot`` accumulators,
    whatever the number of pairs; ``keys`` must be sorted (the pairs are in index order).
    """
    from auditor.streaming import BLOCK

    names = list(columns)
    boot = PoissonBootstrap(1, names, n_boot=n_boot, seed=seed)
    blocks = keys // BLOCK
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    ends = np.concatenate([cuts, [keys.size]]).astype(np.int64)
    zero = np.zeros(0, dtype=np.int64)
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        if hi <= lo:
            continue
        block = np.stack([columns[c][lo:hi] for c in names], axis=1)
        boot.update(np.zeros(hi - lo, dtype=np.int64) if hi > lo else zero, keys[lo:hi], block)
    return {c: boot.interval(0, c, confidence=confidence) for c in names}


@dataclass
class _Paired:
    method_a: str
    method_b: str
    ta: pa.Table
    tb: pa.Table
    labels: np.ndarray
    quantities: list[str]
    overall: dict[str, Any] = field(default_factory=dict)
    classes: list[dict[str, Any]] = field(default_factory=list)
    n_rows_a: int = 0
    n_rows_b: int = 0
    streamed: bool = False
    #: pairs, and pairs per class (the streamed path keeps no rows)
    n_pairs: int = 0
    class_counts: np.ndarray | None = None
    #: the primary comparison's candidate moved samples (:func:`_moved_candidates`)
    moved: dict[str, Any] | None = None
    #: classes whose intervals come from the keyed Poisson bootstrap (more than a chunk of
    #: pairs on the streamed path); every other class's intervals are the exact ones
    poisson_classes: set[int] = field(default_factory=set)


def _compare_methods(
    ra: _Run,
    rb: _Run,
    method_a: str,
    method_b: str,
    classes: Sequence[str],
    *,
    with_accuracy: bool,
    n_boot: int,
    seed: int,
    confidence: float,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
    moved_keep: int = 64,
) -> _Paired:
    ta_all = _method_rows(ra, method_a, _needed_columns(ra, with_accuracy))
    tb_all = _method_rows(rb, method_b, _needed_columns(rb, with_accuracy))
    if ta_all.num_rows == 0:
        raise AuditorInputError(f"RUN_A {ra.path}: no samples for method {method_a!r}")
    if tb_all.num_rows == 0:
        raise AuditorInputError(f"RUN_B {rb.path}: no samples for method {method_b!r}")
    pos_a, pos_b = _pair_rows(ta_all, tb_all)
    ta, tb = ta_all.take(pa.array(pos_a)), tb_all.take(pa.array(pos_b))
    n_rows = (ta_all.num_rows, tb_all.num_rows)
    del ta_all, tb_all
    la = _paired_labels(ta, tb, len(classes))
    res = _paired_stats(
        method_a,
        method_b,
        ta,
        tb,
        la,
        classes,
        n_rows,
        with_accuracy=with_accuracy,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        stream_min_pairs=stream_min_pairs,
    )
    if with_accuracy:
        res.moved = _moved_candidates(res.ta, res.tb, la, None, moved_keep)
    return res


def _label_mismatch(ta: pa.Table, la: np.ndarray, lb: np.ndarray) -> str | None:
    """The error for the first pair whose labels differ, or None."""
    if np.array_equal(la, lb):
        return None
    j = int(np.flatnonzero(la != lb)[0])
    return (
        f"sample {ta.column('id')[j].as_py()!r} has label {int(la[j])} in RUN_A but "
        f"{int(lb[j])} in RUN_B"
    )


def _paired_labels(ta: pa.Table, tb: pa.Table, n_cls: int) -> np.ndarray:
    """The pairs' labels (int64), checked: equal in both runs and in ``0..n_cls - 1``."""
    la = ta.column("label").to_numpy().astype(np.int64)
    lb = tb.column("label").to_numpy().astype(np.int64)
    msg = _label_mismatch(ta, la, lb)
    if msg is not None:
        raise AuditorInputError(msg)
    if la.size and (la.min() < 0 or la.max() >= n_cls):
        raise AuditorInputError(f"labels outside 0..{n_cls - 1} in samples.parquet")
    return la


def _paired_stats(
    method_a: str,
    method_b: str,
    ta: pa.Table,
    tb: pa.Table,
    la: np.ndarray,
    classes: Sequence[str],
    n_rows: tuple[int, int],
    *,
    with_accuracy: bool,
    n_boot: int,
    seed: int,
    confidence: float,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
) -> _Paired:
    """The statistics of the paired rows ``ta``/``tb`` (in index order), all in memory."""
    n_cls = len(classes)
    order = np.argsort(la, kind="stable")
    bounds = np.searchsorted(la[order], np.arange(n_cls + 1))
    groups = [order[bounds[c] : bounds[c + 1]] for c in range(n_cls)]
    res = _Paired(
        method_a,
        method_b,
        ta,
        tb,
        la,
        _quantities(ta.column_names, tb.column_names, with_accuracy),
        n_rows_a=n_rows[0],
        n_rows_b=n_rows[1],
        streamed=la.size >= stream_min_pairs,
        n_pairs=int(la.size),
        class_counts=np.bincount(la, minlength=n_cls),
    )
    res.classes = [{} for _ in range(n_cls)]
    kw: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    streamed: dict[str, Any] = {}
    if res.streamed:
        # one pass over the pairs in index order for every quantity's overall interval (and
        # each run's own background-focus interval): the weights are drawn once per block
        cols: dict[str, np.ndarray] = {}
        for q in res.quantities:
            a, b = _values(ta, q), _values(tb, q)
            cols[q] = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
        if "background_focus" in res.quantities:
            a, b = _values(ta, "background_focus"), _values(tb, "background_focus")
            ok = np.isfinite(a) & np.isfinite(b)
            cols["\0bf_a"] = np.where(ok, a, np.nan)
            cols["\0bf_b"] = np.where(ok, b, np.nan)
        keys = ta.column("index").to_numpy().astype(np.int64)
        streamed = _streamed_overall(keys, cols, **kw)
        del cols
    for q in res.quantities:
        a, b = _values(ta, q), _values(tb, q)
        iv = streamed.get(q)
        if iv is not None:
            n_drop = int(a.size - iv.n)
            iv = type(iv)(iv.estimate, iv.low, iv.high, iv.n, n_drop, iv.method)
        ov, per = _paired_quantity(q, a, b, groups, labels=la, overall_interval=iv, **kw)
        res.overall[q] = ov
        for c in range(n_cls):
            res.classes[c][q] = per[c]
    if "background_focus" in res.quantities:
        # each run's own interval over the paired samples (for the A-vs-B figure)
        ok = np.isfinite(_values(ta, "background_focus")) & np.isfinite(
            _values(tb, "background_focus")
        )
        for side, t in (("a", ta), ("b", tb)):
            v = np.where(ok, _values(t, "background_focus"), np.nan)
            g = grouped_bootstrap_mean_ci(v, la, **kw) if v.size else {}
            for c in range(n_cls):
                iv = g.get(c)
                block = res.classes[c]["background_focus"]
                block[f"ci_{side}"] = (
                    [_num(iv.low), _num(iv.high)] if iv is not None and iv.n else [None, None]
                )
            ivo = streamed.get(f"\0bf_{side}") or bootstrap_mean_ci(v, **kw)
            res.overall["background_focus"][f"ci_{side}"] = (
                [_num(ivo.low), _num(ivo.high)] if ivo.n else [None, None]
            )
    return res


def _class_status(block: Mapping[str, Any]) -> str:
    statuses = [block[q]["status"] for q in VERDICT_QUANTITIES if q in block]
    if "regressed" in statuses:
        return "regressed"
    if "improved" in statuses:
        return "improved"
    if statuses and all(s == "n/a" for s in statuses):
        return "n/a"
    return "unchanged"


# --------------------------------------------------------------------------------------------
# gates
# --------------------------------------------------------------------------------------------
def _gate_quantity(rule: GateRule) -> tuple[str, int]:
    q = rule.quantity
    if q.endswith(_INCREASE):
        return q[: -len(_INCREASE)], 1
    if q.endswith(_DECREASE):
        return q[: -len(_DECREASE)], -1
    raise ValueError(
        f"`gates` rule {rule.name!r}: quantity must end with '_increase' or '_decrease', got {q!r}"
    )


def load_compare_gates(config: str | Path) -> tuple[GateRule, ...]:
    """The comparison gates (``scope == "compare"``) of a TOML file's ``[gates]`` section.

    ``config`` may be a small file with only ``[gates]`` or a full audit config; rules of other
    scopes (``max_background_focus`` ...) apply to single runs and are ignored here. Unknown
    keys are errors (a typo must not silently disable a gate).
    """
    from auditor.config import _parse_gates
    from auditor.metrics.registry import METRICS

    p = Path(config)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {p}")
    try:
        raw = tomllib.loads(p.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p.name}: invalid TOML: {exc}") from exc
    table = raw.get("gates")
    if table is None:
        raise ConfigError(
            f"{p.name}: no [gates] section (expected e.g. max_background_focus_increase = 0.05)"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{p.name}: [gates] must be a table")
    rules = _parse_gates(table, p.name, tuple(METRICS))
    return tuple(r for r in rules if r.scope == "compare")


def evaluate_comparison_gates(
    comparison: Mapping[str, Any], rules: Sequence[GateRule]
) -> dict[str, Any]:
    """Check comparison gates against ``comparison`` (the dict of ``comparison.json``).

    ``max_<q>_increase = t``: per class, ``value = mean_b − mean_a`` (stat ``mean``; ``ci_low``
    / ``ci_high`` use the paired interval's bounds) must be ``≤ t``. ``max_<q>_decrease = t``:
    ``value = mean_a − mean_b`` (bounds mirrored). The primary comparison is used unless the
    rule names a ``method`` both runs share. A value that is missing fails the gate. Returns
    ``{"passed", "results": [{rule, class, quantity, stat, value, threshold, bound, passed,
    note}]}``, the shape of ``summary["gates"]``.
    """
    results: list[GateResult] = []
    for rule in rules:
        if rule.scope != "compare":
            raise ValueError(f"`rules` must have scope 'compare', got {rule.scope!r} ({rule.name})")
        base, sign = _gate_quantity(rule)
        block = comparison["primary"]
        if rule.method is not None:
            block = comparison.get("methods", {}).get(rule.method) or {"classes": {}}
        for cls, entry in comparison["primary"]["classes"].items():
            if rule.classes and cls not in rule.classes:
                continue
            if not entry.get("n"):
                continue
            stat = (block["classes"].get(cls) or {}).get("metrics", {}).get(base)
            value: float | None = None
            if stat is not None and stat.get("diff") is not None:
                if rule.stat == "mean":
                    value = sign * stat["diff"]
                else:
                    lo, hi = stat.get("ci_low"), stat.get("ci_high")
                    if lo is not None and hi is not None:
                        lo2, hi2 = (lo, hi) if sign > 0 else (-hi, -lo)
                        value = lo2 if rule.stat == "ci_low" else hi2
            results.append(gate_result(rule, cls, value, f"{base} not available in both runs"))
    return Gates.of(results).to_json()


# --------------------------------------------------------------------------------------------
# display images
# --------------------------------------------------------------------------------------------
def _open_display_dataset(run: _Run) -> Any | None:
    """The run's dataset, re-opened from its ``config.toml`` copy, or None when unavailable.

    Relative paths are tried against the run directory, its ``inputs/`` folder (``auditor
    demo``) and its parent; a dataset is accepted only when its annotation fingerprint equals
    the one recorded in ``summary.json``.
    """
    cfg = run.path / "config.toml"
    want = run.summary.dataset.annotation_sha256
    if not cfg.is_file() or not want:
        return None
    try:
        raw = tomllib.loads(cfg.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    data = raw.get("data")
    if not isinstance(data, dict):
        return None
    from auditor.data import open_dataset
    from auditor.data.config import parse_data_section

    for base in (run.path, run.path / "inputs", run.path.parent):
        try:
            ds = open_dataset(parse_data_section(data, base.resolve(), cfg.name))
            if ds.annotation_sha256() == want:
                return ds
        except (AuditorError, OSError, ValueError, TypeError):
            continue
    return None


def _display(ds: Any, index: int, sample_id: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if ds is None:
        return None, None
    try:
        if ds.sample_id(index) != sample_id:
            return None, None
        image, mask = ds.load_display(index)
        return image, mask
    except (AuditorError, OSError, ValueError, IndexError):
        return None, None


# --------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3, signed: bool = False) -> str:
    return fmt(v, f"{'+' if signed else ''}.{digits}f", missing="n/a")


def _pfmt(v: Any) -> str:
    return fmt(v, ".2g", missing="n/a")


def _check_args(n_boot: Any, seed: Any, confidence: Any, top_n: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 2:
        raise ValueError(f"`n_boot` must be an int >= 2, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"`seed` must be an int, got {seed!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise TypeError(f"`confidence` must be a float, got {confidence!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    if isinstance(top_n, bool) or not isinstance(top_n, int | np.integer) or top_n < 0:
        raise ValueError(f"`top_n` must be an int >= 0, got {top_n!r}")


def _run_info(run: _Run) -> dict[str, Any]:
    s = run.summary
    return {
        "path": str(run.path.resolve()),
        "name": run.name,
        "title": s.title,
        "model": s.model.to_json(),
        "primary_method": run.primary,
        "methods": list(s.methods),
        "n_evaluated": s.dataset.n_evaluated,
        "finished": s.run.finished,
        "tool_version": s.tool.get("version"),
    }


def _block_json(p: _Paired, classes: Sequence[str]) -> dict[str, Any]:
    counts = p.class_counts if p.n_pairs else None
    return {
        "method_a": p.method_a,
        "method_b": p.method_b,
        "n": int(p.n_pairs),
        "overall": p.overall,
        "classes": {
            name: {
                "index": ci,
                "n": 0 if counts is None else int(counts[ci]),
                "metrics": p.classes[ci],
                # additive, only where it applies: this class's intervals are Monte-Carlo
                **({"interval": POISSON_INTERVAL} if ci in p.poisson_classes else {}),
            }
            for ci, name in enumerate(classes)
        },
    }


def _paired_table(key: str, p: _Paired, classes: Sequence[str]) -> pa.Table:
    import pyarrow.compute as pc

    n = int(p.labels.size)
    cols: dict[str, Any] = {
        "comparison": pa.array([key], pa.string()).take(pa.array(np.zeros(n, dtype=np.int64))),
        "method_a": pa.array([p.method_a], pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "method_b": pa.array([p.method_b], pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "index": p.ta.column("index").to_numpy().astype(np.int64),
        "id": pc.cast(p.ta.column("id"), pa.string()).fill_null("None").combine_chunks(),
        "label": p.labels,
        "label_name": pa.array(list(classes), pa.string()).take(pa.array(p.labels)),
    }
    for col in ("pred", "correct", "confidence"):
        if col in p.ta.column_names and col in p.tb.column_names:
            cols[f"{col}_a"] = p.ta.column(col)
            cols[f"{col}_b"] = p.tb.column(col)
    for q in p.quantities:
        if q == "accuracy":  # already there as correct_a / correct_b
            continue
        a, b = _values(p.ta, q), _values(p.tb, q)
        cols[f"{q}_a"] = a
        cols[f"{q}_b"] = b
        cols[f"{q}_diff"] = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
    return pa.table(cols)


#: Rows of comparison.parquet built and written at a time (and its row-group size).
_TABLE_ROWS = 65536


def _paired_tables(key: str, p: _Paired, classes: Sequence[str]) -> Any:
    """:func:`_paired_table` in slices of :data:`_TABLE_ROWS` pairs (one table when fewer),
    so writing a million pairs holds one slice of columns at a time."""
    n = int(p.labels.size)
    if n <= _TABLE_ROWS:
        yield _paired_table(key, p, classes)
        return
    for lo in range(0, n, _TABLE_ROWS):
        k = min(_TABLE_ROWS, n - lo)
        part = _Paired(
            p.method_a, p.method_b, p.ta.slice(lo, k), p.tb.slice(lo, k), p.labels[lo : lo + k],
            p.quantities,
        )  # fmt: skip
        yield _paired_table(key, part, classes)


class _TableSink:
    """``comparison.parquet`` written one comparison at a time (each is released after), to a
    temporary file renamed into place by :meth:`commit`. Tables after the first are widened to
    its schema (null columns; the primary comparison has every column); one that does not fit
    is kept and everything is written at once, as :func:`pyarrow.concat_tables` would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.held: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        elif not self.held and set(table.column_names) <= set(self.schema.names):
            try:
                table = pa.table(
                    {
                        f.name: (
                            table.column(f.name).cast(f.type)
                            if f.name in table.column_names
                            else pa.nulls(table.num_rows, f.type)
                        )
                        for f in self.schema
                    },
                    schema=self.schema,
                )
            except (pa.ArrowException, ValueError):
                self.held.append(table)
                return
        else:
            self.held.append(table)
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                self.tmp,
                self.schema,
                compression="zstd",
                use_dictionary=True,
                write_statistics=True,
            )
        self.writer.write_table(table, row_group_size=_TABLE_ROWS)

    def commit(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
            if self.held:  # rare: a schema the first table does not cover
                first = pq.read_table(self.tmp) if self.tmp.exists() else None
                tables = ([first] if first is not None else []) + self.held
                pq.write_table(
                    pa.concat_tables(tables, promote_options="default"),
                    self.tmp,
                    compression="zstd",
                    use_dictionary=True,
                    write_statistics=True,
                )
            os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def _moved(
    ra: _Run,
    rb: _Run,
    prim: _Paired,
    classes: Sequence[str],
    out: Path,
    top_n: int,
    dataset: Any | None,
) -> list[dict[str, Any]]:
    """The ``top_n`` samples whose background focus moved most, with side-by-side panels."""
    from auditor.store import RunStore

    if top_n == 0 or "background_focus" not in prim.quantities or prim.moved is None:
        return []
    cand = _top_moved(prim.moved, top_n)
    a, b, d, idx = cand["a"], cand["b"], cand["d"], cand["index"]
    if idx.size == 0:
        return []
    order = range(idx.size)
    wanted = [int(i) for i in idx]
    try:
        cams_a = RunStore(ra.path).load_cams(prim.method_a, wanted)
        cams_b = RunStore(rb.path).load_cams(prim.method_b, wanted)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("compare: cannot read low-resolution CAMs: %s", exc)
        cams_a, cams_b = {}, {}
    ds = dataset if dataset is not None else _open_display_dataset(rb) or _open_display_dataset(ra)
    ids = list(cand["id"])
    preds_a, preds_b = cand["pred_a"], cand["pred_b"]
    out_list: list[dict[str, Any]] = []
    for rank, j in enumerate(order):
        i, sid = int(idx[j]), str(ids[rank])
        entry: dict[str, Any] = {
            "rank": rank + 1,
            "index": i,
            "id": sid,
            "label": classes[int(cand["label"][j])],
            "pred_a": _class_name(classes, preds_a[j]),
            "pred_b": _class_name(classes, preds_b[j]),
            "background_focus_a": _num(a[j]),
            "background_focus_b": _num(b[j]),
            "delta": _num(d[j]),
            "file": None,
            "with_image": False,
        }
        if i in cams_a and i in cams_b:
            image, mask = _display(ds, i, sid)
            png = moved_panel(
                cams_a[i],
                cams_b[i],
                image=image,
                mask=mask,
                title=f"{sid} · label {entry['label']} · background focus "
                f"{_fmt(a[j], 2)} → {_fmt(b[j], 2)}",
                label_a=f"A: {ra.name} ({prim.method_a}) · BF {_fmt(a[j], 2)}",
                label_b=f"B: {rb.name} ({prim.method_b}) · BF {_fmt(b[j], 2)}",
            )
            fname = f"gallery/moved-{rank + 1:02d}-{slugify(sid)}.png"
            atomic_write_bytes(out / fname, png)
            entry["file"] = fname
            entry["with_image"] = image is not None
        out_list.append(entry)
    return out_list


#: Moved samples kept as candidates (the report shows at most ``top_n`` of them).
_MOVED_KEEP = 64


def _moved_candidates(
    ta: pa.Table,
    tb: pa.Table,
    labels: np.ndarray,
    previous: dict[str, Any] | None,
    keep_n: int = _MOVED_KEEP,
) -> dict[str, Any] | None:
    """The pairs whose background focus moved most (``-|B - A|``, then index), at most
    :data:`_MOVED_KEEP`, merged with ``previous`` (the candidates of earlier chunks): the
    same ones, in the same order, however the pairs are cut into chunks."""
    if "background_focus" not in ta.column_names or "background_focus" not in tb.column_names:
        return previous
    a, b = _values(ta, "background_focus"), _values(tb, "background_focus")
    d = b - a
    ok = np.flatnonzero(np.isfinite(d))
    idx = ta.column("index").to_numpy().astype(np.int64)
    keep = ok[np.lexsort((idx[ok], -np.abs(d[ok])))][:keep_n]
    ids = ta.column("id").take(pa.array(keep, pa.int64())).to_pylist()
    cand: dict[str, Any] = {
        "index": idx[keep],
        "id": np.array([str(v) for v in ids], dtype=object),
        "label": labels[keep],
        "pred_a": _float_col(ta, "pred")[keep],
        "pred_b": _float_col(tb, "pred")[keep],
        "a": a[keep],
        "b": b[keep],
        "d": d[keep],
    }
    if previous is not None:
        cand = {k: np.concatenate([previous[k], v]) for k, v in cand.items()}
        cand = _top_moved(cand, keep_n)
    return cand


def _top_moved(cand: Mapping[str, Any], top_n: int) -> dict[str, Any]:
    order = np.lexsort((cand["index"], -np.abs(cand["d"])))[:top_n]
    return {k: v[order] for k, v in cand.items()}


def _class_name(classes: Sequence[str], value: float) -> str | None:
    if not math.isfinite(value) or not 0 <= int(value) < len(classes):
        return None
    return classes[int(value)]


def _sort_key(c: Mapping[str, Any], name: str) -> tuple[Any, ...]:
    entry = c["primary"]["classes"][name]
    bf = (entry["metrics"].get("background_focus") or {}).get("diff")
    acc = (entry["metrics"].get("accuracy") or {}).get("diff")
    return (
        STATUS_ORDER.get(entry["status"], 3),
        -(bf if bf is not None else -math.inf),
        acc if acc is not None else math.inf,
        name,
    )


def _gate_rules(config: str | Path | None, gates: Sequence[GateRule]) -> list[GateRule]:
    """The comparison gates of ``config`` (a TOML file) and ``gates``, checked."""
    gate_rules = list(load_compare_gates(config) if config is not None else ())
    for rule in gates:
        if not isinstance(rule, GateRule):
            raise TypeError(f"`gates` must hold GateRule objects, got {type(rule).__name__}")
        if rule.scope != "compare":
            raise ValueError(
                f"`gates` rules must have scope 'compare', got {rule.scope!r} ({rule.name})"
            )
        _gate_quantity(rule)
        gate_rules.append(rule)
    return gate_rules


def _check_comparable(ra: _Run, rb: _Run) -> list[str]:
    """The runs' shared classes; an error when they audited different data or classes."""
    ha, hb = ra.summary.dataset.sha256, rb.summary.dataset.sha256
    if not ha or not hb or ha != hb:
        raise AuditorInputError(
            f"the runs audited different datasets: RUN_A {ra.path} has dataset sha256 {ha}, "
            f"RUN_B {rb.path} has {hb}; a paired comparison needs the same evaluation set"
        )
    ca = list(ra.summary.dataset.classes)
    cb = list(rb.summary.dataset.classes)
    if ca != cb or not ca:
        raise AuditorInputError(
            f"the runs have different classes: RUN_A {ca[:6]}{'…' if len(ca) > 6 else ''} "
            f"({len(ca)}), RUN_B {cb[:6]}{'…' if len(cb) > 6 else ''} ({len(cb)})"
        )
    return ca


def _out_dir(out: str | Path | None, ra: _Run, rb: _Run) -> Path:
    """The comparison directory (default ``<run_b>-vs-<run_a name>`` beside run B), created."""
    out_dir = Path(out) if out is not None else rb.path.parent / f"{rb.path.name}-vs-{ra.path.name}"
    for r in (ra, rb):
        if out_dir.resolve() == r.path.resolve():
            raise AuditorInputError(f"--out {out_dir}: must not be a run directory ({r.role})")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _pair_methods(
    ra: _Run,
    rb: _Run,
    classes: Sequence[str],
    settings: Mapping[str, Any],
    sink: _TableSink,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
    *,
    chunk_pairs: int | None = None,
    top_n: int = 8,
    tmp_root: Path | None = None,
) -> tuple[_Paired, dict[str, _Paired]]:
    """The primary methods' paired statistics (with accuracy) and each shared method's.

    One comparison at a time, its rows written to ``sink`` (comparison.parquet) as they are
    computed. A comparison whose method has at least ``stream_min_pairs`` rows in both runs
    runs in flat memory, a chunk of ``chunk_pairs`` pairs at a time
    (:func:`auditor.compare_stream.stream_compare`); otherwise both tables are read and
    paired in memory and released once written (the statistics stay).
    """
    from auditor import compare_stream as cs

    chunk = cs.CHUNK_PAIRS if chunk_pairs is None else int(chunk_pairs)
    kw = {**settings, "stream_min_pairs": stream_min_pairs}
    keep = max(int(top_n), 1)
    counted: dict[str, cs.MethodCounts] = {}

    def counts(run: _Run) -> cs.MethodCounts:
        if run.role not in counted:
            counted[run.role] = cs.method_counts(run, chunk)
        return counted[run.role]

    def large(ma: str, mb: str) -> bool:
        rows = min(_file_rows(ra), _file_rows(rb))
        if rows < stream_min_pairs:
            return False  # the files hold fewer rows than the threshold: no need to count
        return min(counts(ra).rows.get(ma, 0), counts(rb).rows.get(mb, 0)) >= stream_min_pairs

    def one(ma: str, mb: str, key: str, with_accuracy: bool) -> _Paired:
        if large(ma, mb):
            return cs.stream_compare(
                ra, rb, ma, mb, classes, counts_a=counts(ra), counts_b=counts(rb), key=key,
                sink=sink, with_accuracy=with_accuracy, chunk=chunk, moved_keep=keep,
                tmp_root=tmp_root, **kw,
            )  # fmt: skip
        res = _compare_methods(
            ra, rb, ma, mb, classes, with_accuracy=with_accuracy, moved_keep=keep, **kw
        )
        if res.n_pairs == 0 and with_accuracy:
            return res
        for table in _paired_tables(key, res, classes):
            sink.write(table)
        res.ta, res.tb = res.ta.slice(0, 0), res.tb.slice(0, 0)  # on disk now
        return res

    prim = one(ra.primary, rb.primary, "primary", True)
    if prim.n_pairs == 0:
        raise AuditorInputError(
            f"no sample of RUN_A {ra.path} could be paired with RUN_B {rb.path} by (index, id)"
        )
    methods_b = list(rb.summary.methods)
    shared = [m for m in ra.summary.methods if m in methods_b]
    others: dict[str, _Paired] = {}
    for m in shared:
        if m == ra.primary == rb.primary:
            others[m] = prim
        else:
            others[m] = one(m, m, m, False)
    return prim, others


def _file_rows(run: _Run) -> int:
    """Rows of the run's samples.parquet (all methods), from its footer."""
    try:
        return int(pq.read_metadata(run.samples).num_rows)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc


def _comparison_json(
    ra: _Run,
    rb: _Run,
    prim: _Paired,
    others: Mapping[str, _Paired],
    classes: Sequence[str],
    settings: Mapping[str, Any],
    top_n: int,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
) -> dict[str, Any]:
    """``comparison.json`` up to the class ranking, gates, moved samples and metrics_info."""
    n_a, n_b = prim.n_rows_a, prim.n_rows_b
    streamed = prim.streamed or any(p.streamed for p in others.values())
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "kind": "comparison",
        "tool": {"name": "cam-auditor", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_a": _run_info(ra),
        "run_b": _run_info(rb),
        "dataset": {
            "sha256": ra.summary.dataset.sha256,
            "name": ra.summary.dataset.name,
            "annotation_sha256": ra.summary.dataset.annotation_sha256,
            "n_samples": ra.summary.dataset.n_samples,
            "classes": list(classes),
        },
        "pairing": {
            "key": ["index", "id"],
            "n_paired": int(prim.n_pairs),
            "n_only_a": int(n_a - prim.n_pairs),
            "n_only_b": int(n_b - prim.n_pairs),
        },
        "settings": {
            **settings,
            "interval": "paired bootstrap (BCa, percentile fallback) of mean(B − A)",
            "test": "wilcoxon signed-rank (zsplit); accuracies: McNemar exact",
            "top_n": top_n,
            "stream_min_pairs": int(stream_min_pairs),
            "overall_interval": POISSON_INTERVAL if streamed else "exact",
        },
        "primary": _block_json(prim, classes),
        "methods": {m: _block_json(p, classes) for m, p in others.items()},
    }


def _rank_classes(comparison: dict[str, Any], classes: Sequence[str]) -> None:
    """Each primary class's status, ``class_order`` (worst first), ``regressed``, ``improved``."""
    for entry in comparison["primary"]["classes"].values():
        entry["status"] = _class_status(entry["metrics"]) if entry["n"] else "n/a"
    ranked = sorted(classes, key=lambda nm: _sort_key(comparison, nm))
    comparison["class_order"] = ranked
    comparison["regressed"] = [
        c for c in ranked if comparison["primary"]["classes"][c]["status"] == "regressed"
    ]
    comparison["improved"] = [  # most improved first
        c for c in reversed(ranked) if comparison["primary"]["classes"][c]["status"] == "improved"
    ]


def _metrics_info() -> dict[str, Any]:
    from auditor.config import to_jsonable
    from auditor.metrics.registry import METRICS

    return {k: to_jsonable(v) for k, v in METRICS.items()}


def _write_outputs(
    out_dir: Path,
    comparison: dict[str, Any],
    sink: _TableSink,
    ra: _Run,
    rb: _Run,
) -> dict[str, Any]:
    """Write comparison.json, comparison.parquet (its rows are already in ``sink``) and
    junit.xml; the JSON as written (NaN → null)."""
    atomic_write_json(out_dir / "comparison.json", comparison)
    sink.commit()
    from auditor.export import write_junit

    write_junit(
        out_dir / "junit.xml",
        {"gates": comparison["gates"], "model": {"name": f"{rb.name} vs {ra.name}"}},
    )
    loaded: dict[str, Any] = json.loads((out_dir / "comparison.json").read_text("utf-8"))
    return loaded


def _render(
    comparison: Mapping[str, Any], out_dir: Path, *, pdf: bool, templates: Path | None
) -> dict[str, Path]:
    """compare.html (and compare.pdf with ``pdf``) from the written comparison."""
    from auditor.report import render_document

    context = build_compare_context(comparison, out_dir)
    out_pdf = out_dir / "compare.pdf" if pdf else None
    render_document(
        "compare.html.j2",
        context,
        out_dir / "compare.html",
        out_pdf=out_pdf,
        base_dir=out_dir,
        templates=templates,
    )
    report = {"html": out_dir / "compare.html"}
    if out_pdf is not None:
        report["pdf"] = out_pdf
    return report


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    out: str | Path | None = None,
    config: str | Path | None = None,
    gates: Sequence[GateRule] = (),
    pdf: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    top_n: int = 8,
    dataset: Any | None = None,
    templates: Path | None = None,
    render: bool = True,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
    chunk_pairs: int | None = None,
) -> ComparisonResult:
    """Paired comparison of run B (candidate) against run A (baseline) on the same data.

    See the module docstring for the statistics. ``config``: a TOML file whose ``[gates]``
    section holds ``max_<metric>_increase`` / ``max_<metric>_decrease`` rules (a full audit
    config works too); ``gates``: more rules (``scope == "compare"``). ``out`` defaults to
    ``<run_b>-vs-<run_a name>`` beside ``run_b``. ``dataset``: an optional
    :class:`auditor.data.EvalDataset` for the display images of the moved samples (default:
    re-opened from the runs' ``config.toml`` when the data can be found, else CAMs only).
    ``render=False`` skips compare.html/compare.pdf. ``stream_min_pairs``: from this many
    pairs of a method on, its overall intervals come from the streamed Poisson bootstrap keyed
    by dataset index (flat memory, one pass for every quantity; agrees with the exact paired
    bootstrap within Monte-Carlo error); below it, the exact paired bootstrap.

    ``chunk_pairs`` (default :data:`auditor.compare_stream.CHUNK_PAIRS`, at least 64): the
    chunk of the flat-memory path.

    Memory: below ``stream_min_pairs`` rows of a method, each run's rows of it are read with
    only the needed columns, paired in memory and released once written to
    comparison.parquet. From ``stream_min_pairs`` rows on, the comparison is streamed a chunk
    of pairs at a time (:mod:`auditor.compare_stream`: index-range partitions, class-group
    spill files, exact per-class statistics up to a chunk of pairs, Poisson bootstrap and
    streamed Wilcoxon tests beyond), so memory does not grow with the number of samples.


    Raises:
        AuditorInputError: not a run directory, different datasets (sha256) or classes.
        ConfigError: an invalid ``config``.
        RenderError: the report could not be rendered.
    """
    _check_args(n_boot, seed, confidence, top_n)
    if (
        isinstance(stream_min_pairs, bool)
        or not isinstance(stream_min_pairs, int | np.integer)
        or stream_min_pairs < 0
    ):
        raise ValueError(f"`stream_min_pairs` must be an int >= 0, got {stream_min_pairs!r}")
    gate_rules = _gate_rules(config, gates)
    ra, rb = _load_run(Path(run_a), "run_a"), _load_run(Path(run_b), "run_b")
    classes = _check_comparable(ra, rb)
    out_dir = _out_dir(out, ra, rb)
    settings = {"n_boot": int(n_boot), "seed": int(seed), "confidence": float(confidence)}
    sink = _TableSink(out_dir / "comparison.parquet")
    if chunk_pairs is not None and (
        isinstance(chunk_pairs, bool) or not isinstance(chunk_pairs, int) or chunk_pairs < 64
    ):
        raise ValueError(f"`chunk_pairs` must be an int >= 64, got {chunk_pairs!r}")
    prim, others = _pair_methods(
        ra, rb, classes, settings, sink, int(stream_min_pairs), chunk_pairs=chunk_pairs,
        top_n=int(top_n), tmp_root=out_dir,
    )  # fmt: skip
    comparison = _comparison_json(
        ra, rb, prim, others, classes, settings, int(top_n), int(stream_min_pairs)
    )
    _rank_classes(comparison, classes)
    comparison["gates"] = evaluate_comparison_gates(comparison, gate_rules)
    comparison["moved"] = _moved(ra, rb, prim, classes, out_dir, int(top_n), dataset)
    comparison["metrics_info"] = _metrics_info()
    from auditor.analysis.groups.compare import compare_groups  # issue 24 (additive key)

    groups = compare_groups(
        ra.path, rb.path, ra.summary.primary_method, rb.summary.primary_method,
        confidence=float(settings["confidence"]), n_boot=min(int(settings["n_boot"]), 1000),
        seed=int(settings["seed"]),
    )  # fmt: skip
    if groups is not None:
        comparison["groups"] = groups
    comparison = _write_outputs(out_dir, comparison, sink, ra, rb)
    report = _render(comparison, out_dir, pdf=pdf, templates=templates) if render else {}
    return ComparisonResult.from_json(comparison, out_dir=out_dir, report=report)
