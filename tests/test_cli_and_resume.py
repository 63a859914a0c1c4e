"""CLI exit codes, --resume after a real SIGKILL, fingerprint checks, determinism, JUnit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parsing our own output
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from auditor.cli import main

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, "CI": "1"},
    )


def test_bad_config_exits_2_with_one_line_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[model]\nfactory = "x:y"\n[data]\nmanifest = "m.csv"\n[audit]\nmethdos = 1\n')
    (tmp_path / "m.csv").write_text("image,label\n")
    res = cli("run", str(cfg), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "methdos" in res.stderr and "bad.toml" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_config_exits_2(tmp_path: Path) -> None:
    assert main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2


def test_gate_failure_exits_1_with_junit_and_the_run_dir_needs_resume(
    tmp_path: Path,
    demo_inputs: Path,
    demo_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One audit (10 images): a failed gate exits 1 and writes junit.xml (gates, then the
    medium/high findings) and the HTML report only; the same command again is refused without
    ``--resume`` (2), and ``--resume`` with another model is refused naming both fingerprints
    (2)."""
    cfg = demo_config(tmp_path, preset="small", gates="max_background_focus = 0.5")
    run = tmp_path / "run"
    args = ["run", str(cfg), "--out", str(run), "--limit", "10", "--no-pdf", "--no-progress"]
    assert main(args) == 1
    s = json.loads((run / "summary.json").read_text())
    assert s["dataset"]["n_evaluated"] == 10
    assert not s["gates"]["passed"]
    failed = [r for r in s["gates"]["results"] if not r["passed"]]
    assert failed and all(r["value"] > 0.5 for r in failed)
    root = ET.parse(run / "junit.xml").getroot()  # noqa: S314
    gates, findings = root.findall("testsuite")  # gates, then medium/high findings
    assert gates.get("name").startswith("gates") and findings.get("name").startswith("findings")
    assert len(gates.findall("testcase")) == len(s["gates"]["results"])
    assert len(gates.findall(".//failure")) == len(failed)
    action = [f for f in s["findings"] if f["severity"] in ("critical", "high", "medium")]
    assert action and len(findings.findall("testcase")) == len(action)
    assert (run / "report.html").is_file()
    assert not (run / "report.pdf").exists()

    assert main(args) == 2  # a finished run folder, no --resume
    other = tmp_path / "other.toml"
    from auditor.demo import weights_path

    other.write_text(
        cfg.read_text().replace(
            str(demo_inputs.parent / "demo-shortcut.pt"), str(weights_path("fixed"))
        )
    )
    capsys.readouterr()
    code = main(["run", str(other), "--out", str(run), "--limit", "10", "--no-pdf", "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "model_sha256" in err and "config_sha256" in err


def _strip_run(summary: dict) -> dict:
    s = dict(summary)
    s.pop("run")
    return s


@contextmanager
def _one_thread() -> Iterator[None]:
    """In-process runs with one intra-op thread, like the subprocesses (``OMP_NUM_THREADS=1``):
    every run of a byte comparison computes with the same threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def test_resume_after_sigkill_matches_uninterrupted_run(
    tmp_path: Path, demo_config: Callable[..., Path]
) -> None:
    """A run killed (SIGKILL, a real process) after 3 of 8 batches and resumed writes the
    same samples.parquet bytes and summary as an uninterrupted run.

    The uninterrupted run is in-process, after other audits in this process and with the
    global RNGs disturbed, the killed one a fresh process: the same config and seed give the
    same outputs whatever the process's history; only the run block's timestamps, timings
    and command line differ."""
    cfg = demo_config(tmp_path, preset="small", batch_size=10, gates="max_background_focus = 0.99")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    base = ["run", str(cfg), "--limit", "80", "--no-pdf", "--no-progress"]
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    with _one_thread():
        assert main([*base, "--out", str(ref)]) == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor.cli", *base, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if len(list((killed / "shards").glob("part-*.parquet"))) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "shards").glob("part-*.parquet")))
    assert 3 <= done < 8
    assert not (killed / "summary.json").exists()

    with _one_thread():
        assert main([*base, "--out", str(killed), "--resume"]) == 0
    a = pq.read_table(ref / "samples.parquet")
    b = pq.read_table(killed / "samples.parquet")
    assert a.num_rows == b.num_rows == 160 and a.schema.equals(b.schema)
    assert (ref / "samples.parquet").read_bytes() == (killed / "samples.parquet").read_bytes()
    sa = json.loads((ref / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert _strip_run(sa) == _strip_run(sb)
    # what differs lives in the "run" block: timestamps, durations, the command line
    changed = {k for k in sa["run"] if sa["run"][k] != sb["run"][k]}
    assert changed <= {"started", "finished", "duration_s", "timings", "command"}, changed
