"""The HTML report in a real (headless) Chromium: sorting, filtering, images, no network, XSS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from auditor.report import ReportLimits, render_html
from auditor.report.html import slugify
from tests.report_fixtures import XSS_NAME, cached_run_dir

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} not installed (the Makefile installs Debian's chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip)")


@pytest.fixture(scope="module")
def page_info(tmp_path_factory):
    run = cached_run_dir(tmp_path_factory.mktemp("browser") / "run")
    # table_page=4 so that pagination ("show all") is exercised with 6 classes
    render_html(run, limits=ReportLimits(table_page=4))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            dialogs: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))

            def on_dialog(d):
                dialogs.append(d.message)
                d.dismiss()

            page.on("dialog", on_dialog)
            page.goto((run / "report.html").as_uri())
            page.wait_for_load_state("load")
            yield {
                "page": page,
                "errors": errors,
                "requests": requests,
                "dialogs": dialogs,
                "run": run,
            }
        finally:
            browser.close()


def _column_values(page, col: int) -> list[str]:
    return page.eval_on_selector_all(
        "#class-table tbody tr:not([hidden])",
        f"rows => rows.map(r => r.cells[{col}].getAttribute('data-value'))",
    )


def _header_index(page, label: str) -> int:
    return page.eval_on_selector_all(
        "#class-table thead th",
        "ths => ths.findIndex(t => (t.querySelector('button') || t).textContent.trim() === "
        f"{label!r})",
    )


def test_no_console_errors_no_dialog_no_network(page_info):
    page = page_info["page"]
    page.wait_for_timeout(200)
    assert page_info["errors"] == []
    assert page_info["dialogs"] == []
    bad = [u for u in page_info["requests"] if not u.startswith(("data:", "file:"))]
    assert bad == []


def test_xss_class_name_is_text(page_info):
    page = page_info["page"]
    cell = page.locator(f"#class-{slugify(XSS_NAME)} th.cls")
    assert cell.inner_text() == XSS_NAME
    assert page.evaluate("document.scripts.length") == 1


def test_every_image_loaded(page_info):
    page = page_info["page"]
    widths = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert len(widths) >= 8 and all(w > 0 for w in widths)


def test_pagination_and_show_all(page_info):
    page = page_info["page"]
    assert page.locator("#class-table tbody tr:not([hidden])").count() == 4
    page.click("#show-all")
    assert page.locator("#class-table tbody tr:not([hidden])").count() == 6
    assert page.locator("#show-all").is_hidden()


def test_click_header_sorts_numerically(page_info):
    page = page_info["page"]
    if page.locator("#show-all").is_visible():
        page.click("#show-all")
    col = _header_index(page, "Energy in object")
    assert col > 0
    page.locator("#class-table thead th").nth(col).locator("button").click()
    first = [float(v) for v in _column_values(page, col)]
    assert first == sorted(first, reverse=True) and len(first) == 6
    page.locator("#class-table thead th").nth(col).locator("button").click()
    second = [float(v) for v in _column_values(page, col)]
    assert second == sorted(second)
    assert page.locator("#class-table thead th").nth(col).get_attribute("aria-sort") == "ascending"
    page.locator("#class-table thead th").nth(0).locator("button").click()
    names = _column_values(page, 0)  # text sort, ascending on the first click
    assert names.index("circle") < names.index("square") < names.index("triangle")
    assert names.index("triangle") < names.index("x" * 300)


def test_filter_hides_rows(page_info):
    page = page_info["page"]
    page.fill("#class-filter", "tri")
    visible = page.eval_on_selector_all(
        "#class-table tbody tr:not([hidden])", "rows => rows.map(r => r.cells[0].textContent)"
    )
    assert visible == ["triangle"]
    assert "1 of 6" in page.inner_text("#class-count")
    page.fill("#class-filter", "")
    assert page.locator("#class-table tbody tr:not([hidden])").count() == 6


def test_screenshot_artifact(page_info):
    out = Path(__file__).resolve().parents[1] / "test-artifacts"
    out.mkdir(exist_ok=True)
    target = out / "report.png"
    page_info["page"].screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    shutil.copy(page_info["run"] / "report.html", out / "report.html")
