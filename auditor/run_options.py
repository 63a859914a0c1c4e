"""Command-line run options that wrap an audit: ``--overwrite``, ``--baseline``, ``auditor
gates`` and a closed stdout (issues 23 and 27).

* :func:`replacing`: ``--overwrite`` for a finished run: the old run directory is moved aside
  (a sibling ``.<name>.replaced-<pid>``) until the new run finishes, then removed; restored
  when the new run fails or is interrupted. Only a folder this tool created (its marker) is
  ever moved.
* :func:`check_baseline` / :func:`evaluate_baseline`: ``auditor run --baseline RUN``: the
  baseline is checked before any model is loaded, the comparison gates are evaluated after
  the run by :func:`auditor.compare.compare_runs` into ``<run>/baseline-comparison``.
* :func:`gates_listing`: the text of ``auditor gates``.
* :func:`quiet_broken_pipe`: ``auditor ... | head``: a reader that closed the pipe is not a
  bug; stdout is pointed at ``/dev/null`` so the command ends with its real exit code.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from auditor.errors import AuditorInputError

__all__ = [
    "BASELINE_DIR",
    "check_baseline",
    "evaluate_baseline",
    "gates_listing",
    "quiet_broken_pipe",
    "replacing",
]

#: where ``auditor run --baseline`` writes its comparison, inside the new run directory
BASELINE_DIR = "baseline-comparison"


@contextmanager
def replacing(out: Path, enabled: bool) -> Iterator[None]:
    """``--overwrite``: move the finished run at ``out`` aside while the body runs.

    On success the old run is removed; on any exception (including Ctrl-C) the new,
    partial directory is removed and the old run restored. A folder without the run marker
    is never touched (:func:`auditor.audit.store.claim_run_dir` refuses it afterwards), nor one
    whose writer lock is held by a live process.
    """
    from auditor.audit.store import LOCK_DIR, RUN_MARKER, lock_is_held

    out = Path(out)
    if not enabled or not out.is_dir() or not (out / RUN_MARKER).is_file():
        yield
        return
    locks = out / LOCK_DIR
    held = [p.name for p in locks.glob("*.lock") if lock_is_held(p)] if locks.is_dir() else []
    if held:
        raise AuditorInputError(
            f"--overwrite {out}: the run is in use by another process ({held[0]}); wait for it"
        )
    aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if aside.exists():
        raise AuditorInputError(f"--overwrite {out}: {aside} already exists; remove it first")
    os.replace(out, aside)
    try:
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def check_baseline(baseline: Path, out: Path) -> None:
    """Refuse a ``--baseline`` that is not a readable finished run, or is ``out`` itself."""
    from auditor.notebook import load_run

    load_run(baseline)  # AuditorInputError naming the file
    if Path(out).exists() and Path(out).resolve() == Path(baseline).resolve():
        raise AuditorInputError(
            f"--baseline {baseline} is the run directory --out itself; a run compared with "
            f"itself passes every gate: pass the previous model's run"
        )


def evaluate_baseline(baseline: Path, run_dir: Path, gates: Sequence[Any]) -> Any:
    """Compare ``run_dir`` (candidate) with ``baseline`` and evaluate the comparison gates;
    the :class:`~auditor.results.ComparisonResult` (written to ``run_dir/baseline-comparison``)."""
    from auditor.compare import compare_runs

    return compare_runs(
        baseline, run_dir, out=Path(run_dir) / BASELINE_DIR, gates=tuple(gates), pdf=False
    )


def gates_listing() -> str:
    """Every registered gate: key, where it applies, level, what it needs (``auditor gates``)."""
    from auditor.analysis.gate_registry import gate_table

    rows = gate_table()
    head = ("key", "applies", "level", "needs")
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in head]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(r[h].ljust(w) for h, w in zip(head, widths)).rstrip())
    lines.append(
        f"{len(rows)} gates. run: [gates] of a run config; compare: `auditor compare --config` "
        f"or `auditor run --baseline RUN`. [[gates.rule]] tables take any run quantity "
        f"with stat, scope, method and classes. group gates take a number (every [data] groups "
        f"attribute) or a table {{site = 0.8, \"site=B\" = 0.9}}."
    )
    return "\n".join(lines)


def quiet_broken_pipe() -> None:
    """After a :class:`BrokenPipeError` on stdout: send the rest of the output to /dev/null
    (so the interpreter's final flush does not fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
