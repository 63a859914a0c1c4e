"""The demo's PDF as pages (issue 25): no nearly empty page, legible panels, each picture once.

Page fill is measured on the rendered page: ``pdftoppm`` rasterises each page at 30 dpi and
the fill is the share of the body (between the running header and footer margins of
print.css) down to the lowest inked row. A page whose content stops in its top 15% is a
nearly empty page, allowed only as the last one.

Panel text size in print is measured from the PDF's content streams: each gallery panel is a
900 px image drawn ``w`` pt wide (the ``cm`` matrix at its ``Do``), so its text, drawn
``PANEL_FONT_PX`` px high, prints at ``PANEL_FONT_PX * w / 900`` pt.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pypdf
import pytest
from PIL import Image

from auditor.report.figures import PANEL_FONT_PX

MIN_FILL = 0.15
#: print.css page margins (top, bottom) in mm, and the A4 sides
MARGINS = {"portrait": (20.0, 18.0, 297.0), "landscape": (16.0, 16.0, 210.0)}
PANEL_SIZE = (900, 340)  # auditor.report.figures.gallery_panel's raster


def page_fills(pdf: Path, tmp: Path) -> list[float]:
    """For each page: the lowest inked row of the body as a share of the body's height."""
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm not installed (poppler-utils; `make system-deps`)", pytrace=False)
    subprocess.run(["pdftoppm", "-r", "30", "-gray", str(pdf), str(tmp / "p")], check=True)
    fills = []
    for f in sorted(tmp.glob("p-*.pgm"), key=lambda p: int(p.stem.split("-")[-1])):
        a = np.asarray(Image.open(f))
        h, w = a.shape
        top_mm, bottom_mm, side_mm = MARGINS["portrait" if h > w else "landscape"]
        top, bottom = int(h * top_mm / side_mm), h - int(h * bottom_mm / side_mm)
        inked = np.flatnonzero((a[top:bottom] < 200).any(axis=1))
        fills.append(0.0 if inked.size == 0 else (inked.max() + 1) / (bottom - top))
    return fills


def test_page_fill_measure_on_known_pages(tmp_path: Path) -> None:
    """The measure itself: a blank page is 0, a page inked to mid-body is about 0.5."""
    w, h = 248, 351  # A4 at 30 dpi
    top, bottom = int(h * 20 / 297), h - int(h * 18 / 297)
    pages = [np.full((h, w), 255, np.uint8) for _ in range(2)]
    pages[1][top : top + (bottom - top) // 2, 20:200] = 0
    pages[0][5, :] = 0  # ink in the header band does not count
    imgs = [Image.fromarray(p) for p in pages]
    pdf = tmp_path / "t.pdf"
    imgs[0].save(pdf, save_all=True, append_images=imgs[1:], resolution=30)
    fills = page_fills(pdf, tmp_path)
    assert fills[0] == 0.0
    assert fills[1] == pytest.approx(0.5, abs=0.02)


def test_no_nearly_empty_page_but_the_last(demo_run: Path, tmp_path: Path) -> None:
    fills = page_fills(demo_run / "report.pdf", tmp_path)
    assert len(fills) >= 10
    empty = [(i + 1, round(f, 2)) for i, f in enumerate(fills[:-1]) if f < MIN_FILL]
    assert empty == [], f"nearly empty pages (page, fill) of {len(fills)}: {empty}"


def _drawn_images(reader: pypdf.PdfReader) -> list[tuple[int, int, int, float, str]]:
    """(page, width px, height px, drawn width pt, data hash) of every image drawn."""
    out: list[tuple[int, int, int, float, str]] = []
    for number, page in enumerate(reader.pages, start=1):
        resources = page.get("/Resources")
        if resources is None or "/XObject" not in resources:
            continue
        xobjects = resources["/XObject"]

        def visit(op, args, cm, tm, xobjects=xobjects, number=number):
            if op != b"Do" or args[0] not in xobjects:
                return
            xo = xobjects[args[0]].get_object()
            if xo.get("/Subtype") == "/Image":
                digest = hashlib.sha256(xo.get_data()).hexdigest()
                out.append((number, int(xo["/Width"]), int(xo["/Height"]), float(cm[0]), digest))

        page.extract_text(visitor_operand_before=visit)
    return out


@pytest.fixture(scope="module")
def drawn(demo_run: Path) -> list[tuple[int, int, int, float, str]]:
    return _drawn_images(pypdf.PdfReader(demo_run / "report.pdf"))


def test_panel_text_prints_at_least_6pt(drawn) -> None:
    panels = [d for d in drawn if (d[1], d[2]) == PANEL_SIZE]
    assert len(panels) >= 4
    sizes = [PANEL_FONT_PX * width_pt / PANEL_SIZE[0] for _, _, _, width_pt, _ in panels]
    assert min(sizes) >= 6.0, sorted(set(round(s, 2) for s in sizes))


def test_each_example_panel_drawn_once(drawn) -> None:
    panels = [d for d in drawn if (d[1], d[2]) == PANEL_SIZE]
    digests = [d[4] for d in panels]
    repeated = {h[:8]: [d[0] for d in panels if d[4] == h] for h in digests if digests.count(h) > 1}
    assert repeated == {}, f"panels drawn more than once (hash: pages): {repeated}"
