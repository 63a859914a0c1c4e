"""A report file that cannot be written (full disk, quota, file-size limit, read-only folder)
is a failed report, exit 3, not bad input (issue 27): the results are already on disk and
``auditor report RUN_DIR`` renders again once there is room.

The one line names the file and the free space of its file system, as for the run's own files
(:func:`auditor.audit.store.storage_error`); nothing is left half-written at a final path.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from auditor.errors import RenderError, StorageError

#: Exit status of the PDF worker when its output could not be written; stderr's last line is
#: ``errno N``.
WORKER_STORAGE_ERROR = 5


def report_write_error(exc: OSError, path: Path) -> RenderError:
    """The :class:`RenderError` for ``exc`` raised while writing the report file ``path``."""
    from auditor.audit.store import storage_error

    return RenderError(f"report not written: {storage_error(exc, Path(path))}")


def worker_write_error(returncode: int, stderr: str, out_pdf: Path) -> RenderError | None:
    """The error for a PDF worker that could not write ``out_pdf`` (its status
    :data:`WORKER_STORAGE_ERROR`, or killed by SIGXFSZ: a file-size limit whose signal is not
    ignored), else ``None``."""
    if returncode == -getattr(signal, "SIGXFSZ", -1):
        return report_write_error(OSError(errno.EFBIG, "File too large"), out_pdf)
    if returncode != WORKER_STORAGE_ERROR:
        return None
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    code = int(last.split()[-1]) if last.startswith("errno ") and last.split()[-1].isdigit() else 0
    return report_write_error(OSError(code or errno.EIO, "write failed"), out_pdf)


@contextmanager
def report_writes(default: Path) -> Iterator[None]:
    """Turn a storage failure inside the block into :class:`RenderError` (CLI exit 3) naming
    the file (``default`` when the error names none) and the free space."""
    from auditor.audit.store import is_storage_error

    try:
        yield
    except RenderError:
        raise
    except StorageError as exc:  # atomic_write_bytes: already names the path and free space
        raise RenderError(f"report not written: {exc}") from exc
    except OSError as exc:
        if not is_storage_error(exc):
            raise
        raise report_write_error(exc, Path(exc.filename or default)) from exc
