"""The run directory: atomic writes, per-batch shards, resume, provenance.

Layout (docs/run-directory.md): ``shards/part-NNNNN.parquet`` (rows: sample × method),
``shards/cams-NNNNN.npz`` (low-resolution CAMs), ``shards/skipped-NNNNN.json``. A batch is
complete exactly when its ``part-NNNNN.parquet`` exists: it is written last, atomically, after
the CAMs and the skip list of the same batch. ``--resume`` therefore never trusts a half-written
batch, and a run killed at any point loses at most the batch in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auditor.audit.status import LEGACY_STATUSES, SAMPLE_STATUSES, migrate_status
from auditor.errors import (
    AuditorInputError,
    DataError,
    ResumeMismatchError,
    RunLockedError,
    StorageError,
)

# ------------------------------------------------------------------------------------------
# the samples row schema: one definition, written by the runner, read by everyone
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SampleColumn:
    """One column of the per-sample rows (shards and ``samples.parquet``).

    ``when``: ``"always"``; ``"interventions"`` / ``"faithfulness"`` (only when that analysis
    is configured); ``"finalize"`` (added to ``samples.parquet`` only, not to the shards).
    """

    name: str
    type: pa.DataType
    doc: str
    when: str = "always"


_STATUS_DOC = "per-sample metric status: " + ", ".join(f"`{s}`" for s in SAMPLE_STATUSES)

SAMPLE_COLUMNS: tuple[SampleColumn, ...] = (
    SampleColumn("index", pa.int64(), "position in the dataset"),
    SampleColumn("id", pa.string(), "sample id"),
    SampleColumn("label", pa.int64(), "true class index"),
    SampleColumn("label_name", pa.string(), "true class name"),
    SampleColumn("target", pa.int64(), "class explained"),
    SampleColumn("pred", pa.int64(), "predicted class; -1 when the logits are not finite"),
    SampleColumn("correct", pa.bool_(), "pred == label"),
    SampleColumn("confidence", pa.float64(), "softmax probability of the target class"),
    SampleColumn("pred_confidence", pa.float64(), "softmax probability of the prediction"),
    SampleColumn("label_confidence", pa.float64(), "softmax probability of the true label"),
    SampleColumn(
        "top_classes",
        pa.list_(pa.int32()),
        "classes by decreasing probability: all of them up to 32 classes, else the top 10; "
        "null where the logits are not finite",
    ),
    SampleColumn("top_probs", pa.list_(pa.float32()), "their softmax probabilities"),
    SampleColumn("has_mask", pa.bool_(), "the sample has an object mask"),
    SampleColumn("mask_area", pa.float64(), "object fraction of the image; NaN without a mask"),
    SampleColumn("image_sha256", pa.string(), "hash of the image file"),
    SampleColumn("mask_sha256", pa.string(), "hash of the mask file; empty without one"),
    SampleColumn("notes", pa.string(), "reader notes, `; `-separated"),
    SampleColumn("method", pa.string(), "CAM method of the row"),
    SampleColumn("status", pa.string(), _STATUS_DOC),
    SampleColumn("cam_status", pa.string(), "engine status (`auditor.cam.STATUSES`)"),
    # one float64 column per metric goes here (METRIC_COLUMN_TYPE, auditor.metrics.registry)
    *(
        SampleColumn(
            f"{k}_{v}",
            pa.float64(),
            f"{k} intervention: "
            + (
                "1/0, NaN where not run (no mask, or a mask empty or covering the image)"
                if v == "correct"
                else "target-class probability, NaN where not run (as above)"
            ),
            "interventions",
        )
        for k in ("only_fg", "only_bg", "mixed_rand")
        for v in ("correct", "confidence")
    ),
    SampleColumn(
        "only_bg_pred",
        pa.int64(),
        "class the background alone is predicted as; -1 where not run (as above)",
        "interventions",
    ),
    SampleColumn(
        "only_fg_pred",
        pa.int64(),
        "class the object alone (background removed) is predicted as; -1 where not run",
        "interventions",
    ),
    # the alternative fills tried when the configured one collapses (issue 22;
    # auditor.analysis.fill_choice): the predicted class, -1 where not run
    *(
        SampleColumn(
            f"{k}_pred_{fill}",
            pa.int64(),
            f"class predicted for the {k} image with the {fill} fill; -1 where not run",
            "interventions",
        )
        for fill in ("blur", "noise", "image_mean")
        for k in ("only_bg", "only_fg")
    ),
    SampleColumn(
        "faithfulness_subset", pa.bool_(), "in the seeded faithfulness subset", "faithfulness"
    ),
    *(
        SampleColumn(name, pa.float64(), "faithfulness; NaN outside the subset", "faithfulness")
        for name in ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
    ),
    SampleColumn(
        "cluster",
        pa.int64(),
        "primary method's SpRAy cluster within the class; -1 where not clustered",
        "finalize",
    ),
)
"""The per-sample row columns, in the order they are written (metrics after ``cam_status``)."""

METRIC_COLUMN_TYPE = pa.float64()
"""Type of every metric column (NaN where undefined)."""

_METRICS_AFTER = "cam_status"

#: Columns written only when interventions / faithfulness ran (runner's fixed-shape shards).
INTERVENTION_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in SAMPLE_COLUMNS if c.when == "interventions" and c.type == pa.float64()
)
#: the alternative fills' predicted classes (int64, -1 where not run; issue 22)
ALTERNATIVE_FILL_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in SAMPLE_COLUMNS if c.when == "interventions" and "_pred_" in c.name
) + ("only_fg_pred",)
FAITHFULNESS_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in SAMPLE_COLUMNS if c.when == "faithfulness" and c.type == pa.float64()
)


def samples_schema(
    metrics: Sequence[str],
    *,
    interventions: bool,
    faithfulness: bool,
    finalized: bool = False,
) -> pa.Schema:
    """The row schema of a run: fixed columns, one float64 column per metric in ``metrics``.

    ``finalized``: the ``samples.parquet`` schema (with ``cluster``); else a shard's.
    """
    wanted = {"always"}
    if interventions:
        wanted.add("interventions")
    if faithfulness:
        wanted.add("faithfulness")
    if finalized:
        wanted.add("finalize")
    fields: list[pa.Field] = []
    for column in SAMPLE_COLUMNS:
        if column.when in wanted:
            fields.append(pa.field(column.name, column.type))
        if column.name == _METRICS_AFTER:
            fields.extend(pa.field(m, METRIC_COLUMN_TYPE) for m in metrics)
    return pa.schema(fields)


def samples_columns_markdown(metrics: Sequence[str] = ()) -> str:
    """A markdown table of :data:`SAMPLE_COLUMNS` (docs/run-directory.md prints it)."""
    lines = ["| column | type | when | meaning |", "|---|---|---|---|"]
    for column in SAMPLE_COLUMNS:
        lines.append(f"| `{column.name}` | {column.type} | {column.when} | {column.doc} |")
        if column.name == _METRICS_AFTER:
            names = ", ".join(f"`{m}`" for m in metrics) or "each metric"
            lines.append(
                f"| {names} | {METRIC_COLUMN_TYPE} | always | one column per metric of "
                "`auditor.metrics` (built-in and `@metric`), NaN where undefined |"
            )
    return "\n".join(lines)


def rows_table(columns: Mapping[str, Any], schema: pa.Schema) -> pa.Table:
    """One batch's rows as a table of exactly ``schema`` (:func:`samples_schema`).

    Raises:
        RuntimeError: ``columns`` has other names than the schema (a writer out of step with
            :data:`SAMPLE_COLUMNS`).
    """
    if set(columns) != set(schema.names):
        extra = sorted(set(columns) - set(schema.names))
        missing = sorted(set(schema.names) - set(columns))
        raise RuntimeError(
            f"sample rows do not match the row schema: extra {extra}, missing {missing}"
        )
    return pa.Table.from_pydict(dict(columns), schema=schema)


def migrate_samples(table: pa.Table) -> pa.Table:
    """Rows of an older run in the current vocabulary (``status``: :mod:`auditor.audit.status`)."""
    if "status" not in table.column_names or not table.num_rows:
        return table
    column = table.column("status")
    values = column.to_pylist()
    if not any(v in LEGACY_STATUSES for v in values):
        return table
    fixed = pa.array([None if v is None else migrate_status(v) for v in values], column.type)
    return table.set_column(table.column_names.index("status"), "status", fixed)


def read_samples(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read ``samples.parquet`` (or a row shard), migrated to the current vocabulary.

    ``columns``: the columns wanted (``None`` = all). Errors are pyarrow's (``OSError``,
    ``ValueError``, ``pyarrow.ArrowInvalid``), for the caller to name the file.
    """
    table = pq.read_table(path, columns=None if columns is None else list(columns))
    return migrate_samples(table)


SHARD_DIR = "shards"
LOCK_DIR = "locks"
MAIN_LOCK = "main"
#: A file that marks a folder as a cam-auditor run directory (written when it is claimed).
RUN_MARKER = ".cam-auditor-run"
_UMASK = os.umask(0)
os.umask(_UMASK)
#: the process's umask, read once at import (files made here get 0o666 & ~UMASK)
UMASK = _UMASK
log = logging.getLogger("auditor")

#: errno values that mean "the output location cannot take the write" (exit code 2).
_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


def free_space(path: Path) -> str:
    """Free space of the file system holding ``path`` (nearest existing parent), for messages."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = float(shutil.disk_usage(p).free)
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"  # pragma: no cover


def storage_error(exc: OSError, path: Path) -> StorageError:
    """A one-line :class:`StorageError` for ``exc`` raised while writing ``path``."""
    why = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large (file-size limit reached)",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a path component is a file, not a folder",
        errno.EEXIST: "exists and is not a folder",
        errno.EISDIR: "is a folder",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return StorageError(
        f"cannot write {path}: {why} ({free_space(path)}); nothing was left "
        f"half-written at a final path"
    )


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError about the output location (full, read-only, not a dir)."""
    return isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS


#: atomic_write_bytes writes ``NAME`` through ``.NAME.<random>.tmp`` in the same folder.
_TMP_SUFFIX = ".tmp"


def _is_temp_of(entry: str, name: str) -> bool:
    """Whether folder entry ``entry`` is an in-flight :func:`atomic_write_bytes` of ``name``."""
    return entry.startswith(f".{name}.") and entry.endswith(_TMP_SUFFIX)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``.

    A failure (disk full, read-only, file-size limit) removes the temporary file and raises
    :class:`StorageError` naming ``path`` and the free space; the final path keeps its old
    content (or stays absent): nothing is ever half-written there.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if is_storage_error(exc):
            raise storage_error(exc, path) from exc  # type: ignore[arg-type]
        raise


def sweep_temp_files(root: Path) -> list[Path]:
    """Remove temporary files left by killed writers (``.NAME.*.tmp``, ``.report-pdf.*``).

    Call only while holding the run directory's main lock (no live writer then).
    """
    removed: list[Path] = []
    root = Path(root)
    for folder in (root, root / SHARD_DIR, root / "gallery"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and (
                p.name.endswith(".tmp") or p.name.startswith(".report-pdf.")
            ):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


# -- run-directory locks -----------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except OSError:
        return {}
    try:
        obj = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "another process"
    parts = [f"PID {holder.get('pid')}"]
    if holder.get("name") and holder.get("name") != MAIN_LOCK:
        parts.insert(0, f"writer {holder['name']}:")
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts.append(f"on {holder['host']}")
    if holder.get("command"):
        parts.append(f"({str(holder['command'])[:120]})")
    if holder.get("started"):
        parts.append(f"since {holder['started']}")
    return " ".join(parts)


class RunLock:
    """An OS-level lock on a run directory, held for a whole run and released on any exit.

    Usage::

        with RunLock(run_dir, command="auditor run ..."):          # plain run or finalize
            ...
        with RunLock.for_shard(run_dir, i, n, command=...):        # shard job / torchrun rank
            ...

    Locks are ``fcntl.flock`` locks on files under ``<run>/locks/``, so the kernel releases
    them when the holding process exits for any reason (SIGKILL included); each lock file
    holds JSON ``{pid, host, command, started}`` of its current holder, for messages.

    * ``name="main"`` (a plain ``auditor run``, ``auditor finalize``, ``auditor demo``): an
      exclusive lock on ``locks/main.lock``. It fails while any other main holder or any
      writer lock holder is alive.
    * any other name, e.g. ``shard-I-of-N`` (:meth:`for_shard`, also used for torchrun rank
      r of world size N): a SHARED lock on ``locks/main.lock`` plus an exclusive lock on
      ``locks/<name>.lock``. Writers with different names coexist; the same writer twice, or
      a writer while a plain run/finalize holds the main lock, fails. So a finalize (main,
      exclusive) refuses while any writer is alive.

    A failure raises :class:`auditor.errors.RunLockedError` (CLI exit code 2) naming the
    holder's PID, host and command. A lock file left by a dead process (its PID no longer
    runs) is stale: the kernel already released it, the next holder takes it over and
    :attr:`took_over` records the previous holder (logged). Locks are per open file: a second
    ``RunLock`` on the same name in the same process also fails, except that re-entering
    the SAME name from the same process through :meth:`acquire` on one object is a no-op.

    Limitations: ``flock`` is advisory and node-local on some network file systems (NFSv3
    without lockd); on such a file system concurrent runs from different hosts are not caught.
    """

    def __init__(self, run_dir: str | Path, name: str = MAIN_LOCK, *, command: str | None = None):
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"`name` must be a plain lock name such as 'main', got {name!r}")
        self.run_dir = Path(run_dir)
        self.name = name
        self.command = command
        self.took_over: dict[str, Any] | None = None
        self._fds: list[int] = []

    @classmethod
    def for_shard(
        cls, run_dir: str | Path, index: int, count: int, *, command: str | None = None
    ) -> RunLock:
        """The writer lock of shard ``index`` of ``count`` (``locks/shard-I-of-N.lock``)."""
        if isinstance(index, bool) or isinstance(count, bool) or not 0 <= index < count:
            raise ValueError(f"shard must satisfy 0 <= index < count, got {index}/{count}")
        return cls(run_dir, f"shard-{index}-of-{count}", command=command)

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_DIR / f"{self.name}.lock"

    @property
    def main_path(self) -> Path:
        return self.run_dir / LOCK_DIR / f"{MAIN_LOCK}.lock"

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def _open(self, path: Path) -> int:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as exc:
            if is_storage_error(exc):
                raise storage_error(exc, path) from exc
            raise

    def _lock(self, path: Path, mode: int) -> int:
        fd = self._open(path)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked_error(path) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _locked_error(self, path: Path) -> RunLockedError:
        holders = []
        if path == self.main_path and self.name == MAIN_LOCK:
            main = _read_holder(path)
            if main and _pid_alive(int(main.get("pid", -1))):
                holders.append(main)
            holders += [h for _, h in held_writer_locks(self.run_dir)]
        else:
            holders.append(_read_holder(path))
        holders = holders or [{}]
        what = "its main lock" if path == self.main_path else f"lock {path.name}"
        if self.name == MAIN_LOCK and holders and holders[0].get("name") not in (None, MAIN_LOCK):
            what = "shard writers are running"
        return RunLockedError(
            f"--out {self.run_dir} is in use ({what}: held by "
            + "; ".join(_describe(h) for h in holders[:4])
            + (f" and {len(holders) - 4} more" if len(holders) > 4 else "")
            + "): wait for it to finish or choose another --out",
            holders[0],
        )

    def acquire(self) -> RunLock:
        """Take the lock (non-blocking) or raise :class:`RunLockedError`; returns ``self``."""
        if self._fds:
            return self
        if self.name == MAIN_LOCK:
            previous = _read_holder(self.main_path) if self.main_path.exists() else {}
            fd = self._lock(self.main_path, fcntl.LOCK_EX)
            self._fds = [fd]
            target_fd, target = fd, self.main_path
        else:
            main_fd = self._lock(self.main_path, fcntl.LOCK_SH)
            try:
                previous = _read_holder(self.path) if self.path.exists() else {}
                fd = self._lock(self.path, fcntl.LOCK_EX)
            except BaseException:
                os.close(main_fd)
                raise
            self._fds = [main_fd, fd]
            target_fd, target = fd, self.path
        if previous.get("pid") is not None and previous.get("pid") != os.getpid():
            self.took_over = previous  # the kernel released it: its holder is gone
            log.info("taking over the stale lock %s of %s", target, _describe(previous))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command or " ".join(sys.argv),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": self.name,
        }
        try:
            os.ftruncate(target_fd, 0)
            os.pwrite(target_fd, json.dumps(record).encode("utf-8"), 0)
        except OSError as exc:  # a full disk must not leave the lock held
            self.release()
            if is_storage_error(exc):
                raise storage_error(exc, target) from exc
            raise
        return self

    def release(self) -> None:
        """Release the lock (idempotent). The lock file stays; its content is cleared."""
        fds, self._fds = self._fds, []
        for i, fd in enumerate(reversed(fds)):
            if i == 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is released with its object
        with contextlib.suppress(Exception):
            self.release()


def lock_is_held(path: Path) -> bool:
    """Whether some process (this one included, through another open file) holds ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken just now
    return False


def held_writer_locks(run_dir: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, holder record)]`` of the writer (non-main) locks currently held in ``run_dir``.

    ``auditor finalize`` uses it to name the shard jobs still running.
    """
    folder = Path(run_dir) / LOCK_DIR
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.lock")):
        if p.stem != MAIN_LOCK and lock_is_held(p):
            out.append((p.stem, _read_holder(p)))
    return out


def claim_output_dir(root: Path, marker_name: str, what: str) -> Path:
    """Check that ``root`` can be an output folder of ours, create it and mark it.

    Refused (:class:`auditor.errors.StorageError`, exit code 2): a path that is a file, a
    folder that cannot be written (the free space is named), and a NON-EMPTY folder without
    our marker ``marker_name`` (issue 27: a folder that merely holds a ``summary.json`` is not
    ours; the user's files there would be mixed with, or overwritten by, our outputs).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StorageError(f"--out {root} is a file, not a folder; choose a folder")
    if root.is_dir():
        try:
            entries = [p.name for p in root.iterdir()]
        except OSError as exc:
            raise storage_error(exc, root) from exc
        # a concurrent writer's marker in flight (atomic_write_bytes' temp file) is ours too:
        # parallel shard jobs / torchrun ranks create the folder at the same moment
        in_flight = any(_is_temp_of(n, marker_name) for n in entries)
        if entries and not in_flight and marker_name not in entries:
            shown = ", ".join(sorted(entries)[:3]) + (", …" if len(entries) > 3 else "")
            raise StorageError(
                f"--out {root} is a non-empty folder that is not a cam-auditor {what} (no "
                f"{marker_name} marker; it holds {shown}); choose an empty or new folder, so "
                f"none of your files is overwritten"
            )
    else:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, root) from exc
    marker = root / marker_name
    if not marker.exists():
        atomic_write_bytes(marker, f"cam-auditor {what}\n".encode())
    elif not os.access(root, os.W_OK):
        raise storage_error(OSError(errno.EACCES, "permission denied"), root)
    return root


def claim_run_dir(run_dir: str | Path) -> Path:
    """Check that ``run_dir`` can be a run directory of ours, create it and mark it
    (:func:`claim_output_dir` with :data:`RUN_MARKER`: only a folder this tool created, with
    its marker, or an empty/new folder, is accepted)."""
    return claim_output_dir(Path(run_dir), RUN_MARKER, "run directory")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def clean_nan(obj: Any) -> Any:
    """Replace NaN/inf floats by None, recursively (JSON has no NaN; never a fake number)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_nan(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys are NOT used: field order is part of readability)."""
    return (
        json.dumps(
            clean_nan(obj), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False
        )
        + "\n"
    ).encode("utf-8")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj))


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write a Parquet file atomically (deterministic bytes for identical tables)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=True, write_statistics=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class RunStore:
    """One run directory. Creates it; checks fingerprints on resume."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.shards = self.root / SHARD_DIR

    # -- life cycle -----------------------------------------------------------------------
    def prepare(self, fingerprints: Mapping[str, str], *, resume: bool) -> set[int]:
        """Create (or reopen with ``resume``) the run directory; return completed batches.

        Without ``resume`` an existing directory with shards is refused rather than mixed.
        With ``resume`` every fingerprint must match the stored provenance, else
        :class:`ResumeMismatchError` names what changed.
        """
        prov_path = self.root / "provenance.json"
        if resume and prov_path.is_file():
            stored = json.loads(prov_path.read_text("utf-8")).get("fingerprints", {})
            changed = [
                f"{k} (stored {str(stored.get(k))[:16]}…, now {str(v)[:16]}…)"
                for k, v in fingerprints.items()
                if stored.get(k) != v
            ]
            if changed:
                raise ResumeMismatchError(
                    f"--resume refused: {self.root} was made with a different "
                    + ", ".join(changed)
                    + "; use a new --out directory, or --overwrite (without --resume) to "
                    "replace this run"
                )
            return self.completed_batches(validate=True)
        if self.shards.is_dir() and any(self.shards.glob("part-*.parquet")):
            if not resume:
                if (self.root / "summary.json").is_file():
                    raise AuditorInputError(
                        f"--out {self.root} holds a finished audit; choose a new --out, or "
                        f"pass --overwrite to replace it (the old run is kept until the new "
                        f"one finishes)"
                    )
                raise AuditorInputError(
                    f"--out {self.root} holds an unfinished audit; pass --resume to continue "
                    f"it, --overwrite to start over, or choose a new --out"
                )
        self.shards.mkdir(parents=True, exist_ok=True)
        return set()

    def write_provenance(self, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.root / "provenance.json", record)

    def completed_batches(self, *, validate: bool = False) -> set[int]:
        """Numbers of the batches whose row shard exists (the commit point).

        With ``validate`` (``--resume``) a batch counts only when its three files are
        readable: a truncated or corrupt shard (a disk that filled up under another tool, a
        copy cut short) is logged and its batch is computed again instead of failing the run.
        """
        done = set()
        for p in self.shards.glob("part-*.parquet"):
            try:
                b = int(p.stem.split("-")[1])
            except (IndexError, ValueError):
                continue
            if validate:
                problem = self.batch_problem(b)
                if problem:
                    log.warning("--resume: batch %d is recomputed: %s", b, problem)
                    continue
            done.add(b)
        return done

    def batch_problem(self, batch_no: int, *, deep: bool = True) -> str | None:
        """Why the stored batch ``batch_no`` cannot be used, or ``None`` when it is intact.

        ``deep`` reads every CAM array (``--resume``); without it only the Parquet footer,
        the CAM archive's directory (where a truncated or overwritten file fails) and the
        skip list are read: the check ``auditor finalize`` runs on every batch before it
        aggregates, cheap at a million samples.
        """
        import zipfile

        part = self.shards / f"part-{batch_no:05d}.parquet"
        cams = self.shards / f"cams-{batch_no:05d}.npz"
        skipped = self.shards / f"skipped-{batch_no:05d}.json"
        try:
            pq.read_metadata(part)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on bad files
            return f"{part.name} is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
        try:
            if deep:
                with np.load(cams, allow_pickle=False) as z:
                    for key in z.files:
                        z[key]
            else:
                with zipfile.ZipFile(cams) as zf:
                    names = set(zf.namelist())
                if not {"ids.npy", "indices.npy"} <= names:
                    return f"{cams.name} lacks its ids/indices arrays"
        except Exception as exc:  # noqa: BLE001 - zipfile/numpy errors of many types
            return f"{cams.name} is missing or unreadable ({type(exc).__name__})"
        try:
            if not isinstance(json.loads(skipped.read_text("utf-8")), list):
                return f"{skipped.name} is not a list"
        except (OSError, ValueError) as exc:
            return f"{skipped.name} is missing or unreadable ({type(exc).__name__})"
        return None

    # -- shards ---------------------------------------------------------------------------
    def write_batch(
        self,
        batch_no: int,
        rows: pa.Table,
        cams: Mapping[str, np.ndarray],
        ids: list[str],
        indices: list[int],
        skipped: list[dict[str, Any]],
    ) -> None:
        """Write one batch: CAMs, skips, then the row shard (the commit point)."""
        buf = _npz_bytes(
            {"ids": np.asarray(ids, dtype=object).astype(str), "indices": np.asarray(indices)}
            | {f"cam__{m}": a.astype(np.float16) for m, a in cams.items()}
        )
        atomic_write_bytes(self.shards / f"cams-{batch_no:05d}.npz", buf)
        atomic_write_json(self.shards / f"skipped-{batch_no:05d}.json", skipped)
        atomic_write_table(self.shards / f"part-{batch_no:05d}.parquet", rows)

    def batch_numbers(self) -> list[int]:
        return sorted(self.completed_batches())

    def read_rows(self) -> pa.Table:
        """All completed row shards, concatenated and sorted by (index, method)."""
        tables = []
        for b in self.batch_numbers():
            path = self.shards / f"part-{b:05d}.parquet"
            try:
                tables.append(read_samples(path))
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
                raise DataError(
                    f"run directory shard {path} is unreadable ({type(exc).__name__}); rerun "
                    f"with --resume to recompute it"
                ) from exc
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return pa.table({})
        table = pa.concat_tables(tables, promote_options="default")
        return table.sort_by([("index", "ascending"), ("method", "ascending")])

    def read_skipped(self) -> list[dict[str, Any]]:
        """The skip lists of every completed batch (a missing or unreadable one is a
        :class:`DataError`: dropping it would under-count the skipped samples)."""
        out: list[dict[str, Any]] = []
        for b in self.batch_numbers():
            p = self.shards / f"skipped-{b:05d}.json"
            try:
                items = json.loads(p.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(_unreadable(p, exc)) from exc
            if not isinstance(items, list):
                raise DataError(_unreadable(p, TypeError("not a list")))
            out.extend(items)
        return out

    def iter_cams(self, method: str) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, cams [B, h, w] float32) per completed batch for ``method``."""
        for b in self.batch_numbers():
            path = self.shards / f"cams-{b:05d}.npz"
            try:
                with np.load(path, allow_pickle=False) as z:
                    key = f"cam__{method}"
                    got = (
                        (z["indices"], z[key].astype(np.float32))
                        if key in z.files and len(z["indices"])
                        else None
                    )
            except Exception as exc:  # noqa: BLE001 - zipfile/numpy errors of many types
                raise DataError(_unreadable(path, exc)) from exc
            if got is not None:
                yield got

    def load_cams(self, method: str, wanted: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """Low-resolution CAMs of the samples ``wanted`` (dataset indices; ``None`` = all)."""
        want = None if wanted is None else set(int(i) for i in wanted)
        out: dict[int, np.ndarray] = {}
        for idx, cams in self.iter_cams(method):
            for j, i in enumerate(idx.tolist()):
                if want is None or i in want:
                    out[i] = cams[j]
        return out

    def write_samples(self, table: pa.Table) -> Path:
        path = self.root / "samples.parquet"
        atomic_write_table(path, table)
        return path


def _unreadable(path: Path, exc: BaseException) -> str:
    """The one-line refusal for a shard file that cannot be read (names it and the fix)."""
    return (
        f"run directory shard {path} is missing or unreadable ({type(exc).__name__}); rerun "
        f"the job that wrote it with --resume to recompute the batch"
    )


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io

    bio = io.BytesIO()
    np.savez(bio, **dict(arrays))  # type: ignore[arg-type]
    return bio.getvalue()
