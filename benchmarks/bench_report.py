"""Report rendering at scale: 50,000 samples, 1,000 classes (not a test).

Builds a synthetic run directory with ``tests/report_fixtures.py``, times ``render_html`` and
``render_pdf`` (each builds its own context, as the CLI would), prints the results and writes
the "## Report rendering" section of ``docs/performance.md`` (other sections are kept).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_report.py [--classes 1000] [--per-class 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.report import render_html, render_pdf  # noqa: E402
from tests.report_fixtures import make_run_dir  # noqa: E402

SECTION = "## Report rendering"


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the PDF worker)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_section(doc: Path, body: str) -> None:
    """Replace (or append) only the '## Report rendering' section of ``doc``."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Performance\n"
    block = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = parser.parse_args()
    n_samples = args.classes * args.per_class
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        t0 = time.perf_counter()
        names = [f"class {i:04d}" for i in range(args.classes)]
        run = make_run_dir(
            Path(tmp) / "run",
            class_names=names,
            shortcut_classes=names[::5],
            n_per_class=args.per_class,
            methods=("gradcam", "cam"),
            gallery_classes=25,
            n_skipped=500,
            image_size=64,
        )
        t_fixture = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), _cpu()
        html = render_html(run)
        t_html, c_html = time.perf_counter() - t0, _cpu() - c0
        t0, c0 = time.perf_counter(), _cpu()
        pdf = render_pdf(run)
        t_pdf, c_pdf = time.perf_counter() - t0, _cpu() - c0
        html_mb = html.stat().st_size / 1e6
        pdf_mb = pdf.stat().st_size / 1e6
        try:
            import pypdf

            pages = len(pypdf.PdfReader(pdf).pages)
        except Exception:  # noqa: BLE001 - page count is informative only
            pages = -1
    total = t_html + t_pdf
    cpu = c_html + c_pdf
    ok = cpu < 60 and pdf_mb < 20
    verdict = (
        f"target < 60 s, PDF < 20 MB: {'met' if ok else 'NOT met'} on CPU time"
        f"{'' if total < 60 else ' (wall time over 60 s: machine shared)'}"
    )
    body = f"""
`benchmarks/bench_report.py`: synthetic run with {n_samples:,} samples × 2 methods,
{args.classes:,} classes (1 in 5 flagged, 25 galleries), 500 skipped samples.
Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}
One run; load average at the end {load_average()} (other jobs shared the machine when
the load exceeds the core count: CPU time is the figure that does not depend on them).
Default `ReportLimits`: the PDF lists the 200 highest-risk classes, the HTML all 1,000.

| step | wall time | CPU time | output |
|---|---|---|---|
| build fixture (not part of the report) | {t_fixture:.1f} s | | |
| `render_html` | {t_html:.1f} s | {c_html:.1f} s | {html_mb:.1f} MB |
| `render_pdf` (subprocess) | {t_pdf:.1f} s | {c_pdf:.1f} s | {pdf_mb:.1f} MB, {pages} pages |
| **total** | **{total:.1f} s** | **{cpu:.1f} s** | {verdict} |
"""
    print(body)
    if not args.no_write:
        write_section(ROOT / "docs" / "performance.md", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
