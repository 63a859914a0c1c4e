"""`make demo` installs only what the demo needs (issue 23): no browser, no test tools.

Read from the Makefile itself with ``make -n -B`` (print every recipe of the target and its
prerequisites as on a fresh machine, run nothing) into a venv path that does not exist, and
from pyproject.toml's dependencies: `make demo` must not mention Chromium, npm, Playwright,
poppler or qpdf, and must install the project without its ``test`` extra; `make test` does
install them (so the check can fail).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
BROWSER_OR_TEST_TOOLS = ("chromium", "npm", "playwright", "poppler", "qpdf", "axe-core")


def _recipes(target: str, tmp_path: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "fresh-venv"  # not there: every recipe of a fresh machine is printed
    proc = subprocess.run(
        ["make", "-n", "-B", target, f"VENV={venv}"], cwd=REPO, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not venv.exists()  # a dry run: nothing was made
    return proc.stdout


def test_make_demo_installs_no_browser_and_no_test_tools(tmp_path: Path) -> None:
    demo = _recipes("demo", tmp_path)
    assert "auditor demo --out runs/demo" in demo
    for tool in BROWSER_OR_TEST_TOOLS:
        assert tool not in demo.lower(), tool
    installs = [ln for ln in demo.splitlines() if "pip install" in ln]
    assert installs and not [ln for ln in installs if "[test" in ln], installs
    deps = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & {"playwright", "pytest", "pypdf", "selenium", "pyppeteer"}, names


def test_make_test_installs_the_browser_and_the_test_tools(tmp_path: Path) -> None:
    test = _recipes("test", tmp_path).lower()
    assert "chromium" in test and "npm" in test and "[test]" in test
