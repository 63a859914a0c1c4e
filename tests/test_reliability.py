"""The reliability checklist (issue 13): faults, typos and concurrency never give a wrong verdict.

One test per failure found by the hostile-user checklist; each asserts the documented exit code
(0 passed, 1 a gate failed and nothing else, 2 bad input in one line, 3 report failed, 4 internal
error with the traceback in the run directory's log) and that nothing wrong is left behind.
Concurrency uses a real second process; disk-full uses a file-size limit (RLIMIT_FSIZE) in a
child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, exit_code_for, main
from auditor.store import RunLock

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[model]
factory = "auditor.demo:build_model"
weights = "{weights}"
name = "demo-tiny"
{model_extra}

[data]
manifest = "{manifest}"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
{data_extra}

[audit]
methods = ["gradcam"]
batch_size = 4
faithfulness_samples = 0
sanity_check = false
clusters = false
interventions = false
bootstrap = 50
gallery_per_class = 0
{audit_extra}

[gates]
max_background_focus = 0.99
{gates_extra}

[report]
pdf = false
{report_extra}
"""


def tiny_config(
    tmp: Path,
    demo_inputs: Path,
    name: str = "tiny.toml",
    *,
    manifest: Path | None = None,
    **extra: str,
) -> Path:
    """A fast config on the demo data; ``model_extra=``, ``audit_extra=``... add lines."""
    folder = demo_inputs.parent
    keys = ("model_extra", "data_extra", "audit_extra", "gates_extra", "report_extra")
    p = tmp / name
    p.write_text(
        TINY.format(
            weights=folder / "demo-shortcut.pt",
            manifest=manifest or folder / "data" / "manifest.csv",
            **{k: extra.get(k, "") for k in keys},
        )
    )
    return p


def _env() -> dict[str, str]:
    return {**os.environ, "CI": "1", "PYTHONPATH": str(ROOT)}


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- 1. the run-directory lock -----------------------------------------------------------------


def test_second_run_into_a_locked_run_dir_exits_2_naming_the_holder(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from auditor.store import RunLock\n"
            "lock = RunLock(sys.argv[1], command='auditor run other.toml').acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cfg = tiny_config(tmp_path, demo_inputs)
        code = main(["run", str(cfg), "--out", str(out), "--limit", "4", "--no-progress"])
        line = _one_line_error(capsys.readouterr().err)
        assert code == EXIT_BAD_INPUT
        assert f"PID {holder.pid}" in line and "other.toml" in line
        assert not (out / "summary.json").exists() and not (out / "shards").exists()
        # a shard writer cannot start under a plain run either
        with pytest.raises(Exception, match=f"PID {holder.pid}"):
            RunLock.for_shard(out, 0, 2).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock is stale, taken over, and the previous holder is recorded
    lock = RunLock(out).acquire()
    assert lock.took_over is not None and lock.took_over["pid"] == holder.pid
    lock.release()


def test_writer_locks_coexist_and_block_the_main_lock(tmp_path: Path) -> None:
    a = RunLock.for_shard(tmp_path, 0, 2).acquire()
    b = RunLock.for_shard(tmp_path, 1, 2).acquire()
    with pytest.raises(Exception, match="shard-0-of-2.*shard-1-of-2"):
        RunLock(tmp_path).acquire()  # a finalize refuses while writers run
    with pytest.raises(Exception, match="shard-1-of-2.lock"):
        RunLock.for_shard(tmp_path, 1, 2).acquire()  # the same shard twice
    a.release()
    b.release()
    with RunLock(tmp_path) as main_lock:
        assert main_lock.held and main_lock.took_over is None  # released cleanly: not stale


def test_out_that_is_a_file_or_a_folder_of_user_files_is_refused(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path, demo_inputs)
    mine = tmp_path / "my-files"
    mine.mkdir()
    (mine / "thesis.docx").write_bytes(b"precious")
    assert main(["run", str(cfg), "--out", str(mine), "--limit", "4"]) == EXIT_BAD_INPUT
    line = _one_line_error(capsys.readouterr().err)
    assert str(mine) in line and "thesis.docx" in line
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.docx"]
    assert (mine / "thesis.docx").read_bytes() == b"precious"
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    assert main(["run", str(cfg), "--out", str(a_file), "--limit", "4"]) == EXIT_BAD_INPUT
    assert "is a file" in _one_line_error(capsys.readouterr().err)


# -- 3. the exit-code contract -----------------------------------------------------------------


def test_exit_code_classification_never_gives_1() -> None:
    import errno

    from auditor.errors import ConfigError, RenderError

    cases = {
        ConfigError("x"): 2,
        OSError(errno.ENOSPC, "No space left on device"): 2,
        OSError(errno.EROFS, "Read-only file system"): 2,
        FileNotFoundError(errno.ENOENT, "nope", "/x"): 2,
        MemoryError(): 2,
        RenderError("x"): 3,
        RuntimeError("boom"): EXIT_INTERNAL,
        IndexError("list index out of range"): EXIT_INTERNAL,
        AssertionError(): EXIT_INTERNAL,
        KeyboardInterrupt(): 130,
    }
    for exc, code in cases.items():
        assert exit_code_for(exc) == code, exc


def test_internal_error_exits_4_one_line_and_traceback_in_the_run_log(
    tmp_path: Path,
    demo_inputs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import auditor.runner

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(auditor.runner, "_run_locked", broken)  # a fault injected for the test
    cfg = tiny_config(tmp_path, demo_inputs)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--limit", "4"]) == EXIT_INTERNAL
    line = _one_line_error(capsys.readouterr().err)
    assert "internal error" in line and "ZeroDivisionError" in line and "auditor.log" in line
    log = (out / "auditor.log").read_text()
    assert "Traceback" in log and "a bug deep inside" in log and "def broken" not in line
    # the lock was released on the way out: the next run can take it
    with RunLock(out) as lock:
        assert lock.held
