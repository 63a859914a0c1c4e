"""Audits that outgrow one process: shard jobs and ``torchrun`` (DESIGN 4.5).

Work is split **by batch**. The run's batches are the chunks ``[0, B), [B, 2B), ...`` of the
evaluated indices, exactly as in a single-process run; shard ``I`` of ``N`` owns the batches
``b`` with ``b mod N == I``. Every batch's result depends only on its own samples and on
seeds derived from the batch number (interventions, faithfulness subset, inference-copy probes),
so a batch computed by any shard is the batch a single process would write, and the union of
the shards is the single-process run. No sampler pads or drops samples.

Two ways to run the shards:

* ``auditor run CONFIG --out DIR --shard I/N`` (Slurm job arrays, Kubernetes indexed Jobs):
  each job writes its batches into the shared run directory, then ``auditor finalize DIR``
  checks that all ``N`` shards are complete and agree (fingerprints of config, model,
  annotations, settings and tool version) and writes the summary and reports.
* ``torchrun --nproc-per-node N auditor run CONFIG --out DIR``: rank ``r`` of world size ``W``
  is shard ``r/W``; NCCL on CUDA (``LOCAL_RANK`` picks the device), gloo on CPU. After a
  barrier rank 0 finalises and broadcasts its exit code, which every rank returns. When
  torchrun restarts the group (``TORCHELASTIC_RESTART_COUNT > 0``) every rank resumes from its
  completed batches.

Each shard records itself in ``shards/shard-I-of-N.json`` (fingerprints, owned batches,
status ``running`` → ``complete``); a single-process run records ``shard-0-of-1.json``, so
``auditor finalize`` also re-finalises an ordinary run directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from auditor.errors import AuditorInputError

_SHARD_RE = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")  # ASCII digits only
_MANIFEST_RE = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")
#: How many missing/unfinished shards a refusal names (then "and K more").
_LISTED = 10
#: How long ranks wait for each other (rank 0's finalisation of a large run takes minutes).
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class ShardSpec:
    """Which part of the run this process computes: shard ``index`` of ``count``.

    ``mode``: ``"single"`` (one process, everything), ``"shard"`` (``--shard I/N``: compute
    and stop; ``auditor finalize`` later) or ``"torchrun"`` (rank ``index`` of ``count``;
    rank 0 finalises). ``local_rank``: torchrun's ``LOCAL_RANK`` (the CUDA device index).
    """

    index: int = 0
    count: int = 1
    mode: str = "single"
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise AuditorInputError(
                f"--shard must be I/N with 0 <= I < N, got {self.index}/{self.count}"
            )
        if self.mode not in ("single", "shard", "torchrun"):
            raise ValueError(f"`mode` must be single, shard or torchrun, got {self.mode!r}")

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def manifest_name(self) -> str:
        return f"shard-{self.index}-of-{self.count}.json"

    def owns(self, batch_no: int) -> bool:
        """True when batch ``batch_no`` belongs to this shard (``b mod N == I``)."""
        return batch_no % self.count == self.index

    def batches(self, n_batches: int) -> list[int]:
        return [b for b in range(n_batches) if self.owns(b)]


def parse_shard(text: str) -> ShardSpec:
    """``"I/N"`` → :class:`ShardSpec` (mode ``"shard"``); a clear error otherwise."""
    m = _SHARD_RE.match(str(text))
    if not m:
        raise AuditorInputError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise AuditorInputError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return ShardSpec(index, count, "shard")


def torchrun_env(environ: Mapping[str, str] | None = None) -> ShardSpec | None:
    """The rank of this process when started by torchrun (``RANK``/``WORLD_SIZE`` set)."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    values = {}
    for key, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0")):
        raw = env.get(key, default)
        if raw is None or not re.fullmatch(r"\s*[0-9]+\s*", raw):
            raise AuditorInputError(
                f"torchrun environment: {key} must be a non-negative integer, got {raw!r} "
                f"(RANK/WORLD_SIZE are set by torchrun; unset them to run one process)"
            )
        values[key] = int(raw)
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if world < 1 or rank >= world:
        raise AuditorInputError(
            f"torchrun environment: RANK must be in [0, WORLD_SIZE), got RANK={rank} "
            f"WORLD_SIZE={world}"
        )
    return ShardSpec(rank, world, "torchrun", values["LOCAL_RANK"])


def restarted_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True after torchrun restarted the worker group (resume instead of refusing the dir)."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def init_process_group(spec: ShardSpec, device_type: str) -> None:
    """Join torchrun's group: NCCL for CUDA, gloo otherwise (no-op when already joined)."""
    import torch.distributed as dist

    if spec.mode != "torchrun" or dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    env = os.environ
    absent = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if absent:  # torch would raise a ValueError from inside its rendezvous (exit 4)
        raise AuditorInputError(
            f"torchrun environment: RANK={env.get('RANK')} WORLD_SIZE={env.get('WORLD_SIZE')} "
            f"are set but {' and '.join(absent)} {'is' if len(absent) == 1 else 'are'} not: "
            f"start the ranks with torchrun, or unset RANK/WORLD_SIZE to run one process"
        )
    dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)


_STATE = {"past_barrier": False}


def barrier() -> None:
    """Wait until every rank has written its batches (then the ranks agree on the exit code)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        _STATE["past_barrier"] = True


def agree_exit_code(code: int) -> int:
    """Every rank returns rank 0's exit code; tear the process group down (no-op alone).

    Only after :func:`barrier`: a rank that fails before it returns its own code (a collective
    the other ranks never join would hang).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return code
    if not _STATE["past_barrier"]:
        # this rank failed before the barrier: the others are not waiting for a broadcast, so
        # exit with our own code; torchrun sees the failure and stops (or restarts) the group
        return code
    try:
        box: list[Any] = [int(code)]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])
    finally:
        _STATE["past_barrier"] = False
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------------
# shard manifests


def manifest_path(shards_dir: Path, spec: ShardSpec) -> Path:
    return shards_dir / spec.manifest_name


def read_manifests(shards_dir: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """``{(index, count): manifest}`` of every ``shard-I-of-N.json`` in ``shards_dir``."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    if not shards_dir.is_dir():
        return out
    for p in sorted(shards_dir.glob("shard-*-of-*.json")):
        m = _MANIFEST_RE.match(p.name)
        if not m:
            continue
        try:
            rec = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise AuditorInputError(f"{p}: unreadable shard record ({exc})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("fingerprints", {}), dict):
            raise AuditorInputError(
                f"{p}: not a shard record (a JSON object with fingerprints expected, got "
                f"{type(rec).__name__}); rerun that shard with --resume"
            )
        out[(int(m.group(1)), int(m.group(2)))] = rec
    return out


def fingerprint_mismatch(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of the fingerprints that differ between two records (config, model, ...)."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k)]


def check_compatible(
    shards_dir: Path, spec: ShardSpec, fingerprints: Mapping[str, Any], *, resume: bool
) -> None:
    """Refuse to add this shard to a run directory whose other shards differ.

    Shards of a different split (another ``N``), config, model, annotations, settings or
    tool version are refused naming what differs; this shard's own completed record is
    refused without ``--resume`` (a second job with the same index). Batches without any
    shard record (records deleted, or copied in from elsewhere) are refused too: nothing says
    which config made them, and they would be taken as this shard's finished work.
    """
    records = read_manifests(shards_dir)
    if not records and next(shards_dir.glob("part-*.parquet"), None) is not None:
        raise AuditorInputError(
            f"--out {shards_dir.parent} holds computed batches but no shard records "
            f"(shards/shard-I-of-N.json): nothing says which config or model made them; use a "
            f"new --out directory"
        )
    for (i, n), rec in records.items():
        if n != spec.count:
            raise AuditorInputError(
                f"--out {shards_dir.parent} holds shards of a {n}-way split (shard {i}/{n}); "
                f"this run is {spec.label}: use a new --out directory"
            )
        diff = fingerprint_mismatch(rec.get("fingerprints", {}), fingerprints)
        if diff:
            raise AuditorInputError(
                f"--out {shards_dir.parent}: shard {i}/{n} was made with a different "
                f"{', '.join(diff)}; shards of different configs or models cannot be mixed"
            )
        if i == spec.index and not resume:
            raise AuditorInputError(
                f"--out {shards_dir.parent} already holds shard {spec.label}; pass --resume to "
                f"continue it or choose an empty directory"
            )


def check_complete(
    shards_dir: Path, *, completed_batches: set[int]
) -> tuple[list[dict[str, Any]], int]:
    """Check that a run directory's shards are all present, complete and compatible.

    Returns (the manifests ordered by shard index, the shard count). Raises
    :class:`AuditorInputError` naming the missing or incomplete shards, the shards that
    disagree on fingerprints, and batches that a complete shard lists but that are absent.
    """
    found = read_manifests(shards_dir)
    if not found:
        raise AuditorInputError(
            f"{shards_dir.parent}: no shard records in {shards_dir} (not a run directory, or "
            f"no shard job has started yet)"
        )
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise AuditorInputError(
            f"{shards_dir.parent}: shards of different splits "
            f"({', '.join(f'N={n}' for n in counts)}); they cannot be combined"
        )
    n = counts[0]
    ref = found[min(found)]
    # N may be huge (a typo such as --shard 0/100000000): never enumerate range(N)
    n_missing = n - len(found)
    missing: list[str] = []
    for i in range(n):
        if len(missing) >= _LISTED or len(missing) >= n_missing:
            break
        if (i, n) not in found:
            missing.append(f"{i}/{n}")
    incomplete = [
        f"{i}/{n}" for (i, _), r in sorted(found.items()) if r.get("status") != "complete"
    ]
    if missing or incomplete:
        parts = []
        if missing:
            more = f" and {n_missing - len(missing):,} more" if n_missing > len(missing) else ""
            parts.append("missing shard(s) " + ", ".join(missing) + more)
        if incomplete:
            more = f" and {len(incomplete) - _LISTED} more" if len(incomplete) > _LISTED else ""
            parts.append("unfinished shard(s) " + ", ".join(incomplete[:_LISTED]) + more)
        raise AuditorInputError(
            f"{shards_dir.parent}: cannot finalise: {'; '.join(parts)} "
            f"(run `auditor run CONFIG --out DIR --shard I/{n}` for each, --resume to continue)"
        )
    for (i, _), rec in sorted(found.items()):
        diff = fingerprint_mismatch(rec.get("fingerprints", {}), ref.get("fingerprints", {}))
        if diff:
            raise AuditorInputError(
                f"{shards_dir.parent}: shard {i}/{n} was made with a different "
                f"{', '.join(diff)} than shard {min(found)[0]}/{n}; refusing to combine them"
            )
        for key in ("n_batches", "n_samples"):
            if rec.get(key) != ref.get(key):
                raise AuditorInputError(
                    f"{shards_dir.parent}: shard {i}/{n} covers {key} = {rec.get(key)}, "
                    f"shard {min(found)[0]}/{n} {ref.get(key)}; refusing to combine them"
                )
    absent = [b for b in range(int(ref.get("n_batches", 0))) if b not in completed_batches]
    if absent:
        owners = sorted({b % n for b in absent})
        raise AuditorInputError(
            f"{shards_dir.parent}: {len(absent)} batch(es) missing (e.g. batch {absent[0]}) "
            f"from shard(s) {', '.join(f'{i}/{n}' for i in owners)} marked complete; rerun "
            f"them with --resume"
        )
    n_batches = int(ref.get("n_batches", 0))
    extra = sorted(b for b in completed_batches if b >= n_batches)
    if extra:  # not from these shards (copied in): they would be aggregated with the rest
        raise AuditorInputError(
            f"{shards_dir.parent}: {len(extra)} batch(es) beyond the {n_batches} these shards "
            f"cover (e.g. shards/part-{extra[0]:05d}.parquet): not made by them; remove them "
            f"or use a new --out directory"
        )
    return [found[(i, n)] for i in range(n)], n


def owned_todo(spec: ShardSpec, n_batches: int, done: Sequence[int] | set[int]) -> list[int]:
    """This shard's batches that still need computing, in order."""
    finished = set(done)
    return [b for b in spec.batches(n_batches) if b not in finished]
