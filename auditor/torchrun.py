"""``python -m auditor.torchrun [torchrun options] run CONFIG ...``: torchrun that keeps
cam-auditor's exit codes (2 bad input, 1 a gate failed) and prints no ChildFailedError
traceback; see :mod:`auditor.audit.launch`."""

from __future__ import annotations

from auditor.audit.launch import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
