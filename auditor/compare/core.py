"""Comparison core: run loading, pairing by (index, id), paired statistics (package-public).

The statistics are described in :mod:`auditor.compare`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auditor.analysis import FAITH_METRICS
from auditor.audit.store import migrate_samples
from auditor.audit.streaming import PoissonBootstrap
from auditor.errors import AuditorInputError
from auditor.format import finite_or_none
from auditor.results import (
    AuditResult,
)
from auditor.stats import (
    bootstrap_mean_ci,
    grouped_bootstrap_mean_ci,
    paired_bootstrap_diff_ci,
    paired_test,
)

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
#: bootstrap (:class:`auditor.audit.streaming.PoissonBootstrap`, keyed by dataset index) instead of
#: the exact multinomial one; per-class intervals stay exact (a class is a small share).
STREAM_MIN_PAIRS = 200_000
STATUS_ORDER = {"regressed": 0, "changed": 1, "unchanged": 2, "n/a": 3, "improved": 4}


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


num = finite_or_none


def stat_block(
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
    return block_of(quantity, n, int(a.size), means, interval, test)


def block_of(
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
    low, high = (num(interval.low), num(interval.high)) if n else (None, None)
    out: dict[str, Any] = {
        "mean_a": means[0] if n else None,
        "mean_b": means[1] if n else None,
        "diff": means[2] if n else None,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "n_nan": int(n_total - n),
        "test": test.get("test"),
        "statistic": num(test.get("statistic")),
        "p_value": num(test.get("p_value")),
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
    overall = stat_block(
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
        per_class.append(stat_block(xa, xb, quantity, iv, test))
    return overall, per_class


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedRun:
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


def load_compared_run(path: Path, role: str) -> LoadedRun:
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
    from auditor.results.validate import check_checksums

    try:  # an edited summary.json/samples.parquet is refused, as `auditor report` does
        check_checksums(p)
    except AuditorInputError as exc:
        raise AuditorInputError(f"{role.upper()}: {exc}") from exc
    try:
        names = tuple(pq.read_schema(pp).names)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(f"{role.upper()} {pp}: unreadable samples.parquet: {exc}") from exc
    for col in ("index", "id", "method", "label"):
        if col not in names:
            raise AuditorInputError(f"{role.upper()} {pp}: column {col!r} missing")
    return LoadedRun(role, p, result, names)


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


def needed_columns(run: LoadedRun, with_accuracy: bool) -> list[str]:
    cols = [c for c in _KEY_COLUMNS if c in run.columns]
    for q in compared_quantities(run.columns, run.columns, with_accuracy):
        if q in BINARY_QUANTITIES:
            cols.append(BINARY_QUANTITIES[q])
        elif q in DERIVED_QUANTITIES:
            cols.extend(DERIVED_QUANTITIES[q])
        else:
            cols.append(q)
    return list(dict.fromkeys(cols))


def _method_rows(run: LoadedRun, method: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of ``method``, sorted by dataset index, with only ``columns`` (default: all).

    Read with column projection and the method filter pushed into the Parquet reader (one row
    group at a time), so the other methods' rows and unused columns are never materialised.
    """
    import pyarrow.compute as pc

    want = [c for c in (columns if columns is not None else run.columns) if c != "method"]
    where = pc.field("method") == method
    if "explained" in run.columns:  # multi-label (issue 26): a label's samples carry it
        where = where & (pc.field("explained") == "positive")
    try:
        rows = pq.read_table(run.samples, columns=want, filters=where)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc
    return migrate_samples(rows).sort_by([("index", "ascending")])


def pair_rows(ta: pa.Table, tb: pa.Table) -> tuple[np.ndarray, np.ndarray]:
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


def compared_quantities(
    cols_a: Sequence[str], cols_b: Sequence[str], with_accuracy: bool
) -> list[str]:
    """The quantities compared between two runs with columns ``cols_a`` and ``cols_b``: the
    per-sample metrics of the registry (built-ins, then those added with ``@metric``, as in
    the audit: :func:`auditor.metrics.registry.sample_metric_names`), faithfulness, and (with
    ``with_accuracy``) correctness and the derived quantities, each where both runs have it."""
    from auditor.metrics.registry import sample_metric_names

    both = set(cols_a) & set(cols_b)
    out = [m for m in sample_metric_names() if m in both]
    out += [m for m in FAITH_METRICS if m in both]
    if with_accuracy:
        out += [q for q, col in BINARY_QUANTITIES.items() if col in both]
        out += [q for q, (c1, c2) in DERIVED_QUANTITIES.items() if c1 in both and c2 in both]
    return out


def quantity_values(table: pa.Table, quantity: str) -> np.ndarray:
    if quantity in BINARY_QUANTITIES:
        return _float_col(table, BINARY_QUANTITIES[quantity])
    if quantity in DERIVED_QUANTITIES:
        c1, c2 = DERIVED_QUANTITIES[quantity]
        return _float_col(table, c1) - _float_col(table, c2)
    return _float_col(table, quantity)


def streamed_overall(
    keys: np.ndarray, columns: dict[str, np.ndarray], *, n_boot: int, seed: int, confidence: float
) -> dict[str, Any]:
    """Overall Poisson-bootstrap intervals ``{column: Interval}`` of the means of ``columns``
    (NaN = undefined, dropped per column), fed one block of dataset indices at a time.

    Memory: one block's weights (``BLOCK x n_boot``) and ``columns x n_boot`` accumulators,
    whatever the number of pairs; ``keys`` must be sorted (the pairs are in index order).
    """
    from auditor.audit.streaming import BLOCK

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
class PairedMethods:
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
    #: the primary comparison's candidate moved samples (:func:`moved_candidates`)
    moved: dict[str, Any] | None = None
    #: classes whose intervals come from the keyed Poisson bootstrap (more than a chunk of
    #: pairs on the streamed path); every other class's intervals are the exact ones
    poisson_classes: set[int] = field(default_factory=set)


def compare_methods(
    ra: LoadedRun,
    rb: LoadedRun,
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
) -> PairedMethods:
    ta_all = _method_rows(ra, method_a, needed_columns(ra, with_accuracy))
    tb_all = _method_rows(rb, method_b, needed_columns(rb, with_accuracy))
    if ta_all.num_rows == 0:
        raise AuditorInputError(f"RUN_A {ra.path}: no samples for method {method_a!r}")
    if tb_all.num_rows == 0:
        raise AuditorInputError(f"RUN_B {rb.path}: no samples for method {method_b!r}")
    pos_a, pos_b = pair_rows(ta_all, tb_all)
    ta, tb = ta_all.take(pa.array(pos_a)), tb_all.take(pa.array(pos_b))
    n_rows = (ta_all.num_rows, tb_all.num_rows)
    del ta_all, tb_all
    la = _paired_labels(ta, tb, len(classes))
    res = paired_stats(
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
        res.moved = moved_candidates(res.ta, res.tb, la, None, moved_keep)
    return res


def label_mismatch(ta: pa.Table, la: np.ndarray, lb: np.ndarray) -> str | None:
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
    msg = label_mismatch(ta, la, lb)
    if msg is not None:
        raise AuditorInputError(msg)
    if la.size and (la.min() < 0 or la.max() >= n_cls):
        raise AuditorInputError(f"labels outside 0..{n_cls - 1} in samples.parquet")
    return la


def paired_stats(
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
) -> PairedMethods:
    """The statistics of the paired rows ``ta``/``tb`` (in index order), all in memory."""
    n_cls = len(classes)
    order = np.argsort(la, kind="stable")
    bounds = np.searchsorted(la[order], np.arange(n_cls + 1))
    groups = [order[bounds[c] : bounds[c + 1]] for c in range(n_cls)]
    res = PairedMethods(
        method_a,
        method_b,
        ta,
        tb,
        la,
        compared_quantities(ta.column_names, tb.column_names, with_accuracy),
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
            a, b = quantity_values(ta, q), quantity_values(tb, q)
            cols[q] = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
        if "background_focus" in res.quantities:
            a, b = quantity_values(ta, "background_focus"), quantity_values(tb, "background_focus")
            ok = np.isfinite(a) & np.isfinite(b)
            cols["\0bf_a"] = np.where(ok, a, np.nan)
            cols["\0bf_b"] = np.where(ok, b, np.nan)
        keys = ta.column("index").to_numpy().astype(np.int64)
        streamed = streamed_overall(keys, cols, **kw)
        del cols
    for q in res.quantities:
        a, b = quantity_values(ta, q), quantity_values(tb, q)
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
        ok = np.isfinite(quantity_values(ta, "background_focus")) & np.isfinite(
            quantity_values(tb, "background_focus")
        )
        for side, t in (("a", ta), ("b", tb)):
            v = np.where(ok, quantity_values(t, "background_focus"), np.nan)
            g = grouped_bootstrap_mean_ci(v, la, **kw) if v.size else {}
            for c in range(n_cls):
                iv = g.get(c)
                block = res.classes[c]["background_focus"]
                block[f"ci_{side}"] = (
                    [num(iv.low), num(iv.high)] if iv is not None and iv.n else [None, None]
                )
            ivo = streamed.get(f"\0bf_{side}") or bootstrap_mean_ci(v, **kw)
            res.overall["background_focus"][f"ci_{side}"] = (
                [num(ivo.low), num(ivo.high)] if ivo.n else [None, None]
            )
    return res


def class_status(block: Mapping[str, Any]) -> str:
    statuses = [block[q]["status"] for q in VERDICT_QUANTITIES if q in block]
    if "regressed" in statuses:
        return "regressed"
    if "improved" in statuses:
        return "improved"
    if statuses and all(s == "n/a" for s in statuses):
        return "n/a"
    return "unchanged"


def block_json(p: PairedMethods, classes: Sequence[str]) -> dict[str, Any]:
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


def paired_table(key: str, p: PairedMethods, classes: Sequence[str]) -> pa.Table:
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
        a, b = quantity_values(p.ta, q), quantity_values(p.tb, q)
        cols[f"{q}_a"] = a
        cols[f"{q}_b"] = b
        cols[f"{q}_diff"] = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
    return pa.table(cols)


#: Rows of comparison.parquet built and written at a time (and its row-group size).
TABLE_ROWS = 65536


def paired_tables(key: str, p: PairedMethods, classes: Sequence[str]) -> Any:
    """:func:`paired_table` in slices of :data:`TABLE_ROWS` pairs (one table when fewer),
    so writing a million pairs holds one slice of columns at a time."""
    n = int(p.labels.size)
    if n <= TABLE_ROWS:
        yield paired_table(key, p, classes)
        return
    for lo in range(0, n, TABLE_ROWS):
        k = min(TABLE_ROWS, n - lo)
        part = PairedMethods(
            p.method_a, p.method_b, p.ta.slice(lo, k), p.tb.slice(lo, k), p.labels[lo : lo + k],
            p.quantities,
        )  # fmt: skip
        yield paired_table(key, part, classes)


class TableSink:
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
        self.writer.write_table(table, row_group_size=TABLE_ROWS)

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


_MOVED_KEEP = 64


def moved_candidates(
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
    a, b = quantity_values(ta, "background_focus"), quantity_values(tb, "background_focus")
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
        cand = top_moved(cand, keep_n)
    return cand


def top_moved(cand: Mapping[str, Any], top_n: int) -> dict[str, Any]:
    order = np.lexsort((cand["index"], -np.abs(cand["d"])))[:top_n]
    return {k: v[order] for k, v in cand.items()}


def class_name(classes: Sequence[str], value: float) -> str | None:
    if not math.isfinite(value) or not 0 <= int(value) < len(classes):
        return None
    return classes[int(value)]


def sort_key(c: Mapping[str, Any], name: str) -> tuple[Any, ...]:
    entry = c["primary"]["classes"][name]
    bf = (entry["metrics"].get("background_focus") or {}).get("diff")
    acc = (entry["metrics"].get("accuracy") or {}).get("diff")
    return (
        STATUS_ORDER.get(entry["status"], 3),
        -(bf if bf is not None else -math.inf),
        acc if acc is not None else math.inf,
        name,
    )
