"""Hostile round 4 (issues 23 and 27, the leftovers): Ctrl-C, a full disk while rendering,
tampered summary values, Finer-CAM on confident models and classes of empty maps, and the
fast model-zoo subset at 32 px and channels-last.

Each case asserts the documented behaviour: the exit code (0 ok, 1 gate, 2 bad input, 3 report
failed, 130 interrupted), one line naming the culprit, and that nothing computed was lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from auditor.cli import main
from tests.test_hostile_round3 import _env, tiny_config

# -- 1. Ctrl-C: the first stops after the batch, the second quits; never a traceback ----------
SLOW_MODEL = '''
import os, time
from auditor.demo.shortcut import DemoNet


class SlowNet(DemoNet):
    """The demo network, SLOW_FORWARD_S seconds slower per forward of a whole batch of 4
    (time to press Ctrl-C; the set-up probes use other batch sizes and stay fast)."""

    def forward(self, x):
        if x.shape[0] == 4:
            time.sleep(float(os.environ.get("SLOW_FORWARD_S", "0")))
        return super().forward(x)


def build_model(num_classes=4):
    return SlowNet(num_classes=num_classes)
'''


def _slow_config(tmp_path: Path, demo_inputs: Path) -> Path:
    (tmp_path / "slowmod.py").write_text(SLOW_MODEL, encoding="utf-8")
    cfg = tiny_config(tmp_path, demo_inputs, name="slow.toml")
    text = cfg.read_text("utf-8").replace("auditor.demo:build_model", "slowmod:build_model")
    cfg.write_text(text, encoding="utf-8")
    return cfg


def _parts(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("part-*.parquet")) if (out / "shards").is_dir() else []


def _wait_for_parts(out: Path, proc: subprocess.Popen[str] | None, n: int = 1) -> None:
    deadline = time.monotonic() + 300
    while len(_parts(out)) < n:
        assert proc is None or proc.poll() is None, "the audit ended before its first batch"
        assert time.monotonic() < deadline, "no batch written within 300 s"
        time.sleep(0.05)


def test_first_ctrl_c_stops_after_the_batch_and_keeps_it(
    tmp_path: Path, demo_inputs: Path, capfd: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """In-process (the handler runs in the main thread): one SIGINT during the loop, exit 130,
    the batches written are complete and ``--resume`` finishes the run from them."""
    cfg = _slow_config(tmp_path, demo_inputs)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SLOW_FORWARD_S", "0.3")
    out = tmp_path / "run"

    def press_once() -> None:
        _wait_for_parts(out, None)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_once, daemon=True)
    presser.start()
    code = main(["run", str(cfg), "--out", str(out), "--limit", "24", "--no-pdf", "--no-progress"])
    presser.join(timeout=5)
    err = capfd.readouterr().err
    assert code == 130, err
    assert "stopping after the current batch" in err and "use --resume" in err
    assert "Traceback" not in err
    parts = _parts(out)
    assert 1 <= len(parts) < 6  # 24 images in batches of 4: stopped before the end
    assert all(pq.read_table(p).num_rows == 4 for p in parts)  # no batch cut in half
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's is back
    from auditor.audit.store import RunStore

    done = RunStore(out).completed_batches(validate=True)  # what --resume will keep
    assert done == set(range(len(parts)))
    assert all(RunStore(out).batch_problem(b) is None for b in done)


def test_second_ctrl_c_quits_at_once_with_130_and_one_line(
    tmp_path: Path, demo_inputs: Path
) -> None:
    """A real subprocess and real signals: SIGINT, then SIGINT again during the next slow
    forward: exit 130 at once, one line each, no traceback, the written batches kept."""
    cfg = _slow_config(tmp_path, demo_inputs)
    out = tmp_path / "run"
    env = {**_env(), "SLOW_FORWARD_S": "1.0"}
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor", "run", str(cfg), "--out", str(out), "--limit", "24",
         "--no-pdf", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _wait_for_parts(out, proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # inside the next batch's 1 s forward
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("auditor:")]
    assert len(lines) == 2, err
    assert "stopping after the current batch" in lines[0]
    assert "interrupted again: quitting now" in lines[1]
    parts = _parts(out)
    assert parts and all(pq.read_table(p).num_rows == 4 for p in parts)
