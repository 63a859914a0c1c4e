"""Path safety for every dataset reader.

Paths read from annotation files (manifests, COCO ``file_name``, VOC ``<filename>``) are
untrusted: a manifest must not be able to make the auditor read ``/etc/passwd`` or
``../../secrets.png``. :func:`safe_join` is the single gate every reader goes through BEFORE a
file is opened.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from auditor.errors import UnsafePathError

__all__ = ["ESCAPE_REASON", "safe_join"]

#: Prefix of every :class:`UnsafePathError` message and of the matching skip reason.
ESCAPE_REASON = "path escapes dataset root"


def safe_join(root: Path, relative: str | Path) -> Path:
    """Join ``relative`` onto ``root`` and return the resolved path, refusing any escape.

    Rules, checked in this order, all before anything is read:

    1. ``relative`` must be a non-empty string without NUL bytes.
    2. Backslashes are treated as separators (a manifest written on Windows must not smuggle
       ``..\\x.png`` past the check).
    3. Absolute paths (``/x``, ``C:/x``, ``//server/x``) are rejected.
    4. After lexical normalisation the path must not start with ``..``.
    5. After resolving symlinks (``Path.resolve``), the result must lie inside the resolved
       ``root``: a symlink inside the dataset that points outside it is rejected.

    Returns:
        The resolved absolute path (which may not exist; callers report missing files).

    Raises:
        UnsafePathError: the message starts with ``"path escapes dataset root"``.
    """
    text = str(relative)
    if not text or "\x00" in text:
        raise UnsafePathError(f"{ESCAPE_REASON}: invalid path {text!r}")
    text = text.replace("\\", "/")
    if text.startswith("/") or (len(text) >= 2 and text[1] == ":"):
        raise UnsafePathError(f"{ESCAPE_REASON}: absolute path {str(relative)!r}")
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise UnsafePathError(f"{ESCAPE_REASON}: {str(relative)!r}")
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / normal).resolve()
    if candidate != root_resolved and not candidate.is_relative_to(root_resolved):
        raise UnsafePathError(
            f"{ESCAPE_REASON}: {str(relative)!r} resolves to {candidate} outside {root_resolved}"
        )
    return candidate
