"""Subprocess entry point: ``python -m auditor.report._pdf_worker --html H --out P --base-dir D``.

Exit status 0 on success, 3 when the rendering raised :class:`RenderError` (its message is the
last line of stderr), anything else for an unexpected failure (traceback on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from auditor.errors import RenderError
from auditor.report.pdf import WORKER_RENDER_ERROR, write_pdf_in_process


def die_with_parent(parent_pid: int, temp_files: list[Path]) -> None:
    """End this worker (removing ``temp_files``) when its parent process goes away.

    A parent killed with SIGKILL runs no cleanup, so the worker must notice by itself: on
    Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` asks the kernel for a SIGTERM when the parent
    dies; everywhere, a daemon thread also polls ``os.getppid()`` (the worker is re-parented
    when its parent dies). SIGTERM (from either, or from a user) removes the temporary files
    and exits with 143.
    """

    def cleanup_and_exit(*_: Any) -> None:
        for path in temp_files:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        os._exit(143)

    signal.signal(signal.SIGTERM, cleanup_and_exit)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent_pid:  # died before the request above was in place
        cleanup_and_exit()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                cleanup_and_exit()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, convert the HTML file to PDF, map errors to exit statuses."""
    parser = argparse.ArgumentParser(prog="auditor.report._pdf_worker")
    parser.add_argument("--html", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--base-dir", required=True, type=Path)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--attach", action="append", type=Path, default=[])
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid, [args.html, args.out])
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        html_text = args.html.read_text(encoding="utf-8")
        write_pdf_in_process(
            html_text,
            args.out,
            args.base_dir,
            variant=args.variant,
            attachments=tuple(args.attach),
        )
    except RenderError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return WORKER_RENDER_ERROR
    except OSError as exc:  # the output cannot be written: the parent names path + free space
        from auditor.audit.store import is_storage_error
        from auditor.report.storage import WORKER_STORAGE_ERROR

        if not is_storage_error(exc):
            raise
        print(f"errno {exc.errno}", file=sys.stderr)
        return WORKER_STORAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
