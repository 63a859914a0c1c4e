"""The run directory: atomic writes, per-batch shards, resume, provenance.

Layout (docs/run-directory.md): ``shards/part-NNNNN.parquet`` (rows: sample × method),
``shards/cams-NNNNN.npz`` (low-resolution CAMs), ``shards/skipped-NNNNN.json``. A batch is
complete exactly when its ``part-NNNNN.parquet`` exists: it is written last, atomically, after
the CAMs and the skip list of the same batch. ``--resume`` therefore never trusts a half-written
batch, and a run killed at any point loses at most the batch in flight.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from auditor.errors import AuditorInputError, ResumeMismatchError

SHARD_DIR = "shards"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
                    + "; use a new --out directory or run without --resume"
                )
            return self.completed_batches()
        if self.shards.is_dir() and any(self.shards.glob("part-*.parquet")):
            if not resume:
                raise AuditorInputError(
                    f"--out {self.root} already holds an audit; pass --resume to continue it "
                    f"or choose an empty directory"
                )
        self.shards.mkdir(parents=True, exist_ok=True)
        return set()

    def write_provenance(self, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.root / "provenance.json", record)

    def completed_batches(self) -> set[int]:
        done = set()
        for p in self.shards.glob("part-*.parquet"):
            try:
                done.add(int(p.stem.split("-")[1]))
            except (IndexError, ValueError):
                continue
        return done

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
        tables = [
            pq.read_table(self.shards / f"part-{b:05d}.parquet") for b in self.batch_numbers()
        ]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return pa.table({})
        table = pa.concat_tables(tables, promote_options="default")
        return table.sort_by([("index", "ascending"), ("method", "ascending")])

    def read_skipped(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for b in self.batch_numbers():
            p = self.shards / f"skipped-{b:05d}.json"
            if p.is_file():
                out.extend(json.loads(p.read_text("utf-8")))
        return out

    def iter_cams(self, method: str) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, cams [B, h, w] float32) per completed batch for ``method``."""
        for b in self.batch_numbers():
            with np.load(self.shards / f"cams-{b:05d}.npz", allow_pickle=False) as z:
                key = f"cam__{method}"
                if key in z.files and len(z["indices"]):
                    yield z["indices"], z[key].astype(np.float32)

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


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io

    bio = io.BytesIO()
    np.savez(bio, **dict(arrays))  # type: ignore[arg-type]
    return bio.getvalue()
