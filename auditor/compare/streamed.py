"""``auditor compare`` of large runs in flat memory: chunked pairing and streamed statistics.

Used by :func:`auditor.compare.compare_runs` for a comparison (primary methods, or one shared
method) when both runs hold at least ``stream_min_pairs`` rows of its method. Memory is
bounded by the chunk size (:data:`CHUNK_PAIRS` pairs), not by the number of samples:

1. **Partition** (one pass over each run's ``samples.parquet``, row group by row group, only
   the needed columns): the method's rows go to temporary Arrow IPC files by dataset-index
   range, ``index // width`` with ``width`` chosen so that a range holds about one chunk.
   Rows keep their file order within a range, so the shards may be in any order.
2. **Pairing** range by range, ascending (the rows of both runs with indices in the range,
   sorted by index: exactly the pairs, in exactly the order, of the in-memory path, which
   pairs the whole sorted tables; :func:`auditor.compare._pair_rows`). Each range's
   comparison rows go to ``comparison.parquet`` (re-cut into the same row groups), its
   paired numeric columns to temporary files by **group of classes** (consecutive classes
   holding at most a chunk of rows of run A; a larger class is a group of its own), and
   exact accumulators are updated: per class and quantity the pairs, sums of ``a``, ``b``
   and ``b − a``, McNemar's discordant counts; the overall Poisson bootstrap keyed by
   dataset index (as before); the moved-sample candidates (top ``-|Δ background focus|``).
3. **Per class**, group file by group file: every class of at most a chunk of pairs gets the
   exact statistics of the in-memory path (BCa bootstrap, Wilcoxon, McNemar) from its rows;
   a class of more pairs gets a Poisson bootstrap keyed by dataset index (one group per such
   class) and the streamed Wilcoxon test below. The overall Wilcoxon tests use the streamed
   test too, the McNemar tests the counts.

**Wilcoxon signed-rank test without holding the differences.** ``W+ = Σ_{d_i > 0}
rank(|d_i|) + ½ Σ_{d_i = 0} rank(|d_i|)`` (zsplit, average ranks for ties) only needs, per
distinct value ``v`` of ``|d|`` in ascending order, how many differences equal ``±v`` and how
many are below it. The values are cut into ranges by quantiles of a strided sample of
``|d|`` (about half a chunk per range); each range is then read back in turn and its
distinct values counted (ties merge, so a range of tied values is a few counters), giving
exactly the ranks, ``W+``, ``W−`` and the tie correction ``Σ (t³ − t)`` of
``scipy.stats.wilcoxon(d, zero_method="zsplit")``; the p-value is its normal approximation
(scipy's for more than 50 pairs, and streamed tests only run on more than a chunk).
Reading cost: one pass per range over the paired values (all quantities at once).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditor.audit.store import migrate_samples
from auditor.audit.streaming import BLOCK, PoissonBootstrap
from auditor.compare import core
from auditor.compare.core import (
    BINARY_QUANTITIES,
    LoadedRun,
    PairedMethods,
    block_of,
    compared_quantities,
    label_mismatch,
    mcnemar_exact,
    moved_candidates,
    needed_columns,
    pair_rows,
    paired_stats,
    paired_table,
    quantity_values,
    stat_block,
)
from auditor.errors import AuditorInputError
from auditor.format import finite_or_none
from auditor.stats import bootstrap_mean_ci, grouped_bootstrap_mean_ci, paired_test

__all__ = ["CHUNK_PAIRS", "MethodCounts", "method_counts", "stream_compare", "wilcoxon_stream"]

#: Pairs per chunk: index ranges, class groups and Wilcoxon value ranges hold about this many.
CHUNK_PAIRS = 65_536

_A, _B = "a.", "b."


class MethodCounts:
    """Rows per method, rows per (method, label) and the largest index per method of a run."""

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.labels: dict[str, Counter[int]] = {}
        self.max_index: dict[str, int] = {}


def _parquet(run: LoadedRun) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(run.samples)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc


def _batches(run: LoadedRun, columns: Sequence[str], chunk: int) -> Iterator[pa.Table]:
    try:
        pf = _parquet(run)
        # row group by row group: one reader over the whole file holds more and more memory
        for rg in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=chunk, row_groups=[rg], columns=list(columns)):
                yield pa.Table.from_batches([batch])
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc


def method_counts(run: LoadedRun, chunk: int = CHUNK_PAIRS) -> MethodCounts:
    """One pass over the ``method``, ``index`` and ``label`` columns (a chunk at a time)."""
    out = MethodCounts()
    for t in _batches(run, ["method", "index", "label"], chunk):
        meth = t.column("method")
        for m in pc.unique(meth).to_pylist():
            if m is None:
                continue
            sel = t.filter(pc.equal(meth, m))
            idx = sel.column("index").to_numpy(zero_copy_only=False).astype(np.int64)
            lab = sel.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            out.rows[m] += int(idx.size)
            counter = out.labels.setdefault(m, Counter())
            u, c = np.unique(lab, return_counts=True)
            counter.update(dict(zip(u.tolist(), c.tolist(), strict=True)))
            if idx.size:
                out.max_index[m] = max(out.max_index.get(m, -1), int(idx.max()))
    return out


class _Spill:
    """Tables appended to temporary Arrow IPC files by bucket number, read back per bucket."""

    def __init__(self, folder: Path, tag: str) -> None:
        self.folder, self.tag = folder, tag
        self.writers: dict[int, Any] = {}
        self.schema: pa.Schema | None = None

    def path(self, bucket: int) -> Path:
        return self.folder / f"{self.tag}-{bucket:06d}.arrow"

    def write(self, bucket: int, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        w = self.writers.get(bucket)
        if w is None:
            w = self.writers[bucket] = pa.ipc.new_file(str(self.path(bucket)), self.schema)
        w.write_table(table.cast(self.schema))

    def split(self, buckets: np.ndarray, table: pa.Table) -> None:
        """Rows of ``table`` to their ``buckets`` (file order kept within a bucket)."""
        if table.num_rows == 0:
            return
        order = np.argsort(buckets, kind="stable")
        bs = buckets[order]
        cuts = np.flatnonzero(np.diff(bs)) + 1
        for s, e in zip(np.r_[0, cuts].tolist(), np.r_[cuts, bs.size].tolist(), strict=True):
            self.write(int(bs[s]), table.take(pa.array(order[s:e])))

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers = {}

    def batches(self, bucket: int) -> Iterator[pa.Table]:
        p = self.path(bucket)
        if not p.exists():
            return
        with pa.OSFile(str(p)) as f:
            reader = pa.ipc.open_file(f)
            for i in range(reader.num_record_batches):
                yield pa.Table.from_batches([reader.get_batch(i)])

    def read(self, bucket: int) -> pa.Table | None:
        parts = list(self.batches(bucket))
        if not parts:
            return None
        return pa.concat_tables(parts)

    def buckets(self) -> list[int]:
        return sorted(int(p.stem.rsplit("-", 1)[1]) for p in self.folder.glob(f"{self.tag}-*"))


def _partition(
    run: LoadedRun, method: str, columns: Sequence[str], width: int, n_buckets: int, spill: _Spill,
    chunk: int,
) -> pa.Schema:  # fmt: skip
    """The rows of ``method`` (``columns``) into ``spill`` by ``index // width``."""
    want = [c for c in columns if c != "method"]
    schema = _parquet(run).schema_arrow
    empty = pa.schema([schema.field(c) for c in want])
    for t in _batches(run, [*want, "method"], chunk):
        t = t.filter(pc.equal(t.column("method"), method)).select(want)
        if t.num_rows == 0:
            continue
        t = migrate_samples(t)
        idx = t.column("index").to_numpy(zero_copy_only=False).astype(np.int64)
        spill.split(np.clip(idx // width, 0, n_buckets - 1), t)
    spill.close()
    return spill.schema or empty


class _Sink:
    """Comparison rows to :class:`auditor.compare._TableSink` re-cut into slices of
    ``TABLE_ROWS`` (the row groups of the in-memory path)."""

    def __init__(self, sink: Any, rows: int) -> None:
        self.sink, self.rows = sink, rows
        self.pending: list[pa.Table] = []
        self.n = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.n += table.num_rows
        if self.n >= self.rows:
            t = pa.concat_tables(self.pending)
            lo = 0
            while t.num_rows - lo >= self.rows:
                self.sink.write(t.slice(lo, self.rows))
                lo += self.rows
            rest = t.slice(lo)
            self.pending, self.n = ([rest] if rest.num_rows else []), rest.num_rows

    def flush(self) -> None:
        if self.pending:
            self.sink.write(pa.concat_tables(self.pending))
        self.pending, self.n = [], 0


def _sides(t: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The spilled paired table as (A's rows, B's rows) with the samples.parquet names."""

    def side(prefix: str) -> pa.Table:
        names = ["index", "label"] + [c for c in t.column_names if c.startswith(prefix)]
        out = t.select(names)
        return out.rename_columns([n[len(prefix) :] if n.startswith(prefix) else n for n in names])

    return side(_A), side(_B)


def _class_groups(counts: Mapping[int, int], n_cls: int, chunk: int) -> np.ndarray:
    """Group of each class: consecutive classes of at most ``chunk`` rows in all; a class of
    more rows is a group of its own."""
    group = np.zeros(n_cls, dtype=np.int64)
    g, held = 0, 0
    for c in range(n_cls):
        k = int(counts.get(c, 0))
        if held and held + k > chunk:
            g, held = g + 1, 0
        group[c] = g
        held += k
        if held > chunk:
            g, held = g + 1, 0
    return group


class _Sums:
    """Exact per-class accumulators of one quantity: pairs used, sums of a, b, b − a, and for
    0/1 quantities McNemar's discordant counts."""

    def __init__(self, n_cls: int, binary: bool) -> None:
        self.n = np.zeros(n_cls, dtype=np.int64)
        self.sa = np.zeros(n_cls)
        self.sb = np.zeros(n_cls)
        self.sd = np.zeros(n_cls)
        self.binary = binary
        self.n01 = np.zeros(n_cls, dtype=np.int64)
        self.n10 = np.zeros(n_cls, dtype=np.int64)
        # overall sums added per chunk with numpy's pairwise sum: one chunk gives exactly
        # the in-memory path's means
        self.total = np.zeros(3)

    def update(self, labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        ok = np.isfinite(a) & np.isfinite(b)
        k = self.n.size
        lab = labels[ok]
        x, y = a[ok], b[ok]
        if self.binary:
            bad = ~np.isin(x, (0.0, 1.0)) | ~np.isin(y, (0.0, 1.0))
            if bad.any():
                odd = sorted(set(x[bad].tolist()) | set(y[bad].tolist()))[:5]
                raise ValueError(f"`a` and `b` must hold 0/1 values, got {odd}")
            self.n01 += np.bincount(lab[(x == 1) & (y == 0)], minlength=k)
            self.n10 += np.bincount(lab[(x == 0) & (y == 1)], minlength=k)
        self.n += np.bincount(lab, minlength=k)
        self.sa += np.bincount(lab, weights=x, minlength=k)
        self.sb += np.bincount(lab, weights=y, minlength=k)
        self.sd += np.bincount(lab, weights=y - x, minlength=k)
        self.total += (x.sum(), y.sum(), (y - x).sum())

    def means(self, c: int | None) -> tuple[float | None, float | None, float | None]:
        n = int(self.n.sum() if c is None else self.n[c])
        if n == 0:
            return None, None, None
        if c is None:
            return float(self.total[0] / n), float(self.total[1] / n), float(self.total[2] / n)
        return float(self.sa[c] / n), float(self.sb[c] / n), float(self.sd[c] / n)

    def mcnemar(self, c: int | None) -> dict[str, Any]:
        from scipy.stats import binomtest

        n01 = int(self.n01.sum() if c is None else self.n01[c])
        n10 = int(self.n10.sum() if c is None else self.n10[c])
        m = n01 + n10
        return {
            "statistic": float(n10),
            "p_value": 1.0 if m == 0 else float(binomtest(n10, m, 0.5).pvalue),
            "test": "mcnemar_exact",
            "n": int(self.n.sum() if c is None else self.n[c]),
            "a_only": n01,
            "b_only": n10,
        }


def _boot_update(boot: PoissonBootstrap, group: int, keys: np.ndarray, block: np.ndarray) -> None:
    """Feed ``boot`` one :data:`BLOCK` of keys at a time (one block of weights in memory)."""
    blocks = keys // BLOCK
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    for s, e in zip(np.r_[0, cuts].tolist(), np.r_[cuts, keys.size].tolist(), strict=True):
        if e > s:
            boot.update(np.full(e - s, group, dtype=np.int64), keys[s:e], block[s:e])


def _boot_columns(ta: pa.Table, tb: pa.Table, quantities: Sequence[str]) -> np.ndarray:
    """``[n, q (+2)]``: each quantity's ``b − a`` (NaN where undefined) and, with background
    focus, each run's value on the pairs where both are defined."""
    cols = []
    for q in quantities:
        a, b = quantity_values(ta, q), quantity_values(tb, q)
        cols.append(np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan))
    if "background_focus" in quantities:
        a, b = quantity_values(ta, "background_focus"), quantity_values(tb, "background_focus")
        ok = np.isfinite(a) & np.isfinite(b)
        cols += [np.where(ok, a, np.nan), np.where(ok, b, np.nan)]
    return np.stack(cols, axis=1) if cols else np.zeros((ta.num_rows, 0))


def _boot_names(quantities: Sequence[str]) -> list[str]:
    extra = ["\0bf_a", "\0bf_b"] if "background_focus" in quantities else []
    return [*quantities, *extra]


# --------------------------------------------------------------------------------------------
# the streamed Wilcoxon signed-rank test
# --------------------------------------------------------------------------------------------
def wilcoxon_stream(
    batches: Callable[[], Iterator[Mapping[str, np.ndarray]]],
    counts: Mapping[str, int],
    chunk: int = CHUNK_PAIRS,
    per_pass: int = 4,
) -> dict[str, dict[str, Any]]:
    """:func:`auditor.stats.paired_test` of every column of ``batches()`` (differences
    ``b − a``, NaN where undefined), reading the stream ``1 + ranges`` times instead of
    holding it; ``counts[q]`` = the number of finite values of ``q`` (more than 50). A range
    holds about ``chunk`` values, ``per_pass`` ranges are counted per pass (at most
    ``per_pass x chunk`` distinct values held).

    Exact ranks (module docstring); the p-value is the normal approximation that
    ``scipy.stats.wilcoxon(d, zero_method="zsplit")`` uses for more than 50 pairs, so the
    result equals :func:`auditor.stats.paired_test` up to the rounding of the tie correction.
    """
    from scipy.special import ndtr

    names = list(counts)
    target = max(16, chunk // 4)
    stride = {q: max(1, counts[q] // target) for q in names}
    seen = dict.fromkeys(names, 0)
    sample: dict[str, list[np.ndarray]] = {q: [] for q in names}
    for batch in batches():
        for q in names:
            d = batch[q]
            v = np.abs(d[np.isfinite(d)])
            off = (-seen[q]) % stride[q]
            sample[q].append(v[off :: stride[q]])
            seen[q] += v.size
    splitters: dict[str, np.ndarray] = {}
    for q in names:
        s = np.concatenate(sample[q]) if sample[q] else np.zeros(0)
        n_ranges = max(1, math.ceil(seen[q] / chunk))
        if s.size == 0 or n_ranges == 1:
            splitters[q] = np.zeros(0)
        else:
            levels = np.linspace(0.0, 1.0, n_ranges + 1)[1:-1]
            splitters[q] = np.unique(np.quantile(s, levels))
    del sample
    below = dict.fromkeys(names, 0)  # values in the ranges already counted
    plus2 = dict.fromkeys(names, 0)  # 2 x rank sums (integers)
    minus2 = dict.fromkeys(names, 0)
    ties = dict.fromkeys(names, 0)
    zeros = dict.fromkeys(names, 0)
    n_ranges_q = {q: splitters[q].size + 1 for q in names}
    n_max = max(n_ranges_q.values(), default=0)
    for r0 in range(0, n_max, per_pass):
        window = range(r0, min(r0 + per_pass, n_max))
        tables: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}
        for batch in batches():
            for q in names:
                if r0 >= n_ranges_q[q]:
                    continue
                d = batch[q]
                d = d[np.isfinite(d)]
                v = np.abs(d)
                rid = np.searchsorted(splitters[q], v, side="left")
                for r in window:
                    sel = rid == r
                    if sel.any():
                        _count_into(tables, (q, r), v[sel], d[sel])
        for q in names:
            for r in window:
                tab = tables.get((q, r))
                if tab is None:
                    continue
                u, t, p, m = tab
                before = below[q] + np.cumsum(t) - t
                two_avg = 2 * before + t + 1  # twice the average rank of each distinct value
                plus2[q] += int((p * two_avg).sum())
                minus2[q] += int((m * two_avg).sum())
                if below[q] == 0 and u.size and u[0] == 0.0:
                    zeros[q] = int(t[0])
                ties[q] += sum(int(k) ** 3 - int(k) for k in t[t > 1].tolist())
                below[q] += int(t.sum())
    out: dict[str, dict[str, Any]] = {}
    for q in names:
        n = below[q]
        if n < 2:
            out[q] = {"statistic": math.nan, "p_value": math.nan, "test": "wilcoxon", "n": n}
            continue
        if zeros[q] == n:
            out[q] = {"statistic": 0.0, "p_value": 1.0, "test": "wilcoxon", "n": n}
            continue
        z0 = zeros[q]
        r_zero_2 = z0 * (z0 + 1) / 4
        r_plus = plus2[q] / 2 + r_zero_2
        r_minus = minus2[q] / 2 + r_zero_2
        count = float(n)
        mn = count * (count + 1.0) * 0.25
        se = count * (count + 1.0) * (2.0 * count + 1.0)
        se = math.sqrt((se - float(ties[q]) / 2) / 24)
        z = (r_plus - mn) / se
        out[q] = {
            "statistic": float(min(r_plus, r_minus)),
            "p_value": float(2 * ndtr(-abs(z))),
            "test": "wilcoxon",
            "n": n,
        }
    return out


def _count_into(
    tables: dict[tuple[str, int], tuple[np.ndarray, ...]],
    key: tuple[str, int],
    v: np.ndarray,
    d: np.ndarray,
) -> None:
    """Add the values ``v = |d|`` to ``tables[key]``: (distinct values ascending, count,
    positive count, negative count)."""
    u, inv = np.unique(v, return_inverse=True)
    t = np.bincount(inv, minlength=u.size)
    p = np.bincount(inv, weights=(d > 0), minlength=u.size)
    m = np.bincount(inv, weights=(d < 0), minlength=u.size)
    old = tables.get(key)
    if old is not None:
        u2, inv2 = np.unique(np.concatenate([old[0], u]), return_inverse=True)
        t = np.bincount(inv2, weights=np.r_[old[1], t], minlength=u2.size)
        p = np.bincount(inv2, weights=np.r_[old[2], p], minlength=u2.size)
        m = np.bincount(inv2, weights=np.r_[old[3], m], minlength=u2.size)
        u = u2
    tables[key] = (u, t.astype(np.int64), p.astype(np.int64), m.astype(np.int64))


# --------------------------------------------------------------------------------------------
# one comparison
# --------------------------------------------------------------------------------------------
def stream_compare(
    ra: LoadedRun,
    rb: LoadedRun,
    method_a: str,
    method_b: str,
    classes: Sequence[str],
    *,
    counts_a: MethodCounts,
    counts_b: MethodCounts,
    key: str,
    sink: Any,
    with_accuracy: bool,
    n_boot: int,
    seed: int,
    confidence: float,
    stream_min_pairs: int,
    chunk: int = CHUNK_PAIRS,
    moved_keep: int = 64,
    tmp_root: Path | None = None,
) -> PairedMethods:
    """One comparison in flat memory (module docstring); its rows go to ``sink``.

    Gives the :class:`auditor.compare._Paired` of the in-memory path: identical pairs, rows,
    counts, per-class statistics of classes of at most ``chunk`` pairs and moved samples;
    means up to summation order; overall intervals from the Poisson bootstrap (as the
    in-memory path from ``stream_min_pairs`` pairs); when fewer than ``stream_min_pairs``
    samples pair up, the spilled pairs are read back and the in-memory statistics run.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 64:
        raise ValueError(f"`chunk` must be an int >= 64, got {chunk!r}")
    n_cls = len(classes)
    rows_a, rows_b = counts_a.rows.get(method_a, 0), counts_b.rows.get(method_b, 0)
    if rows_a == 0:
        raise AuditorInputError(f"RUN_A {ra.path}: no samples for method {method_a!r}")
    if rows_b == 0:
        raise AuditorInputError(f"RUN_B {rb.path}: no samples for method {method_b!r}")
    top = max(counts_a.max_index.get(method_a, 0), counts_b.max_index.get(method_b, 0))
    n_buckets = max(1, math.ceil(max(rows_a, rows_b) / chunk))
    width = max(1, math.ceil((top + 1) / n_buckets))
    n_buckets = max(1, math.ceil((top + 1) / width))
    tmp = Path(tempfile.mkdtemp(prefix=".compare-spill-", dir=tmp_root))
    try:
        sp_a, sp_b = _Spill(tmp, "a"), _Spill(tmp, "b")
        schema_a = _partition(
            ra, method_a, needed_columns(ra, with_accuracy), width, n_buckets, sp_a, chunk
        )
        schema_b = _partition(
            rb, method_b, needed_columns(rb, with_accuracy), width, n_buckets, sp_b, chunk
        )
        quantities = compared_quantities(schema_a.names, schema_b.names, with_accuracy)
        numeric_a = [c for c in schema_a.names if c not in ("index", "id", "label")]
        numeric_b = [c for c in schema_b.names if c not in ("index", "id", "label")]
        lab_counts = counts_a.labels.get(method_a, Counter())
        group_of = _class_groups(lab_counts, n_cls, chunk)
        sp_pairs = _Spill(tmp, "p")
        sums = {q: _Sums(n_cls, q in BINARY_QUANTITIES) for q in quantities}
        names = _boot_names(quantities)
        boot = PoissonBootstrap(1, names, n_boot=n_boot, seed=seed) if names else None
        out = _Sink(sink, core.TABLE_ROWS)
        label_error: str | None = None
        range_error = False
        moved: dict[str, Any] | None = None
        class_counts = np.zeros(n_cls, dtype=np.int64)
        for k in range(n_buckets):
            ta = sp_a.read(k)
            tb = sp_b.read(k)
            if ta is None or tb is None:
                continue
            ta = ta.sort_by([("index", "ascending")])
            tb = tb.sort_by([("index", "ascending")])
            pos_a, pos_b = pair_rows(ta, tb)
            if pos_a.size == 0:
                continue
            ta, tb = ta.take(pa.array(pos_a)), tb.take(pa.array(pos_b))
            la = ta.column("label").to_numpy().astype(np.int64)
            lb = tb.column("label").to_numpy().astype(np.int64)
            if label_error is None:
                label_error = label_mismatch(ta, la, lb)
            if la.min() < 0 or la.max() >= n_cls:
                range_error = True
            if label_error is not None or range_error:
                continue
            class_counts += np.bincount(la, minlength=n_cls)
            part = PairedMethods(method_a, method_b, ta, tb, la, quantities)
            out.write(paired_table(key, part, classes))
            for q in quantities:
                sums[q].update(la, quantity_values(ta, q), quantity_values(tb, q))
            keys = ta.column("index").to_numpy().astype(np.int64)
            if boot is not None:
                _boot_update(boot, 0, keys, _boot_columns(ta, tb, quantities))
            if with_accuracy:
                moved = moved_candidates(ta, tb, la, moved, moved_keep)
            spill = pa.table(
                {
                    "index": keys,
                    "label": la,
                    **{_A + c: ta.column(c) for c in numeric_a},
                    **{_B + c: tb.column(c) for c in numeric_b},
                }
            )
            sp_pairs.split(group_of[la], spill)
        sp_pairs.close()
        for sp in (sp_a, sp_b):
            for p in tmp.glob(f"{sp.tag}-*"):
                p.unlink()
        if label_error is not None:
            raise AuditorInputError(label_error)
        if range_error:
            raise AuditorInputError(f"labels outside 0..{n_cls - 1} in samples.parquet")
        out.flush()
        n_pairs = int(class_counts.sum())
        kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
        if n_pairs < stream_min_pairs or n_pairs == 0:
            res = _in_memory(sp_pairs, method_a, method_b, classes, (rows_a, rows_b),
                             with_accuracy, stream_min_pairs, kw)  # fmt: skip
        else:
            res = _streamed_stats(
                sp_pairs, method_a, method_b, classes, quantities, sums, boot, class_counts,
                chunk, kw,
            )  # fmt: skip
            res.n_rows_a, res.n_rows_b = rows_a, rows_b
        res.moved = moved
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_memory(
    spill: _Spill,
    method_a: str,
    method_b: str,
    classes: Sequence[str],
    n_rows: tuple[int, int],
    with_accuracy: bool,
    stream_min_pairs: int,
    kw: Mapping[str, Any],
) -> PairedMethods:
    """Fewer pairs than ``stream_min_pairs``: the in-memory statistics of the spilled pairs."""
    parts = [t for g in spill.buckets() if (t := spill.read(g)) is not None]
    if parts:
        t = pa.concat_tables(parts).sort_by([("index", "ascending")])
    else:
        t = pa.table({"index": pa.array([], pa.int64()), "label": pa.array([], pa.int64())})
    ta, tb = _sides(t)
    la = t.column("label").to_numpy().astype(np.int64)
    return paired_stats(
        method_a, method_b, ta, tb, la, classes, n_rows, with_accuracy=with_accuracy,
        stream_min_pairs=stream_min_pairs, **kw,
    )  # fmt: skip


def _streamed_stats(
    spill: _Spill,
    method_a: str,
    method_b: str,
    classes: Sequence[str],
    quantities: list[str],
    sums: Mapping[str, _Sums],
    boot: PoissonBootstrap | None,
    class_counts: np.ndarray,
    chunk: int,
    kw: Mapping[str, Any],
) -> PairedMethods:
    n_cls = len(classes)
    empty = pa.table({"index": pa.array([], pa.int64())})
    res = PairedMethods(
        method_a, method_b, empty, empty, np.zeros(0, dtype=np.int64), list(quantities),
        streamed=True, n_pairs=int(class_counts.sum()), class_counts=class_counts,
    )  # fmt: skip
    res.classes = [{} for _ in range(n_cls)]
    groups = spill.buckets()

    def diffs(buckets: Sequence[int], qs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        for g in buckets:
            for t in spill.batches(g):
                ta, tb = _sides(t)
                yield {q: _diff(ta, tb, q) for q in qs}

    # overall: means and McNemar from the sums, intervals from the Poisson bootstrap, the
    # Wilcoxon tests streamed (in memory when at most a chunk of pairs)
    cont = [q for q in quantities if q not in BINARY_QUANTITIES]
    tests = _tests(lambda qs: diffs(groups, qs), {q: int(sums[q].n.sum()) for q in cont}, chunk)
    for q in quantities:
        s = sums[q]
        test = s.mcnemar(None) if s.binary else tests[q]
        iv = boot.interval(0, q, confidence=kw["confidence"]) if boot is not None else None
        res.overall[q] = block_of(q, int(s.n.sum()), res.n_pairs, s.means(None), iv, test)
    if "background_focus" in quantities and boot is not None:
        for side in ("a", "b"):
            ivo = boot.interval(0, f"\0bf_{side}", confidence=kw["confidence"])
            res.overall["background_focus"][f"ci_{side}"] = (
                [_finite(ivo.low), _finite(ivo.high)] if ivo.n else [None, None]
            )
    # per class, one group of classes at a time
    done = np.zeros(n_cls, dtype=bool)
    for g in groups:
        labs = np.unique(
            np.concatenate(
                [b.column("label").to_numpy() for b in spill.batches(g)] or [np.zeros(0, int)]
            )
        )
        if labs.size == 1 and class_counts[int(labs[0])] > chunk:
            _big_class(spill, g, int(labs[0]), res, quantities, sums, chunk, kw)
        else:
            t = spill.read(g)
            if t is not None:
                _small_classes(t, res, quantities, kw)
        done[labs.astype(np.int64)] = True
    for c in np.flatnonzero(~done).tolist():
        _empty_class(res, int(c), quantities, kw)
    return res


_finite = finite_or_none


def _diff(ta: pa.Table, tb: pa.Table, q: str) -> np.ndarray:
    a, b = quantity_values(ta, q), quantity_values(tb, q)
    return np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)


def _tests(
    diffs: Callable[[Sequence[str]], Iterator[Mapping[str, np.ndarray]]],
    counts: Mapping[str, int],
    chunk: int,
) -> dict[str, dict[str, Any]]:
    """Wilcoxon tests of the differences ``diffs(qs)`` yields: streamed for more than
    ``chunk`` finite values, else :func:`auditor.stats.paired_test` on them."""
    big = {q: n for q, n in counts.items() if n > chunk}
    tests = wilcoxon_stream(lambda: diffs(list(big)), big, chunk) if big else {}
    small = [q for q in counts if q not in big]
    if small:
        held: dict[str, list[np.ndarray]] = {q: [] for q in small}
        for batch in diffs(small):
            for q in small:
                held[q].append(batch[q][np.isfinite(batch[q])])
        for q in small:
            d = np.concatenate(held[q]) if held[q] else np.zeros(0)
            tests[q] = paired_test(np.zeros(d.size), d)
    return tests


def _small_classes(
    t: pa.Table, res: PairedMethods, quantities: Sequence[str], kw: Mapping[str, Any]
) -> None:
    """The exact statistics of the in-memory path for the classes of ``t`` (index order)."""
    ta, tb = _sides(t)
    la = t.column("label").to_numpy().astype(np.int64)
    present = np.unique(la)
    for q in quantities:
        a, b = quantity_values(ta, q), quantity_values(tb, q)
        d = np.where(np.isfinite(a) & np.isfinite(b), b - a, np.nan)
        grouped = grouped_bootstrap_mean_ci(d, la, **kw) if d.size else {}
        binary = q in BINARY_QUANTITIES
        for c in present.tolist():
            sel = np.flatnonzero(la == c)
            xa, xb = a[sel], b[sel]
            iv = grouped.get(c)
            if iv is None:
                iv = bootstrap_mean_ci(np.array([], dtype=float), **kw)
            test = mcnemar_exact(xa, xb) if binary else paired_test(xa, xb)
            res.classes[c][q] = _stat_block_arrays(xa, xb, q, iv, test)
    if "background_focus" in quantities:
        a, b = quantity_values(ta, "background_focus"), quantity_values(tb, "background_focus")
        ok = np.isfinite(a) & np.isfinite(b)
        for side, v0 in (("a", a), ("b", b)):
            v = np.where(ok, v0, np.nan)
            g = grouped_bootstrap_mean_ci(v, la, **kw) if v.size else {}
            for c in present.tolist():
                iv = g.get(c)
                res.classes[c]["background_focus"][f"ci_{side}"] = (
                    [_finite(iv.low), _finite(iv.high)] if iv is not None and iv.n else [None, None]
                )


def _stat_block_arrays(
    a: np.ndarray, b: np.ndarray, q: str, iv: Any, test: Mapping[str, Any]
) -> dict[str, Any]:

    return stat_block(a, b, q, iv, test)


def _empty_class(
    res: PairedMethods, c: int, quantities: Sequence[str], kw: Mapping[str, Any]
) -> None:
    """A class without pairs: the in-memory path's blocks of no values."""
    e = np.zeros(0)
    for q in quantities:
        iv = bootstrap_mean_ci(e, **kw)
        test = mcnemar_exact(e, e) if q in BINARY_QUANTITIES else paired_test(e, e)
        res.classes[c][q] = _stat_block_arrays(e, e, q, iv, test)
    if "background_focus" in quantities:
        for side in ("a", "b"):
            res.classes[c]["background_focus"][f"ci_{side}"] = [None, None]


def _big_class(
    spill: _Spill,
    g: int,
    c: int,
    res: PairedMethods,
    quantities: Sequence[str],
    sums: Mapping[str, _Sums],
    chunk: int,
    kw: Mapping[str, Any],
) -> None:
    """A class of more than a chunk of pairs: Poisson bootstrap keyed by dataset index,
    streamed Wilcoxon tests, McNemar and means from the sums."""
    names = _boot_names(quantities)
    boot = PoissonBootstrap(1, names, n_boot=int(kw["n_boot"]), seed=int(kw["seed"]))
    for t in spill.batches(g):
        ta, tb = _sides(t)
        keys = t.column("index").to_numpy().astype(np.int64)
        _boot_update(boot, 0, keys, _boot_columns(ta, tb, quantities))
    cont = [q for q in quantities if q not in BINARY_QUANTITIES]

    def diffs(qs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        for t in spill.batches(g):
            ta, tb = _sides(t)
            yield {q: _diff(ta, tb, q) for q in qs}

    tests = _tests(diffs, {q: int(sums[q].n[c]) for q in cont}, chunk)
    res.poisson_classes.add(c)
    n_c = int(res.class_counts[c]) if res.class_counts is not None else 0
    for q in quantities:
        s = sums[q]
        test = s.mcnemar(c) if s.binary else tests[q]
        iv = boot.interval(0, q, confidence=kw["confidence"])
        res.classes[c][q] = block_of(q, int(s.n[c]), n_c, s.means(c), iv, test)
    if "background_focus" in quantities:
        for side in ("a", "b"):
            ivo = boot.interval(0, f"\0bf_{side}", confidence=kw["confidence"])
            res.classes[c]["background_focus"][f"ci_{side}"] = (
                [_finite(ivo.low), _finite(ivo.high)] if ivo.n else [None, None]
            )
