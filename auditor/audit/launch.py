"""``python -m auditor.torchrun``: torchrun that keeps cam-auditor's exit codes (issue 23).

``torchrun`` itself turns ANY failed rank into exit 1 and a ``ChildFailedError`` traceback:
a config typo (exit 2 on every rank) would read as "a gate failed", and a failing gate
as a crash. This launcher takes exactly torchrun's arguments (it calls the same
``torch.distributed.run`` parser and ``run``) and exits with the ranks' code:

* rank 0's exit code when it failed (every rank agrees with rank 0 after the barrier, see
  :func:`auditor.audit.distributed.agree_exit_code`), else the first failed rank's;
* a rank killed by a signal: ``128 + signal`` (130 Ctrl-C, 143 SIGTERM);
* no traceback: each rank already printed its one-line error.

``-m auditor`` may be left out: ``python -m auditor.torchrun --standalone --nproc-per-node 2
run CONFIG --out DIR`` inserts it before the first cam-auditor command.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["child_exit_code", "launch", "main", "with_module"]

#: the cam-auditor commands a torchrun launch can run
COMMANDS = ("run", "finalize")


def with_module(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``-m auditor`` inserted before the first command when it names none."""
    argv = list(argv)
    if "-m" in argv or "--module" in argv:
        return argv
    for i, tok in enumerate(argv):
        if tok in COMMANDS:
            return [*argv[:i], "-m", "auditor", *argv[i:]]
    return argv


def child_exit_code(failures: Mapping[int, Any], first_rank: int | None = None) -> int:
    """The launch's exit code from torchrun's ``{rank: ProcessFailure}`` (see module doc)."""
    if not failures:
        return 0

    def code(rank: int) -> int:
        c = int(failures[rank].exitcode)
        return 128 - c if c < 0 else c  # -15 (SIGTERM) -> 143

    if 0 in failures and int(failures[0].exitcode) > 0:
        return code(0)
    rank = first_rank if first_rank in failures else min(failures)
    return code(rank)  # type: ignore[arg-type]


def launch(argv: Sequence[str]) -> int:
    """Run torchrun with ``argv`` (torchrun's own arguments) in this process; the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(with_module(argv))
    try:
        run(args)  # torchrun's own launch (rendezvous, --standalone, restarts), in-process
    except ChildFailedError as exc:
        first = exc.get_first_failure()[0] if exc.failures else None
        return child_exit_code(exc.failures, first)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m auditor.torchrun``; torch's own launcher logs only its
    criticals (the ranks print their own one-line errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-v", "-vv", "--verbose") for a in argv):
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        return launch(argv)
    except KeyboardInterrupt:
        return 130
