"""Progress on stderr for every long step (issue 23): a bar on a terminal, lines elsewhere.

* :func:`bar`: the batch loop's progress. On a terminal a tqdm bar; when stderr is not a
  terminal (CI logs, ``> run.log 2>&1``, a pipe) plain lines, each starting with
  ``[auditor] `` (``[auditor] auditing: 50/200 images (25%), 12 s``), at each tenth of the
  work and at least every 30 s, and a last line at the end: a log never fills with carriage
  returns, and a silent log never means a hang.
* :func:`phase`: one line when a named phase starts (``analysis``, ``clustering``,
  ``gallery``, ``rendering``, ``pdf``, ``comparison``), so the minutes after the last batch
  are never silent.

Who decides: :func:`configure` (the CLI: on unless ``--quiet`` / ``--no-progress``) or, when
nothing was configured (the Python API), on only when stderr is a terminal outside CI. An
explicit ``progress=`` argument of an API call wins for its loop. Progress never goes to
stdout: stdout carries the command's result (the end summary, ``auditor gates``), which
scripts read.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["PREFIX", "LineBar", "bar", "configure", "configured", "is_enabled", "phase"]

_STATE: dict[str, bool | None] = {"enabled": None}

#: what every progress line starts with (errors start with ``auditor: error:``)
PREFIX = "[auditor] "

#: a line at least every this many seconds, and at each tenth of the work
LINE_INTERVAL_S = 30.0


def configure(enabled: bool | None) -> None:
    """Switch progress on or off for this process (``None``: automatic, terminal only)."""
    _STATE["enabled"] = enabled


@contextmanager
def configured(enabled: bool | None) -> Iterator[None]:
    """:func:`configure` for the body only (the previous setting is restored)."""
    before = _STATE["enabled"]
    _STATE["enabled"] = enabled
    try:
        yield
    finally:
        _STATE["enabled"] = before


def _stream() -> TextIO:
    return sys.stderr


def _is_tty() -> bool:
    try:
        return bool(_stream().isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def is_enabled(explicit: bool | None = None) -> bool:
    """Whether progress is shown: ``explicit`` if given, else :func:`configure`'s setting,
    else a terminal outside CI."""
    if explicit is not None:
        return explicit
    if _STATE["enabled"] is not None:
        return bool(_STATE["enabled"])
    return _is_tty() and not os.environ.get("CI")


def _emit(text: str) -> None:
    try:
        print(f"{PREFIX}{text}", file=_stream(), flush=True)
    except (OSError, ValueError):  # stderr closed: progress is never worth a failure
        pass


def phase(name: str, detail: str = "") -> None:
    """Announce that phase ``name`` starts (one line on stderr, when progress is on)."""
    if is_enabled():
        _emit(f"{name}" + (f": {detail}" if detail else ""))


class LineBar:
    """A tqdm-like counter that prints whole lines (for logs and pipes).

    A line at start, when the count crosses each tenth of ``total`` or ``LINE_INTERVAL_S``
    seconds passed since the last line, and at :meth:`close` (with the elapsed time).
    """

    def __init__(self, total: int, desc: str, unit: str = "images") -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self._t0 = self._last_t = time.monotonic()
        self._next_tenth = 1
        self._closed = False
        _emit(f"{desc}: 0/{self.total} {unit}")

    def _line(self) -> str:
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        return (
            f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, "
            f"{time.monotonic() - self._t0:.0f} s"
        )

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        now = time.monotonic()
        tenth = (10 * self.n) // self.total if self.total else 0
        if tenth >= self._next_tenth or now - self._last_t >= LINE_INTERVAL_S:
            self._next_tenth = tenth + 1
            self._last_t = now
            if self.n < self.total:
                _emit(self._line())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _emit(self._line() + " (done)" if self.n >= self.total else self._line())


class _NullBar:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += int(k)

    def close(self) -> None:
        pass


def bar(total: int, desc: str, enabled: bool | None = None, unit: str = "images") -> Any:
    """A progress counter with ``update(k)`` and ``close()``: a tqdm bar on a terminal, a
    :class:`LineBar` elsewhere, nothing when progress is off (see :func:`is_enabled`)."""
    if not is_enabled(enabled):
        return _NullBar()
    if _is_tty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1)
    return LineBar(total, desc, unit)
