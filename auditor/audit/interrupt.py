"""Ctrl-C for the command line (issue 23): the first stops after the current batch, the second
ends the process at once, and neither prints a traceback.

* :func:`install` (the CLI, main thread only) puts :func:`_on_sigint` on SIGINT.
* First SIGINT while the batch loop runs (inside :func:`batch_loop`): one line on stderr, a flag
  set, nothing raised; the loop calls :func:`stop_if_requested` after each batch it has
  written, which raises :class:`KeyboardInterrupt` there (the CLI: exit 130, "completed
  batches are kept"). A batch is never cut in half, so ``--resume`` recomputes nothing.
* First SIGINT anywhere else (loading the model, finalising, rendering): a
  :class:`KeyboardInterrupt` at once, as Python does by default; the ``finally`` blocks
  (locks, temporary files) run while it unwinds.
* Second SIGINT: one line and ``os._exit(130)``. No Python code runs after it, so no
  traceback can be printed from a half-unwound stack or an interpreter shutdown; the run's
  ``flock`` locks are released by the kernel, the batches already written stay on disk (each
  is written atomically), and ``--resume`` continues from them.
* Forked DataLoader workers inherit the handler and get the terminal's Ctrl-C too: there it does
  nothing (the main process stops the loop and ends them).

Nothing here imports torch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_INTERRUPTED = 130
FIRST_LINE = (
    "auditor: interrupt: stopping after the current batch (completed batches are kept); "
    "press Ctrl-C again to quit now\n"
)
SECOND_LINE = (
    "auditor: interrupted again: quitting now (completed batches are kept; use --resume)\n"
)

_state: dict[str, Any] = {"requested": False, "loops": 0, "pid": None}


def _write(text: str) -> None:
    """One line on stderr from a signal handler: ``os.write`` (no buffered stream, so it is
    safe even when the handler interrupts a ``print``)."""
    try:
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
    except (OSError, ValueError, AttributeError):  # stderr closed or replaced
        pass


def _on_sigint(signum: int, frame: Any) -> None:
    if _state["pid"] is not None and os.getpid() != _state["pid"]:
        return  # a forked DataLoader worker (same process group): the main process decides
    if _state["requested"]:
        _write(SECOND_LINE)
        os._exit(EXIT_INTERRUPTED)
    _state["requested"] = True
    if _state["loops"] > 0:
        _write(FIRST_LINE)
        return
    raise KeyboardInterrupt


def install() -> Callable[[], None]:
    """Put the two-step handler on SIGINT (main thread only); return a function restoring the
    previous handler (and clearing the state) for in-process callers such as tests."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)
    reset()
    _state["pid"] = os.getpid()
    signal.signal(signal.SIGINT, _on_sigint)

    def restore() -> None:
        reset()
        try:
            signal.signal(signal.SIGINT, previous)
        except (ValueError, TypeError):  # not restorable (set from C)
            pass

    return restore


def reset() -> None:
    """Forget an earlier interrupt request (a new command starts clean)."""
    _state["requested"] = False
    _state["loops"] = 0


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`install`."""
    return bool(_state["requested"])


@contextmanager
def batch_loop() -> Iterator[None]:
    """While inside: a first Ctrl-C only asks the loop to stop after its current batch."""
    _state["loops"] += 1
    try:
        yield
    finally:
        _state["loops"] -= 1


def stop_if_requested() -> None:
    """Raise :class:`KeyboardInterrupt` if Ctrl-C was pressed (called between batches)."""
    if _state["requested"]:
        raise KeyboardInterrupt
