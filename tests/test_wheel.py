"""The templates ship in the wheel: build it, install it apart from the repo, run the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="hatchling (test extra) builds the wheel")
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("cam_auditor-*.whl")
    return whl


def test_wheel_contains_templates_and_weights(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "auditor/templates/report.html.j2" in names
    assert "auditor/templates/_macros.html.j2" in names
    assert any(n.startswith("auditor/_weights/demo-shortcut") for n in names)


def test_demo_runs_from_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "CI": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import auditor.report.html as h, auditor; print(auditor.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(target)), probe.stdout  # not the repo copy
    res = subprocess.run(
        [sys.executable, "-m", "auditor.cli", "demo", "--out", "run", "--no-pdf", "--limit", "40"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    html = (work / "run" / "report.html").read_text()
    assert "triangle" in html
