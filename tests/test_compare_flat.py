"""``auditor compare`` at scale: no torch import, and the chunked (streamed) pairing and
statistics against the in-memory path (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.report_fixtures import make_run_dir

ROOT = Path(__file__).resolve().parents[1]


def test_compare_does_not_import_torch(tmp_path: Path) -> None:
    """A comparison (statistics, parquet, moved panels, HTML) needs no torch: the import
    floor of ``auditor compare`` is numpy/pyarrow/scipy, not torch's ~500 MB."""
    ra = make_run_dir(tmp_path / "a", seed=0)
    rb = make_run_dir(tmp_path / "b", seed=1)
    code = (
        "import sys, json\n"
        "from auditor.compare import compare_runs\n"
        f"r = compare_runs({str(ra)!r}, {str(rb)!r}, out={str(tmp_path / 'o')!r}, pdf=False)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'n': r.comparison['pairing']"
        "['n_paired'], 'moved': len(r.comparison['moved'])}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] > 0 and got["moved"] > 0
    assert got["torch"] is False
    assert (tmp_path / "o" / "compare.html").is_file()


def test_metrics_names_without_torch() -> None:
    code = (
        "import sys\n"
        "import auditor.metrics as m\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "assert m.METRIC_NAMES[1] == 'background_focus' and 'iou' in m.METRICS\n"
        "assert 'torch' not in sys.modules, 'names'\n"
        "m.energy_in_mask\n"
        "assert 'torch' in sys.modules, 'lazy'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT)}
    )
