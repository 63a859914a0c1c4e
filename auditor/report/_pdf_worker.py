"""Subprocess entry point: ``python -m auditor.report._pdf_worker --html H --out P --base-dir D``.

Exit status 0 on success, 3 when the rendering raised :class:`RenderError` (its message is the
last line of stderr), anything else for an unexpected failure (traceback on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from auditor.errors import RenderError
from auditor.report.pdf import WORKER_RENDER_ERROR, write_pdf_in_process


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, convert the HTML file to PDF, map errors to exit statuses."""
    parser = argparse.ArgumentParser(prog="auditor.report._pdf_worker")
    parser.add_argument("--html", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--base-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        html_text = args.html.read_text(encoding="utf-8")
        write_pdf_in_process(html_text, args.out, args.base_dir)
    except RenderError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return WORKER_RENDER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
