"""The reliability checklist (issue 13): faults, typos and concurrency never give a wrong verdict.

One test per failure found by the hostile-user checklist; each asserts the documented exit code
(0 passed, 1 a gate failed and nothing else, 2 bad input in one line, 3 report failed, 4 internal
error with the traceback in the run directory's log) and that nothing wrong is left behind.
Concurrency uses a real second process; disk-full uses a file-size limit (RLIMIT_FSIZE) in a
child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from auditor.audit.store import RunLock
from auditor.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, exit_code_for, main

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
    # progress lines ("[auditor] auditing: ...") are not part of the error
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and ln[:10] != "[auditor] "]
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
            "from auditor.audit.store import RunLock, claim_run_dir\n"
            "claim_run_dir(sys.argv[1])  # as a real run does first\n"
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


def test_a_folder_whose_only_entry_is_a_concurrent_writers_marker_in_flight_is_ours(
    tmp_path: Path,
) -> None:
    """Parallel shard jobs / torchrun ranks create --out at the same moment: one sees the
    other's marker while it is still the atomic write's temp file, and must not refuse the
    folder as a stranger's; a folder of user files next to it is still refused."""
    from auditor.audit.store import RUN_MARKER, claim_run_dir
    from auditor.errors import StorageError

    racing = tmp_path / "racing"
    racing.mkdir()
    (racing / f".{RUN_MARKER}.k3j2x9.tmp").write_bytes(b"")
    assert claim_run_dir(racing) == racing
    assert (racing / RUN_MARKER).is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{RUN_MARKER}.tmp").write_bytes(b"")  # not our temp-file pattern
    with pytest.raises(StorageError, match="non-empty folder"):
        claim_run_dir(other)


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
    import auditor.audit.runner

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(auditor.audit.runner, "_run_locked", broken)  # injected fault
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


# -- 2 and 3. every config value validated before any model or data is touched ---------------

BAD_VALUES = [
    ({"audit_extra": 'device = "gpu0"'}, ["[audit] device", "gpu0"]),
    ({"audit_extra": "seed = -1"}, ["[audit] seed", "-1"]),
    ({"_replace": 'methods = ["gradcam"]|methods = ["gradcam", "gradcan"]'}, ["gradcan"]),
    ({"_replace": "bootstrap = 50|bootstrap = 1"}, ["[audit] bootstrap", "got 1"]),
    ({"report_extra": "pdf_timeout_s = -1"}, ["[report] pdf_timeout_s", "-1"]),
    ({"_replace": "input_size = 64|input_size = 1"}, ["[data] input_size"]),
    ({"_replace": "input_size = 64|input_size = 100000"}, ["[data] input_size", "100000"]),
    (
        {"gates_extra": '[[gates.rule]]\nmetric = "energy_in_mask"\nmin = 0.1\nclasses = ["nine"]'},
        ["classes", "nine", "circle"],
    ),
    (
        {
            "gates_extra": '[[gates.rule]]\nmetric = "energy_in_mask"\nmin = 0.1\n'
            'method = "layercam"'
        },
        ["method 'layercam' is not run"],
    ),
    (
        {"gates_extra": '[[gates.rule]]\nmetric = "energy_in_mask"\nmin = nan'},
        ["min must be a finite number"],
    ),
    (
        {"gates_extra": '[[gates.rule]]\nmetric = "energy_in_mask"\nmin = 0.8\nmax = 0.2'},
        ["min 0.8 > max 0.2"],
    ),
    ({"gates_extra": "max_border_focuss = 0.5"}, ["[gates] max_border_focuss"]),
    ({"gates_extra": "min_only_bg_accuracy = 0.1"}, ["interventions = false"]),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_VALUES, ids=[e[1][0] for e in BAD_VALUES])
def test_bad_config_values_exit_2_naming_key_and_file_before_the_model(
    tmp_path: Path,
    demo_inputs: Path,
    capsys: pytest.CaptureFixture[str],
    extra: dict[str, str],
    expected: list[str],
) -> None:
    extra = dict(extra)
    old, _, new = extra.pop("_replace", "|").partition("|")
    cfg = tiny_config(tmp_path, demo_inputs, "typo.toml", **extra)
    cfg.write_text(cfg.read_text().replace(old, new) if old else cfg.read_text())
    # a missing weights file: had the model been loaded first, the error would name it instead
    cfg.write_text(cfg.read_text().replace("demo-shortcut.pt", "not-loaded.pt"))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == EXIT_BAD_INPUT
    line = _one_line_error(capsys.readouterr().err)
    assert "typo.toml" in line, line
    for part in expected:
        assert part in line, line
    assert not (out / "shards").exists()


def test_cli_device_typo_and_gate_classes_from_the_dataset_exit_2(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path, demo_inputs)
    assert main(["run", str(cfg), "--out", str(tmp_path / "a"), "--device", "gpu0"]) == 2
    assert "--device" in _one_line_error(capsys.readouterr().err)
    # no [data] classes: the gate's class is checked against the manifest's labels, after the
    # dataset is read and before the (here missing) weights are loaded
    text = cfg.read_text().replace('classes = ["circle", "square", "triangle", "cross"]\n', "")
    text = text.replace("demo-shortcut.pt", "not-loaded.pt")
    cfg.write_text(
        text + '\n[[gates.rule]]\nmetric = "energy_in_mask"\nmin = 0.1\nclasses = ["nine"]\n'
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "nine" in line and "not classes of the dataset" in line


def test_a_gate_that_checks_nothing_fails_instead_of_disappearing() -> None:
    from auditor.analysis import evaluate_gates
    from auditor.config import GateRule

    summary = {
        "primary_method": "gradcam",
        "classes": {
            "cat": {"n": 3, "metrics": {"gradcam": {"energy_in_mask": {"mean": 0.5}}}},
            "dog": {"n": 0, "metrics": {}},
        },
        "overall": {},
    }
    rule = GateRule(name="r", quantity="energy_in_mask", min=0.1, classes=("dog",))
    res = evaluate_gates(summary, [rule])
    assert not res.passed and res.results[0].note == "no evaluated sample"
    ok = evaluate_gates(summary, [GateRule(name="r", quantity="energy_in_mask", min=0.1)])
    assert ok.passed and len(ok.results) == 1


# -- 3. crashes of the model side: exit 2 with one line, or skipped samples --------------------

FLAKY = '''
import torch
from auditor.demo import DemoNet

CALLS = {"n": 0}


class Flaky(DemoNet):
    """Raises on chosen forward calls of full batches (a driver fault, a kernel error)."""

    fail: tuple = ()

    def forward(self, x):
        if x.shape[0] == 4:
            CALLS["n"] += 1
            if CALLS["n"] in self.fail or -1 in self.fail:
                raise RuntimeError("flaky kernel failed")
        return super().forward(x)


def build(fail):
    m = Flaky()
    m.fail = tuple(fail)
    return m
'''


def _flaky_config(tmp: Path, demo_inputs: Path, fail: str) -> Path:
    (tmp / "flaky_net.py").write_text(FLAKY)
    cfg = tiny_config(
        tmp,
        demo_inputs,
        "flaky.toml",
        model_extra=f'target_layer = "features"\nkwargs = {{ fail = {fail} }}',
        audit_extra="inference_copy = false\nmax_failed_batches = 1",
    )
    cfg.write_text(cfg.read_text().replace("auditor.demo:build_model", "flaky_net:build"))
    return cfg


def test_a_model_that_raises_on_one_batch_skips_its_samples_and_completes(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # calls 2 and 3 are batch 1 (the engine retries a failed capture once, contiguous)
    cfg = _flaky_config(tmp_path, demo_inputs, "[2, 3]")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--limit", "12", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"]["n_evaluated"] == 8 and s["dataset"]["n_skipped"] == 4
    reasons = {d["reason"] for d in s["dataset"]["skipped"]}
    assert reasons == {"the model raised RuntimeError: flaky kernel failed"}
    assert [d["id"] for d in s["dataset"]["skipped"]] == [
        f"images/{i:04d}_{c}.png"
        for i, c in zip(range(4, 8), ("circle", "square", "triangle", "cross"))
    ]


def test_a_model_that_keeps_raising_exits_2_naming_the_model(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _flaky_config(tmp_path, demo_inputs, "[-1]")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--limit", "12", "--no-progress"]) == 2
    line = _one_line_error(_last(capsys))
    assert "the model 'demo-tiny' raised on 2 batches" in line and "flaky kernel failed" in line
    assert not (out / "summary.json").exists()


def _last(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr without the (expected) per-batch warnings logged before the final line."""
    err = capsys.readouterr().err
    return "\n".join(ln for ln in err.splitlines() if not ln.startswith("WARNING"))


def test_zero_byte_weights_and_torchscript_exit_2_with_one_line(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from auditor.demo import build_model

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cfg = tiny_config(tmp_path, demo_inputs)
    cfg.write_text(
        cfg.read_text().replace(str(demo_inputs.parent / "demo-shortcut.pt"), str(empty))
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "a"), "--limit", "4"]) == 2
    assert "empty (0 bytes)" in _one_line_error(_last(capsys))

    model = build_model().eval()
    scripted = tmp_path / "scripted.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(scripted))
    text = cfg.read_text().replace('factory = "auditor.demo:build_model"', f'file = "{scripted}"')
    cfg.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("weights")))
    args = ["run", str(cfg), "--out", str(tmp_path / "b"), "--limit", "4", "--trust-model-code"]
    assert main(args) == 2
    line = _one_line_error(_last(capsys))
    assert "TorchScript" in line and "hooks" in line and "torch.save(model" in line


def test_a_non_spatial_target_layer_exits_2_naming_it(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path, demo_inputs, model_extra='target_layer = "fc"')
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--limit", "4"]) == 2
    line = _one_line_error(_last(capsys))
    assert "'fc'" in line and "[model]" in line and "not a grid" in line


# -- 6. hostile strings: terminal, JUnit XML, [report] title -----------------------------------

HOSTILE = "circle\x1b]0;pwned\x07\x1b[2J\x01\u202e"


def test_control_characters_are_neutralised_in_terminal_and_junit_and_title_is_honoured(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import xml.etree.ElementTree as ET  # noqa: S405 - parsing our own output

    data = demo_inputs.parent / "data"
    rows = (data / "manifest.csv").read_text().splitlines()[:9]
    manifest = data / "manifest-hostile.csv"
    manifest.write_text("\n".join(r.replace(",circle,", f",{HOSTILE},") for r in rows) + "\n")
    toml_name = HOSTILE.encode("unicode_escape").decode().replace("\\x", "\\u00")
    cfg = tiny_config(
        tmp_path,
        demo_inputs,
        manifest=manifest,
        report_extra='title = "Release 7 audit: lesion model"',
    )
    text = cfg.read_text().replace('["circle",', f'["{toml_name}",')
    cfg.write_text(text.replace("max_background_focus = 0.99", "max_background_focus = 0.01"))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 1  # the gate fails
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed and "\u202e" not in printed
    assert "circle\\x1b]0;pwned\\x07" in printed  # shown, inert
    root = ET.parse(out / "junit.xml").getroot()  # noqa: S314 - well-formed despite \x01
    names = [c.get("name") for c in root.iter("testcase")]
    assert any("circle\\x1b]0;pwned" in str(n) for n in names)
    html = (out / "report.html").read_text()
    assert "<title>Release 7 audit: lesion model</title>" in html


# -- 3. faults: a full disk, then a truncated shard on --resume --------------------------------

FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill, as in `auditor`
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from auditor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_exits_2_with_path_and_free_space_then_resume_recomputes_a_bad_shard(
    tmp_path: Path, demo_inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pyarrow.parquet as pq

    if not hasattr(os, "fork"):
        pytest.skip("RLIMIT_FSIZE needs a POSIX child process")
    cfg = tiny_config(tmp_path, demo_inputs)
    out = tmp_path / "run"
    args = ["run", str(cfg), "--out", str(out), "--limit", "8", "--no-progress"]
    # summary.json (~30 KB) is the first file over the 20 KB file-size limit
    res = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    line = _one_line_error(
        "\n".join(ln for ln in res.stderr.splitlines() if not ln.startswith("WARNING"))
    )
    assert "summary.json" in line and "file too large" in line and "free" in line
    assert not (out / "summary.json").exists()  # nothing half-written at a final path
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]
    shards = sorted((out / "shards").glob("part-*.parquet"))
    assert len(shards) == 2
    shards[1].write_bytes(shards[1].read_bytes()[:100])  # truncated by a failing copy
    caplog.set_level("WARNING", logger="auditor")
    assert main([*args, "--resume"]) == 0
    assert "batch 1 is recomputed" in caplog.text
    assert pq.read_table(out / "samples.parquet").num_rows == 8
    assert json.loads((out / "summary.json").read_text())["dataset"]["n_evaluated"] == 8


# -- 6. a killed PDF render: its worker dies with it and its temp files go ---------------------

PDF_PARENT = """
import sys
import time
from pathlib import Path
from typing import Any
from auditor.report.pdf import html_to_pdf
rows = "".join(f"<tr><td>{i}</td><td>{'x' * 40}</td></tr>" for i in range(20000))
html_to_pdf(f"<html><body><table>{rows}</table></body></html>", Path(sys.argv[1]) / "r.pdf",
            base_dir=Path(sys.argv[1]), timeout_s=300)
"""


def _workers(folder: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "_pdf_worker" in cmd and str(folder) in cmd:
            pids.append(int(proc.name))
    return pids


def test_a_killed_pdf_render_takes_its_worker_and_temp_files_with_it(tmp_path: Path) -> None:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc to find the worker process")
    parent = subprocess.Popen([sys.executable, "-c", PDF_PARENT, str(tmp_path)], env=_env())
    deadline = time.time() + 120
    while time.time() < deadline and not _workers(tmp_path):
        assert parent.poll() is None, "the render ended before its worker was seen"
        time.sleep(0.05)
    assert _workers(tmp_path), "no PDF worker started"
    time.sleep(0.5)  # let the worker get going (importing WeasyPrint, reading its HTML)
    os.kill(parent.pid, signal.SIGKILL)  # no cleanup can run in the parent
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and (_workers(tmp_path) or list(tmp_path.iterdir())):
        time.sleep(0.1)
    assert not _workers(tmp_path), "the PDF worker outlived its parent"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # temp HTML/PDF removed, no PDF


# -- 5 and 6. manifests: a bad row is isolated, duplicates noted, an oversized cell skipped ---


def _manifest_dataset(root: Path, body: str) -> object:
    from PIL import Image

    from auditor.data import open_dataset
    from auditor.data.config import parse_data_section

    root.mkdir(parents=True, exist_ok=True)
    for i in range(13):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(root / f"im{i}.png")
    (root / "manifest.csv").write_text(body, encoding="utf-8")
    section = {"manifest": "manifest.csv", "input_size": 8, "classes": ["a", "b"]}
    return open_dataset(parse_data_section(section, root, "c.toml"))


def test_an_unterminated_quote_skips_its_row_only(tmp_path: Path) -> None:
    rows = [f"im{i}.png,{'ab'[i % 2]}" for i in range(13)]
    rows[3] = 'im3.png,"a'  # the quote never closes: it used to swallow rows 4..12
    ds: Any = _manifest_dataset(tmp_path, "image,label\n" + "\n".join(rows) + "\n")
    assert len(ds) == 13  # every line of the file is accounted for
    skipped = []
    for i in range(len(ds)):
        try:
            ds.load(i)
        except Exception as exc:  # noqa: BLE001 - SampleSkipped carries the reason
            skipped.append(str(exc))
    assert len(skipped) == 1 and "manifest line 5" in skipped[0] and "CSV" in skipped[0]


def test_duplicate_rows_are_noted_and_an_oversized_cell_skips_one_row(tmp_path: Path) -> None:
    rows = [f"im{i}.png,{'ab'[i % 2]}" for i in range(6)]
    rows.insert(2, rows[1])  # an identical duplicate of line 3
    rows[4] = "im3.png," + "b" * 200_000  # beyond csv's field limit
    ds: Any = _manifest_dataset(tmp_path, "image,label\n" + "\n".join(rows) + "\n")
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert ids.count("im1.png") == 1 and len(ds) == 6
    sample = ds.load(ids.index("im1.png"))
    assert any("repeats line 3" in n for n in sample.notes)
    with pytest.raises(Exception, match="manifest line 6.*field larger"):
        ds.load(ids.index("line 6"))
    assert ds.load(ids.index("im5.png")).label == 1


# -- 4. EXIF: one rule whatever the shape -------------------------------------------------------


def test_exif_rotated_square_image_with_a_mask_is_skipped_naming_the_orientation(
    tmp_path: Path,
) -> None:
    from PIL import Image

    from auditor.data import open_dataset
    from auditor.data.config import parse_data_section
    from auditor.errors import SampleSkipped

    root = tmp_path / "d"
    root.mkdir()
    stored = np.zeros((8, 8, 3), dtype=np.uint8)
    stored[:, :2] = 255  # the object, left in storage: top once turned for display
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display: the shape stays 8x8
    Image.fromarray(stored).save(root / "sq.png", exif=exif.tobytes())
    Image.fromarray(stored).save(root / "plain.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :2] = 1
    Image.fromarray(mask * 255).save(root / "m.png")
    (root / "manifest.csv").write_text(
        "id,image,label,mask\nrot,sq.png,a,m.png\nplain,plain.png,a,m.png\n"
    )
    section = {"manifest": "manifest.csv", "input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}
    ds = open_dataset(parse_data_section(section, root, "c.toml"))
    with pytest.raises(SampleSkipped, match="EXIF orientation 6.*stored or the displayed"):
        ds.load(0)  # was: image turned, mask not, energy measured against the wrong region
    assert ds.load(1).mask is not None  # no EXIF tag: used as stored


# -- 3. faults on a real small file system: read-only --out, ENOSPC -----------------------------


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not permitted'})")


def test_read_only_out_and_a_full_disk_on_a_real_tmpfs(
    tmp_path: Path, demo_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from auditor.audit.store import atomic_write_bytes
    from auditor.errors import StorageError

    ro, small = tmp_path / "ro", tmp_path / "small"
    _mount_tmpfs(ro, "ro,size=64k")
    try:
        _mount_tmpfs(small, "size=64k")
        try:
            cfg = tiny_config(tmp_path, demo_inputs)
            assert main(["run", str(cfg), "--out", str(ro / "run"), "--limit", "4"]) == 2
            line = _one_line_error(capsys.readouterr().err)
            assert str(ro / "run") in line and "read-only file system" in line and "free" in line
            (small / "old.json").write_bytes(b"{}")
            with pytest.raises(StorageError, match="no space left on device.*free"):
                atomic_write_bytes(small / "old.json", b"x" * 200_000)
            assert (small / "old.json").read_bytes() == b"{}"  # the final path kept its content
            assert sorted(p.name for p in small.iterdir()) == ["old.json"]  # temp file removed
        finally:
            subprocess.run(["umount", str(small)], check=False)
    finally:
        subprocess.run(["umount", str(ro)], check=False)
