"""Report rendering at scale: 50,000 and 1,000,000 samples, 1,000 classes (not a test).

Builds a synthetic run directory with ``tests/report_fixtures.py`` for each size, times
``render_html`` and ``render_pdf`` (each builds its own context, as the CLI would) in a fresh
subprocess per size, so its peak RSS (and the PDF worker's) is that of the rendering alone,
prints the results and writes the "## Report rendering" section of ``docs/performance.md``
(other sections are kept).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_report.py [--classes 1000]
        [--samples 50000,1000000] [--methods 3]

``--per-class K`` is the older spelling of ``--samples classes*K``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


METHODS = ("gradcam", "cam", "scorecam", "layercam")
HEADER = (
    "| samples × methods | build fixture (not part of the report) | `render_html` "
    "| `render_pdf` (subprocess) | total | peak RSS | output (HTML / PDF) |"
)


def render_once(run: Path) -> dict[str, float]:
    """Time the two renderers on ``run`` in this process (called in a fresh child)."""
    from auditor.report import render_html, render_pdf

    t0, c0 = time.perf_counter(), _cpu()
    html = render_html(run)
    t_html, c_html = time.perf_counter() - t0, _cpu() - c0
    rss_html = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), _cpu()
    pdf = render_pdf(run)
    t_pdf, c_pdf = time.perf_counter() - t0, _cpu() - c0
    try:
        import pypdf

        pages = len(pypdf.PdfReader(pdf).pages)
    except Exception:  # noqa: BLE001 - page count is informative only
        pages = -1
    return {
        "t_html": t_html,
        "c_html": c_html,
        "t_pdf": t_pdf,
        "c_pdf": c_pdf,
        "html_mb": html.stat().st_size / 1e6,
        "pdf_mb": pdf.stat().st_size / 1e6,
        "pages": pages,
        "rss_html_mb": rss_html,
        "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_pdf_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def build_once(run: Path, n_classes: int, per_class: int, n_methods: int) -> float:
    """Write the fixture (called in a child, so the parent stays small); seconds taken."""
    t0 = time.perf_counter()
    names = [f"class {i:04d}" for i in range(n_classes)]
    make_run_dir(
        run,
        class_names=names,
        shortcut_classes=names[::5],
        n_per_class=per_class,
        methods=METHODS[:n_methods],
        gallery_classes=25,
        n_skipped=500,
        image_size=64,
    )
    return time.perf_counter() - t0


def _child(*args: str) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def measure(tmp: Path, n_classes: int, n_samples: int, n_methods: int) -> dict[str, float]:
    """Build the fixture for one size and render it, each in a fresh child process (this
    process stays small, so the children's peak RSS is their own), return the numbers."""
    per_class = max(1, n_samples // n_classes)
    run = tmp / f"run-{n_samples}"
    built = _child("--build-only", str(run), str(n_classes), str(per_class), str(n_methods))
    parquet_mb = (run / "samples.parquet").stat().st_size / 1e6
    res = _child("--render-only", str(run))
    res.update(
        t_fixture=built["t_fixture"],
        n_samples=per_class * n_classes,
        rows=per_class * n_classes * n_methods,
        parquet_mb=parquet_mb,
    )
    shutil.rmtree(run, ignore_errors=True)
    return res


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument(
        "--samples", default="50000,1000000", help="comma-separated sample counts (one run each)"
    )
    parser.add_argument("--per-class", type=int, default=None, help="one size: classes*K samples")
    parser.add_argument("--methods", type=int, default=3, choices=range(1, len(METHODS) + 1))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    parser.add_argument("--render-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build-only", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only is not None:
        run, k, per, m = args.build_only
        print(json.dumps({"t_fixture": build_once(Path(run), int(k), int(per), int(m))}))
        return 0
    if args.render_only is not None:
        print(json.dumps(render_once(args.render_only)))
        return 0
    sizes = (
        [args.classes * args.per_class]
        if args.per_class is not None
        else [int(x) for x in args.samples.split(",") if x.strip()]
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for n in sizes:
            r = measure(Path(tmp), args.classes, n, args.methods)
            print(
                f"{r['n_samples']:,} samples: html {r['t_html']:.1f} s, pdf {r['t_pdf']:.1f} s, "
                f"peak RSS {r['rss_self_mb']:.0f} MB (PDF worker {r['rss_pdf_worker_mb']:.0f} MB)",
                flush=True,
            )
            results.append(r)
    ok = all(r["c_html"] + r["c_pdf"] < 60 and r["pdf_mb"] < 20 for r in results)
    rows = []
    for r in results:
        total = r["t_html"] + r["t_pdf"]
        cpu = r["c_html"] + r["c_pdf"]
        rows.append(
            f"| {r['n_samples']:,} × {args.methods} ({r['rows']:,} rows, "
            f"{r['parquet_mb']:.0f} MB parquet) | {r['t_fixture']:.1f} s "
            f"| {r['t_html']:.1f} s ({r['c_html']:.1f} s CPU) "
            f"| {r['t_pdf']:.1f} s ({r['c_pdf']:.1f} s CPU) "
            f"| **{total:.1f} s** ({cpu:.1f} s CPU) "
            f"| {max(r['rss_self_mb'], r['rss_pdf_worker_mb']):.0f} MB "
            f"| {r['html_mb']:.1f} MB / {r['pdf_mb']:.1f} MB, {r['pages']} pages |"
        )
    verdict = (
        "target (each size) < 60 s, PDF < 20 MB: "
        f"{'met' if ok else 'NOT met'} on CPU time"
        + (
            ""
            if all(r["t_html"] + r["t_pdf"] < 60 for r in results)
            else " (a wall time is over 60 s: machine shared)"
        )
    )
    table = "\n".join(rows)
    body = f"""
`benchmarks/bench_report.py`: synthetic runs with {args.methods} methods and
{args.classes:,} classes (1 in 5 flagged, 25 galleries, 500 skipped samples), one per size;
each is rendered in a fresh process (peak RSS: the larger of that process's maximum resident
set during `render_html` + `render_pdf` and the PDF worker subprocess's; Linux counts the
pages a child inherits at fork in the child's maximum).
Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}
One run per size; load average at the end {load_average()} (other jobs shared the machine
when the load exceeds the core count: CPU time is the figure that does not depend on them).
Default `ReportLimits`: the PDF lists the 200 highest-risk classes, the HTML all of them;
the energy-vs-confidence scatter draws a deterministic uniform sample of 20,000 points
(`ReportLimits.scatter_points`, the caption says "n of N shown"), the histogram uses every
sample. `samples.parquet` is read for the primary method only, four columns, one row group
at a time.

{HEADER}
|---|---|---|---|---|---|---|
{table}

{verdict}.
"""
    print(body)
    if not args.no_write:
        write_section(ROOT / "docs" / "performance.md", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
