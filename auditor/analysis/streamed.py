"""Finalisation that streams the shards: flat memory at a million images (issue 14).

The exact path (:func:`auditor.analysis.analyse`) reads every row into one table and
bootstraps by resampling indices, ``O(rows)`` memory and ``O(rows x replicates)`` work held at
once. :class:`StreamedRun` reads the row shards **one at a time** (column projection; shards
whose index ranges overlap are read together, so the rows come in the exact path's
``(index, method)`` order) and keeps:

* per method, per class and per metric, the Poisson-bootstrap accumulators of
  :class:`auditor.audit.streaming.PoissonBootstrap` (Hanley & MacGibbon 2006; Chamandy et al. 2012):
  ``sum_i w_ir x_i`` and ``sum_i w_ir`` per replicate ``r``, with BCa intervals (Efron 1987)
  from streamed power sums. Weights are keyed by the dataset index, so every method's and
  metric's value of one sample is resampled together, and the result does not depend on how
  the run was sharded. Memory: ``(classes + 1) x metrics x replicates x 12`` bytes per
  method, whatever the number of samples;
* the only-foreground drop ``mean(correct - only_fg_correct)`` per class the same way (the
  paired bootstrap of the exact path resamples the same pairs: Efron & Tibshirani 1993);
* faithfulness means over the seeded subset (one group per method);
* exact counts: statuses per method, accuracies (Wilson 1927, from counts), the confusion
  matrix, intervention accuracies, the dataset hash;
* the primary method's **slim rows** (about 20 numeric columns plus the id: ~150 bytes per
  evaluated sample, 150 MB at a million): the finding rules, the gallery and the cluster
  statistics read them per sample, unchanged;
* the per-sample ``energy_in_mask`` of each method (16 bytes per sample and method) for the
  Spearman agreement between methods, which is exact;
* the primary method's low-resolution CAMs **spilled to a temporary file** in the run
  directory, ordered by class (``h x w`` float16 per sample), read back class by class for
  SpRAy and per sample for the gallery (:class:`SpilledCams`): one class's maps in memory.

``samples.parquet`` is then written in a second pass with ``pyarrow.parquet.ParquetWriter``
in row groups of :data:`ROW_GROUP` rows (fixed size, so the bytes do not depend on how the
run was sharded). Counts, means and accuracies equal the exact path's (means up to summation
order); intervals agree within Monte-Carlo error (``tests/test_streamed.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from auditor.analysis.aggregate import (
    INTERVENTION_CORRECT,
    PrimaryColumns,
    accuracy_with_ci,
    class_results,
    null_baselines,
    stat_of,
)
from auditor.audit.store import UMASK, read_samples
from auditor.audit.streaming import PoissonBootstrap, PoissonWeights
from auditor.config import AuditSettings
from auditor.errors import DataError
from auditor.results import AuditResult, MethodAgreement, OverallResult, Stat

__all__ = [
    "AGGREGATIONS",
    "ROW_GROUP",
    "STREAMING_THRESHOLD",
    "SpilledCams",
    "StreamedRun",
    "choose_aggregation",
]

#: Values of ``[audit] aggregation``.
AGGREGATIONS = ("auto", "exact", "streaming")

#: ``aggregation = "auto"`` streams when the run evaluated more samples than this. Below it
#: the exact bootstrap takes seconds and the whole table fits in a few hundred MB
#: (docs/running-at-scale.md).
STREAMING_THRESHOLD = 100_000

#: Rows per row group of the streamed samples.parquet.
ROW_GROUP = 65_536

#: Samples whose rows are buffered before one accumulator update (the update's matrix
#: products get taller, the per-group overhead is paid once): ``FLUSH x n_boot`` bytes of
#: weights while it runs.
FLUSH = 8_192

_SLIM = (
    "index",
    "id",
    "label",
    "method",
    "pred",
    "correct",
    "confidence",
    "has_mask",
    "mask_area",
    "status",
    "background_focus",
    "border_focus",
    "energy_lift",
    "energy_in_mask",
    "entropy",
    "only_fg_correct",
    "only_bg_correct",
    "mixed_rand_correct",
    "only_bg_pred",
)


def choose_aggregation(setting: str, n_rows: int, n_methods: int) -> str:
    """``"exact"`` or ``"streaming"`` for ``[audit] aggregation = setting``.

    ``"auto"`` streams when ``n_rows / n_methods`` (the evaluated samples) exceeds
    :data:`STREAMING_THRESHOLD`.
    """
    if setting not in AGGREGATIONS:
        raise ValueError(f"`setting` must be one of {AGGREGATIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    return "streaming" if n_rows > STREAMING_THRESHOLD * max(1, n_methods) else "exact"


def count_rows(shards: Path, batches: Sequence[int]) -> int:
    """Rows of the completed row shards, from their Parquet footers (no data read)."""
    total = 0
    for b in batches:
        path = shards / f"part-{b:05d}.parquet"
        try:
            total += pq.read_metadata(path).num_rows
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise DataError(
                f"run directory shard {path} is unreadable ({type(exc).__name__}); rerun the "
                f"job that wrote it with --resume to recompute the batch"
            ) from exc
    return total


def _read(path: Path, columns: Sequence[str] | None, schema: pa.Schema) -> pa.Table:
    try:
        if columns is None:
            t = read_samples(path)
        else:
            have = set(pq.read_schema(path).names)
            t = read_samples(path, columns=[c for c in columns if c in have])
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise DataError(
            f"run directory shard {path} is unreadable ({type(exc).__name__}); rerun with "
            f"--resume to recompute it"
        ) from exc
    names = list(columns) if columns is not None else schema.names
    arrays = []
    fields = []
    for name in names:
        if name not in schema.names:
            continue
        f = schema.field(name)
        if name in t.column_names:
            a = t.column(name)
            arrays.append(a if a.type == f.type else a.cast(f.type))
        else:
            arrays.append(pa.nulls(t.num_rows, f.type))
        fields.append(f)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class SpilledCams(Mapping[int, np.ndarray]):
    """The primary method's low-resolution CAMs in a temporary file, ``{index: [h, w]}``.

    Rows are ordered by class, then by dataset index; :meth:`class_maps` reads one class's
    block, ``cams[i]`` one map (float16 on disk, float32 out: the exact path's
    :meth:`auditor.audit.store.RunStore.load_cams` gives the same values).
    """

    def __init__(self, path: Path, shape: tuple[int, int], slot: np.ndarray) -> None:
        self.path, self.shape, self._slot = path, shape, slot
        self._fd = os.open(path, os.O_RDONLY)
        self._item = int(np.prod(shape)) * 2

    def __getitem__(self, index: int) -> np.ndarray:
        i = int(index)
        if not 0 <= i < self._slot.size or self._slot[i] < 0:
            raise KeyError(index)
        buf = os.pread(self._fd, self._item, int(self._slot[i]) * self._item)
        return np.frombuffer(buf, np.float16).reshape(self.shape).astype(np.float32)

    def __contains__(self, index: object) -> bool:
        try:
            i = int(index)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
        return 0 <= i < self._slot.size and bool(self._slot[i] >= 0)

    def __iter__(self) -> Iterator[int]:
        return iter(np.flatnonzero(self._slot >= 0).tolist())

    def __len__(self) -> int:
        return int((self._slot >= 0).sum())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.path.unlink(missing_ok=True)


class StreamedRun:
    """One pass over a run directory's row shards: the accumulators of the streamed result.

    ``StreamedRun(store, classes=..., settings=...)`` reads every shard once;
    :meth:`write_samples` writes samples.parquet in a second pass; :meth:`analyse` returns
    the :class:`AuditResult` (the same typed structure as the exact path's
    :func:`auditor.analysis.analyse`); :meth:`close` removes the CAM spill.
    """

    def __init__(self, store: Any, *, classes: Sequence[str], settings: AuditSettings) -> None:
        from auditor.analysis import FAITH_METRICS
        from auditor.metrics.registry import sample_metric_names

        self.store, self.settings, self.classes = store, settings, list(classes)
        s = settings
        self.primary = s.primary
        self.batches = store.batch_numbers()
        shards: Path = store.shards
        schemas = [pq.read_schema(shards / f"part-{b:05d}.parquet") for b in self.batches]
        schemas = [sc for sc in schemas if len(sc)]
        self.schema = (
            pa.unify_schemas(schemas, promote_options="default") if schemas else pa.schema([])
        )
        names = set(self.schema.names)
        self.metrics = [m for m in sample_metric_names() if m in names]
        self.faith_metrics = [m for m in FAITH_METRICS if m in names]
        self.groups = self._plan()
        n_groups = len(self.classes) + 1  # the last one: labels outside the class list
        self._other = len(self.classes)
        boot = dict(n_boot=s.bootstrap, seed=s.seed)
        self.acc = {
            m: PoissonBootstrap(n_groups, self.metrics, **boot) for m in s.methods if self.metrics
        }
        self.drop = PoissonBootstrap(n_groups, ["only_fg_drop"], **boot)
        self.faith = {
            m: PoissonBootstrap(1, self.faith_metrics, **boot)
            for m in s.methods
            if self.faith_metrics
        }
        # keys arrive sorted (np.unique per update, groups of increasing index ranges): one
        # block is reused across an update boundary at most
        self.weights = PoissonWeights(s.bootstrap, s.seed, cache=2)
        self.status: dict[str, Counter[str]] = {m: Counter() for m in s.methods}
        self.hasher = hashlib.sha256()
        self.n_rows = 0
        self._agree: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in s.methods}
        self._buf: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buf_keys: list[np.ndarray] = []
        self._buf_n = 0
        slim: list[pa.Table] = []
        self._spill_init()
        try:
            for group in self.groups:
                slim.append(self._consume(group))
            self._flush()
            self.slim = (
                pa.concat_tables(slim) if slim else pa.table({"method": pa.array([], pa.string())})
            )
            self.cams = self._spill_done()
        except BaseException:
            self._spill_abort()
            raise

    # -- pass 1 ---------------------------------------------------------------------------
    def _plan(self) -> list[list[int]]:
        """Batches grouped so that groups cover disjoint, increasing index ranges; also
        counts the primary method's samples per class (the CAM spill's layout)."""
        spans = []
        n_cls = len(self.classes)
        counts = np.zeros(n_cls + 1, np.int64)
        self.max_index = -1
        for b in self.batches:
            t = _read(
                self.store.shards / f"part-{b:05d}.parquet",
                ["index", "method", "label"],
                self.schema,
            )
            if not t.num_rows or "index" not in t.column_names:
                continue
            idx = t.column("index").to_numpy()
            spans.append((int(idx.min()), int(idx.max()), b))
            self.max_index = max(self.max_index, int(idx.max()))
            if "method" in t.column_names and "label" in t.column_names:
                prim = t.filter(pc.equal(t.column("method"), self.primary))
                lab = prim.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
                lab = np.where((lab >= 0) & (lab < n_cls), lab, n_cls)
                counts += np.bincount(lab, minlength=n_cls + 1)
        self.class_counts = counts
        spans.sort()
        groups: list[list[int]] = []
        hi = None
        for lo_i, hi_i, b in spans:
            if groups and hi is not None and lo_i <= hi:
                groups[-1].append(b)
                hi = max(hi, hi_i)
            else:
                groups.append([b])
                hi = hi_i
        return groups

    def _read_group(self, group: Sequence[int], columns: Sequence[str] | None) -> pa.Table:
        tables = [
            _read(self.store.shards / f"part-{b:05d}.parquet", columns, self.schema)
            for b in sorted(group)
        ]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return _read(self.store.shards / f"part-{group[0]:05d}.parquet", columns, self.schema)
        t = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        return t.sort_by([("index", "ascending"), ("method", "ascending")])

    def _consume(self, group: Sequence[int]) -> pa.Table:
        want = [
            "index",
            "id",
            "label",
            "method",
            "status",
            "image_sha256",
            "mask_sha256",
            "faithfulness_subset",
            *_SLIM,
            *INTERVENTION_CORRECT,
            *self.metrics,
            *self.faith_metrics,
        ]
        cols = list(dict.fromkeys(c for c in want if c in self.schema.names))
        t = self._read_group(group, cols)
        self.n_rows += t.num_rows
        if not t.num_rows:
            return t.select([c for c in _SLIM if c in t.column_names]).slice(0, 0)
        method = t.column("method").to_numpy(zero_copy_only=False).astype(str)
        idx = t.column("index").to_numpy().astype(np.int64)
        lab = t.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
        grp = np.where((lab >= 0) & (lab < len(self.classes)), lab, self._other)
        if "status" in t.column_names:
            st = t.column("status").to_numpy(zero_copy_only=False).astype(str)
            for m in self.settings.methods:
                vals, counts = np.unique(st[method == m], return_counts=True)
                self.status[m].update({str(v): int(c) for v, c in zip(vals, counts)})
        subset = (
            t.column("faithfulness_subset").to_numpy(zero_copy_only=False).astype(bool)
            if "faithfulness_subset" in t.column_names
            else np.ones(t.num_rows, bool)
        )

        as_float: dict[str, np.ndarray] = {}

        def floats(name: str, sel: np.ndarray) -> np.ndarray:
            """Column ``name`` as float64 (nulls and absent columns: NaN), rows ``sel``."""
            if name not in t.column_names:
                return np.full(int(sel.sum()), np.nan)
            if name not in as_float:
                a = pc.cast(t.column(name), pa.float64())
                as_float[name] = np.asarray(a.to_numpy(zero_copy_only=False), np.float64)
            return as_float[name][sel]

        for m in self.settings.methods:
            sel = method == m
            if not sel.any():
                continue
            if m in self.acc:
                vals = np.stack([floats(c, sel) for c in self.metrics], axis=1)
                self._buf.append(("acc:" + m, grp[sel], idx[sel], vals))
            if "energy_in_mask" in t.column_names:
                self._agree[m].append((idx[sel], floats("energy_in_mask", sel)))
            if m in self.faith:
                fs = sel & subset
                if fs.any():
                    vals = np.stack([floats(c, fs) for c in self.faith_metrics], axis=1)
                    self._buf.append(
                        ("faith:" + m, np.zeros(int(fs.sum()), np.int64), idx[fs], vals)
                    )
        psel = method == self.primary
        if psel.any() and "only_fg_correct" in t.column_names:
            d = floats("correct", psel) - floats("only_fg_correct", psel)
            self._buf.append(("drop", grp[psel], idx[psel], d[:, None]))
        self._buf_keys.append(idx)
        self._buf_n += int(psel.sum())
        prim = t.filter(pa.array(psel))
        if prim.num_rows:
            cols_h = [
                prim.column(c).to_pylist() if c in prim.column_names else [None] * prim.num_rows
                for c in ("id", "image_sha256", "mask_sha256", "label")
            ]
            for sid, ish, msh, lb in zip(*cols_h):
                self.hasher.update(f"{sid}\0{ish}\0{msh}\0{lb}\n".encode())
            self._spill_group(group, prim)
        if self._buf_n >= FLUSH:
            self._flush()
        return prim.select([c for c in _SLIM if c in prim.column_names])

    def _flush(self) -> None:
        if not self._buf:
            return
        keys = np.unique(np.concatenate(self._buf_keys))
        w = self.weights(keys)
        merged: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for name, grp, key, vals in self._buf:  # one update per accumulator and flush
            merged.setdefault(name, []).append((grp, key, vals))
        for name, parts in merged.items():
            grp, key, vals = (np.concatenate([p[j] for p in parts]) for j in range(3))
            # every method's rows usually cover all the keys: no gathered copy then
            same = key.size == keys.size and bool((key == keys).all())
            rows = w if same else w[np.searchsorted(keys, key)]
            if name == "drop":
                self.drop.update(grp, key, vals, weights=rows)
            elif name.startswith("acc:"):
                self.acc[name[4:]].update(grp, key, vals, weights=rows)
            else:
                self.faith[name[6:]].update(grp, key, vals, weights=rows)
        self._buf, self._buf_keys, self._buf_n = [], [], 0

    # -- CAM spill ------------------------------------------------------------------------
    def _spill_init(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".cams-spill.", suffix=".tmp", dir=self.store.root)
        self._spill_fd, self._spill_path = fd, Path(tmp)
        self._spill_shape: tuple[int, int] | None = None
        starts = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]])
        self._fill = starts.astype(np.int64)
        self._slot = np.full(self.max_index + 1, -1, np.int64)

    def _spill_group(self, group: Sequence[int], prim: pa.Table) -> None:
        p_idx = prim.column("index").to_numpy().astype(np.int64)
        p_lab = prim.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
        got_i, got_c = [], []
        for b in sorted(group):
            path = self.store.shards / f"cams-{b:05d}.npz"
            key = f"cam__{self.primary}"
            try:
                with np.load(path, allow_pickle=False) as z:
                    if key not in z.files or not len(z["indices"]):
                        continue
                    got_i.append(np.asarray(z["indices"], np.int64))
                    got_c.append(np.asarray(z[key], np.float16))
            except Exception as exc:  # noqa: BLE001 - zipfile/numpy errors of many types
                raise DataError(
                    f"run directory shard {path} is missing or unreadable "
                    f"({type(exc).__name__}); rerun the job that wrote it with --resume to "
                    f"recompute the batch"
                ) from exc
        if not got_i:
            return
        ci = np.concatenate(got_i)
        cams = np.concatenate(got_c) if len(got_c) > 1 else got_c[0]
        shape = (int(cams.shape[1]), int(cams.shape[2]))
        if self._spill_shape is None:
            self._spill_shape = shape
        elif shape != self._spill_shape:
            raise DataError(
                f"{self.store.shards}: CAMs of batch(es) {list(group)} are {shape}, earlier ones "
                f"{self._spill_shape}; the shards come from different runs"
            )
        if p_idx.size:
            pos = np.minimum(np.searchsorted(p_idx, ci), p_idx.size - 1)
            known = p_idx[pos] == ci
            lab = np.where(known, p_lab[pos], -1)
        else:
            known = np.zeros(ci.size, bool)
            lab = np.full(ci.size, -1, np.int64)
        keep = known & (lab >= 0) & (lab < len(self.classes)) & (ci <= self.max_index)
        keep &= self._slot[np.clip(ci, 0, self.max_index)] < 0  # a sample spilled once
        ci, lab, cams = ci[keep], lab[keep], cams[keep]
        order = np.lexsort((ci, lab))
        ci, lab, cams = ci[order], lab[order], cams[order]
        item = shape[0] * shape[1] * 2
        cuts = np.flatnonzero(np.diff(lab)) + 1
        for s, e in zip(np.r_[0, cuts].tolist(), np.r_[cuts, lab.size].tolist()):
            c = int(lab[s])
            first = int(self._fill[c])
            os.pwrite(self._spill_fd, np.ascontiguousarray(cams[s:e]).tobytes(), first * item)
            self._slot[ci[s:e]] = np.arange(first, first + (e - s))
            self._fill[c] = first + (e - s)

    def _spill_done(self) -> SpilledCams:
        os.close(self._spill_fd)
        return SpilledCams(self._spill_path, self._spill_shape or (1, 1), self._slot)

    def _spill_abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._spill_fd)
        self._spill_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the CAM spill file."""
        self.cams.close()

    # -- pass 2 ---------------------------------------------------------------------------
    def write_samples(self, membership: Mapping[int, int]) -> Path:
        """samples.parquet (the exact path's schema, row order and ``cluster`` column), in
        row groups of :data:`ROW_GROUP` rows, written to a temporary file then renamed."""
        path = self.store.root / "samples.parquet"
        cl = np.full(self.max_index + 2, -1, np.int64)
        for i, c in membership.items():
            if 0 <= int(i) <= self.max_index:
                cl[int(i)] = int(c)
        schema = self.schema.append(pa.field("cluster", pa.int64()))
        fd, tmp = tempfile.mkstemp(prefix=".samples.parquet.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            with pq.ParquetWriter(
                tmp, schema, compression="zstd", use_dictionary=True, write_statistics=True
            ) as writer:
                pending: list[pa.Table] = []
                n_pending = 0
                for group in self.groups:
                    t = self._read_group(group, None)
                    if not t.num_rows:
                        continue
                    idx = t.column("index").to_numpy().astype(np.int64)
                    t = t.append_column("cluster", pa.array(cl[idx], pa.int64()))
                    pending.append(t)
                    n_pending += t.num_rows
                    while n_pending >= ROW_GROUP:
                        whole = pa.concat_tables(pending)
                        writer.write_table(whole.slice(0, ROW_GROUP), row_group_size=ROW_GROUP)
                        rest = whole.slice(ROW_GROUP)
                        pending, n_pending = [rest], rest.num_rows
                if n_pending:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
            os.chmod(tmp, 0o666 & ~UMASK)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    # -- the result -----------------------------------------------------------------------
    def metric_stats(
        self,
    ) -> tuple[dict[str, dict[str, Stat]], dict[str, dict[str, dict[str, Stat]]]]:
        """Like :func:`auditor.analysis.aggregate.metric_block`, from the accumulators."""
        conf = self.settings.confidence
        overall: dict[str, dict[str, Stat]] = {}
        per_class: dict[str, dict[str, dict[str, Stat]]] = {c: {} for c in self.classes}
        for m in self.settings.methods:
            overall[m] = {}
            for c in self.classes:
                per_class[c][m] = {}
            acc = self.acc.get(m)
            if acc is None or not acc._seen.sum():
                for metric in self.metrics:
                    overall[m][metric] = Stat(None, None, None, 0, 0)
                    for c in self.classes:
                        per_class[c][m][metric] = Stat()
                continue
            merged = acc.merged()
            for metric in self.metrics:
                overall[m][metric] = stat_of(merged.interval(0, metric, confidence=conf))
                for ci, c in enumerate(self.classes):
                    per_class[c][m][metric] = (
                        stat_of(acc.interval(ci, metric, confidence=conf))
                        if acc.seen(ci)
                        else Stat()
                    )
        return overall, per_class

    def method_agreement(self) -> MethodAgreement | None:
        """Spearman correlation of ``energy_in_mask`` between methods (exact, as
        :func:`auditor.analysis.aggregate.method_agreement`)."""
        methods = list(self.settings.methods)
        if len(methods) < 2 or "energy_in_mask" not in self.schema.names:
            return None
        from scipy.stats import spearmanr

        per = {}
        for m in methods:
            parts = self._agree[m]
            i = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            v = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
            if i.size < 2 or bool((np.diff(i) > 0).all()):  # increasing: unique already
                per[m] = (i, v)
                continue
            # a dict keeps an index's last value: do the same
            rev_i, rev_pos = np.unique(i[::-1], return_index=True)
            per[m] = (rev_i, v[::-1][rev_pos])
        mat: list[tuple[float | None, ...]] = []
        for a in methods:
            row: list[float | None] = []
            for b in methods:
                ia, va = per[a]
                ib, vb = per[b]
                if ia.size == ib.size and np.array_equal(ia, ib):  # the same samples
                    xa, xb = va, vb
                else:
                    _, pa_, pb_ = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
                    xa, xb = va[pa_], vb[pb_]
                ok = np.isfinite(xa) & np.isfinite(xb)
                xa, xb = xa[ok], xb[ok]
                if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(xb) == 0:
                    row.append(None)
                    continue
                row.append(float(spearmanr(xa, xb).statistic))
            mat.append(tuple(row))
        return MethodAgreement(methods=tuple(methods), metric="energy_in_mask", spearman=tuple(mat))

    def faithfulness(self) -> dict[str, dict[str, Stat]] | None:
        out: dict[str, dict[str, Stat]] = {}
        for m, acc in self.faith.items():
            block = {}
            for metric in self.faith_metrics:
                iv = acc.interval(0, metric, confidence=self.settings.confidence)
                if iv.n:
                    block[metric] = stat_of(iv)
            if block:
                out[m] = block
        return out or None

    def analyse(
        self,
        *,
        rules: Any = None,
        clusters: Mapping[str, Any] | None = None,
        sanity: Mapping[str, Any] | None = None,
    ) -> AuditResult:
        """The :class:`AuditResult` (statistics, findings, confusion, agreement, ...)."""
        from auditor.analysis import assemble
        from auditor.analysis.findings import FindingRules
        from auditor.progress import phase

        phase("analysis", "statistics, intervals and findings, shard by shard (streaming)")
        s = self.settings
        overall_m, class_m = self.metric_stats()
        prim = PrimaryColumns.of(self.slim, self.primary)
        null = null_baselines(self.slim, self.classes, self.primary, class_m)
        drops = (
            {
                ci: self.drop.interval(ci, "only_fg_drop", confidence=s.confidence)
                for ci in range(len(self.classes))
            }
            if prim.interventions
            else None
        )
        cls_results = class_results(prim, self.classes, class_m, s, null, drops)
        acc, acc_ci = accuracy_with_ci(prim.correct, s.confidence)
        overall = OverallResult(
            n=int(len(prim.labels)),
            accuracy=acc,
            accuracy_ci=acc_ci,
            metrics=MappingProxyType({m: MappingProxyType(dict(v)) for m, v in overall_m.items()}),
            status_counts=MappingProxyType(
                {
                    m: MappingProxyType(dict(sorted(c.items())))
                    for m, c in self.status.items()
                    if "status" in self.schema.names
                }
            ),
        )
        return assemble(
            cls_results,
            overall=overall,
            prim=prim,
            classes=self.classes,
            methods=s.methods,
            settings=s,
            rules=rules or FindingRules(),
            method_agreement=self.method_agreement(),
            faithfulness=self.faithfulness(),
            clusters=clusters,
            sanity=sanity,
        )

    @property
    def accumulator_bytes(self) -> int:
        """Memory of the bootstrap accumulators (independent of the number of samples)."""
        return int(
            sum(a.nbytes for a in self.acc.values())
            + self.drop.nbytes
            + sum(a.nbytes for a in self.faith.values())
            + self.weights.nbytes
        )
