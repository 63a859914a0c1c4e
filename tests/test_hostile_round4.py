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
from tests.conftest import write_demo_config as tiny_config
from tests.test_hostile_round3 import _env

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


@pytest.mark.slow
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


# -- 2. a full disk while writing the report: exit 3, the file and the free space named -------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, demo_inputs: Path) -> Path:
    """24 demo images, one method, HTML report (so checksums.json exists), no PDF."""
    import auditor

    tmp = tmp_path_factory.mktemp("r4")
    cfg = auditor.load_config(tiny_config(tmp, demo_inputs))
    out = tmp / "run"
    auditor.run_audit(cfg, out, limit=24, pdf=False, progress=False)
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_full_disk_while_writing_the_html_exits_3_naming_path_and_free_space(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """ENOSPC injected at the report's one write seam (``atomic_write_bytes``)."""
    import errno

    from auditor.audit import store

    run = _copy_run(small_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real = store.atomic_write_bytes

    def full_disk(path: Path, data: bytes) -> None:
        if path.name == "report.html":
            raise store.storage_error(OSError(errno.ENOSPC, "No space left on device"), path)
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", full_disk)
    assert main(["report", str(run), "--no-progress"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "report rendering failed" in err[0] and str(run / "report.html") in err[0]
    assert "no space left on device" in err[0] and " free)" in err[0]
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # the old report, summary and checksums untouched, no temp file


@pytest.mark.slow
def test_file_size_limit_while_writing_the_pdf_exits_3(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A real OS limit: the PDF worker runs under RLIMIT_FSIZE = 64 KiB (the PDF is larger),
    so its write fails with EFBIG (or SIGXFSZ kills it): exit 3, one line naming report.pdf
    and the free space; the HTML report written before it and the results stay."""
    resource = pytest.importorskip("resource")
    import subprocess as sp

    from auditor.report import pdf as pdf_mod

    run = _copy_run(small_run, tmp_path)
    summary = (run / "summary.json").read_bytes()
    real_run = sp.run

    def limited(cmd, **kw):  # only the PDF worker is started through this seam
        lim = 64 * 1024
        return real_run(cmd, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                   (lim, lim)), **kw)  # fmt: skip

    monkeypatch.setattr(pdf_mod.subprocess, "run", limited)
    assert main(["report", str(run), "--pdf", "--no-progress"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(run / "report.pdf") in err[0] and " free)" in err[0]
    assert "file too large" in err[0]
    assert not (run / "report.pdf").exists()
    assert not [p for p in run.iterdir() if p.name.startswith((".report", ".tmp"))]  # no temp
    assert (run / "summary.json").read_bytes() == summary and (run / "report.html").is_file()


# -- 3. `auditor report` on tampered summary VALUES: exit 2 naming the file and the key --------
def _set(*keys: str, value: object):
    def change(d: dict) -> None:
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return change


def _first_class(d: dict) -> str:
    return next(iter(d["classes"]))


TAMPERED = {
    "wrong type": (_set("overall", "accuracy", value="high"), "overall.accuracy"),
    "out of range": (_set("overall", "accuracy", value=1.7), "overall.accuracy"),
    "not finite": (_set("overall", "accuracy", value=float("nan")), "overall.accuracy"),
    "negative count": (lambda d: d["classes"][_first_class(d)].update(n=-3), ".n'"),
    "reversed interval": (
        lambda d: d["classes"][_first_class(d)].update(accuracy_ci=[0.9, 0.1]),
        "accuracy_ci",
    ),
    "metric out of its range": (
        lambda d: d["overall"]["metrics"]["gradcam"]["background_focus"].update(mean=5.0),
        "overall.metrics.gradcam.background_focus.mean",
    ),
    "methods not names": (_set("methods", value=[3]), "'methods'"),
    "more evaluated than samples": (_set("dataset", "n_evaluated", value=999), "n_evaluated"),
    "evaluated count vs samples.parquet": (_set("dataset", "n_evaluated", value=23), "n_evaluated"),
    "class count vs samples.parquet": (
        lambda d: d["classes"][_first_class(d)].update(n=d["classes"][_first_class(d)]["n"] + 1),
        ".n' must be",
    ),
    "accuracy vs samples.parquet": (
        lambda d: d["overall"].update(accuracy=d["overall"]["accuracy"] - 0.25),
        "overall.accuracy",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_report_refuses_tampered_values_naming_file_and_key(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    import json

    change, key = TAMPERED[case]
    run = _copy_run(small_run, tmp_path)
    (run / "checksums.json").unlink()  # an edit that also rewrote the manifest: values decide
    (run / "report.html").unlink()
    data = json.loads((run / "summary.json").read_text("utf-8"))
    change(data)
    (run / "summary.json").write_text(json.dumps(data), "utf-8")
    assert main(["report", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(run / "summary.json") in err[0] and key in err[0], err[0]
    assert not (run / "report.html").exists()  # nothing rendered from it


def test_report_refuses_a_checksum_mismatch_and_accepts_the_intact_run(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from auditor.results.validate import check_report_inputs

    check_report_inputs(small_run)  # the run as written passes every check
    run = _copy_run(small_run, tmp_path)
    data = json.loads((run / "summary.json").read_text("utf-8"))
    data["title"] = "a plausible edit"  # every value still valid: only the checksum tells
    (run / "summary.json").write_text(json.dumps(data), "utf-8")
    html = (run / "report.html").read_bytes()
    assert main(["report", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run / "summary.json") in err[0] and "checksums.json" in err[0]
    assert (run / "report.html").read_bytes() == html


# -- 4. Finer-CAM on a confident model; a class of empty maps is a finding ------------------
def test_finercam_on_a_confident_model_is_not_zero() -> None:
    """GAP + linear head, class 0 ahead by > 200 logits. The full softmax underflows in float32
    (p_1 = p_2 = 0: the old score, its gradient and the map were 0, status zero_gradient);
    Finer-CAM's weights p_j / sum_j p_j are a softmax over the compared logits only.

    Hand value: s = y_0 - sum_j w_j y_j with w = softmax(y_1, y_2), so ds/dy_0 = 1 and
    ds/dy_j = -w_j (1 + y_j - ybar), ybar = sum_j w_j y_j; with GAP over 3x3,
    alpha_k = sum_c ds/dy_c W[c, k] / 9 and M = ReLU(sum_k alpha_k A_k)."""
    import torch

    from auditor.cam import CamEngine
    from tests.test_cam_methods import A0, A1, GapNet, X

    model = GapNet()
    model.fc = torch.nn.Linear(2, 3, bias=False)
    w = torch.tensor([[300.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        model.fc.weight.copy_(w.float())
    logits = model(X)[0].detach()
    assert float(logits[0] - logits[1:].max()) > 200
    assert float(torch.softmax(logits, 0)[1:].sum()) == 0.0  # the underflow being guarded

    pooled = torch.tensor([7 / 9, 5 / 9], dtype=torch.float64)  # mean of A0, A1
    y = w @ pooled
    wj = torch.softmax(y[1:], 0)
    ybar = float((wj * y[1:]).sum())
    dsdy = torch.cat([torch.ones(1, dtype=torch.float64), -wj * (1 + y[1:] - ybar)])
    alpha = (dsdy @ w) / 9
    expected = (alpha[0] * A0.double() + alpha[1] * A1.double()).clamp_min(0).float()
    assert float(expected.max()) > 1  # a real map, not a rounding residue

    with CamEngine(model, "relu", ("finercam",)) as engine:
        batch = engine.run(X, torch.tensor([0]))
    assert batch.status["finercam"] == ["ok"]
    torch.testing.assert_close(batch.cams["finercam"][0], expected, atol=1e-4, rtol=1e-4)


def _status_table(rows: list[tuple[str, str, int, str, str]]):
    import pyarrow as pa

    ids, methods, labels, cam_status, status = (list(c) for c in zip(*rows, strict=True))
    return pa.table({
        "id": ids, "method": methods, "label": labels, "pred": labels,
        "correct": [True] * len(rows), "cam_status": cam_status, "status": status,
    })  # fmt: skip


def _empty_maps_findings(table, primary: str = "gradcam"):
    from auditor.analysis.aggregate import PrimaryColumns
    from auditor.analysis.findings import FindingRules, RuleContext
    from auditor.analysis.findings.maps import empty_maps_rule
    from auditor.results import ClassResult

    ctx = RuleContext(
        classes={"cat": ClassResult("cat", index=0), "dog": ClassResult("dog", index=1)},
        primary=primary, methods=("gradcam", "finercam"),
        samples=PrimaryColumns.of(table, primary), rules=FindingRules(), confidence=0.95,
        clusters={}, sanity={},
    )  # fmt: skip
    return empty_maps_rule(ctx)


def test_a_class_of_mostly_empty_maps_is_a_finding() -> None:
    """cat: 4 samples, gradcam all fine, finercam 2 of 4 zero_gradient (50 %: the threshold,
    medium). dog: 4 samples, gradcam 4 of 4 empty (zero_cam, constant_cam, zero_map, nonfinite:
    100 % of the primary method: high), finercam 1 of 4 (25 %: silent). A fifth dog sample
    whose logits were not finite is left out (its own finding)."""
    ok = ("ok", "ok")
    rows = [(f"c{i}", "gradcam", 0, *ok) for i in range(4)]
    rows += [("c0", "finercam", 0, "zero_gradient", "zero_cam"),
             ("c1", "finercam", 0, "zero_gradient", "zero_cam"),
             ("c2", "finercam", 0, *ok), ("c3", "finercam", 0, *ok)]  # fmt: skip
    rows += [("d0", "gradcam", 1, "ok", "zero_cam"), ("d1", "gradcam", 1, "ok", "constant_cam"),
             ("d2", "gradcam", 1, "zero_map", "zero_cam"), ("d3", "gradcam", 1, "nonfinite", "nonfinite")]  # fmt: skip  # noqa: E501
    rows += [("d4", "gradcam", 1, "ok", "nonfinite_logits"), ("d4", "finercam", 1, "ok", "nonfinite_logits")]  # fmt: skip  # noqa: E501
    rows += [("d0", "finercam", 1, "method_failed", "zero_cam")]
    rows += [(f"d{i}", "finercam", 1, *ok) for i in (1, 2, 3)]
    got = {(f.cls, f.evidence["method"]): f for f in _empty_maps_findings(_status_table(rows))}
    assert set(got) == {("cat", "finercam"), ("dog", "gradcam")}
    cat, dog = got["cat", "finercam"], got["dog", "gradcam"]
    assert (cat.severity, cat.evidence["n"], cat.evidence["n_empty"]) == ("medium", 4, 2)
    assert (dog.severity, dog.evidence["n"], dog.evidence["n_empty"]) == ("high", 4, 4)
    assert "4 of 4 gradcam maps" in dog.message and cat.kind == "empty_maps"


def test_no_empty_maps_finding_on_healthy_maps() -> None:
    rows = [(f"s{i}", m, i % 2, "ok", "ok") for i in range(6) for m in ("gradcam", "finercam")]
    rows[0] = ("s0", "gradcam", 0, "zero_gradient", "zero_cam")  # 1 of 3: below half
    assert _empty_maps_findings(_status_table(rows)) == []


# -- 5. the zoo at 32 px and channels-last (fast subset of tests/test_model_families.py) --------
def _tiny_convnext():
    """torchvision ConvNeXt, four stages (stride 4, then /2 each): at 32 px the last stage is
    1x1 and its blocks' channels-last Linear outputs are [B, 1, 1, D]."""
    import torchvision
    from torchvision.models.convnext import CNBlockConfig

    stages = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 48, 1),
              CNBlockConfig(48, None, 1)]  # fmt: skip
    return torchvision.models.ConvNeXt(stages, num_classes=3)


def _zoo_models():
    import torchvision

    tv = torchvision.models
    return {
        "convnext_tiny_32px": (_tiny_convnext, "features.6", "no spatial grid at this input size"),
        "squeezenet1_0": (lambda: tv.squeezenet1_0(num_classes=5), "features.", ""),
        "squeezenet1_1": (lambda: tv.squeezenet1_1(num_classes=5), "features.", ""),
    }


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", ["convnext_tiny_32px", "squeezenet1_0", "squeezenet1_1"])
def test_zoo_small_inputs_and_channels_last_pick_a_real_grid(name: str, channels_last: bool):
    """At 32 px the automatic layer is a real spatial grid (h*w > 1), never a 1x1 stage whose
    channels would be read as a map nor SqueezeNet's class maps (``classifier.*``); the reason
    says why later outputs were passed over; maps are finite and not constant."""
    import torch

    from auditor.cam import compute_cams
    from auditor.cam.layers import detect_target_layer

    build, prefix, why = _zoo_models()[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    choice = detect_target_layer(model, x)
    assert choice.name.startswith(prefix), choice
    assert not choice.name.startswith("classifier")
    assert len(choice.shape) == 4 and choice.shape[2] * choice.shape[3] > 1, choice.shape
    assert why in choice.reason
    maps = compute_cams(model, x, torch.tensor([0, 1]), methods=("gradcam",))["gradcam"]
    assert maps.shape == (2, 32, 32) and bool(torch.isfinite(maps).all())


def test_a_given_1x1_channels_last_layer_is_refused_before_the_first_batch() -> None:
    """Naming the ConvNeXt's [B, 1, 1, 48] channels-last block output as the layer: the
    applicability probe refuses it (a 1x1 grid is one number per map), naming the layer."""
    import torch

    from auditor.cam import CamEngine
    from auditor.cam.applicability import check_applicability
    from auditor.errors import AuditorInputError

    model = _tiny_convnext().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    engine = CamEngine(model, "features.7.0.block.5", ("gradcam",), reshape="auto", example=x)
    with pytest.raises(AuditorInputError, match=r"features\.7\.0\.block\.5.*1x1"):
        check_applicability(engine, x, 3)


def test_costly_methods_are_refused_above_max_forwards_per_image() -> None:
    """Score-CAM needs one masked forward per channel: 48 channels + the capture > 16."""
    import torch

    from auditor.cam import CamEngine
    from auditor.cam.applicability import check_applicability
    from auditor.errors import AuditorInputError

    model = _tiny_convnext().eval()
    x = torch.randn(2, 3, 64, 64)
    engine = CamEngine(model, "features.7", ("gradcam", "scorecam"), example=x)
    with pytest.raises(AuditorInputError, match=r"max_forwards_per_image = 16.*scorecam"):
        check_applicability(engine, x, 3, max_forwards=16)
    assert check_applicability(engine, x, 3, max_forwards=2048).forwards["scorecam"] >= 48


# -- 7. load_run refuses what `auditor report` refuses: one check for API and CLI (issue 23) --
def _refused(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``load_run(run)``'s AuditorInputError message, checked to be the one line the CLI's
    ``auditor report`` prints (exit 2) for the same directory; the directory is unchanged."""
    import auditor
    from auditor.errors import AuditorInputError

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(AuditorInputError) as info:
        auditor.load_run(run)
    assert type(info.value).__module__.startswith("auditor")  # never a raw pyarrow/json error
    msg = str(info.value)
    capsys.readouterr()
    assert main(["report", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"auditor: error: {msg}"], err  # the same check, the same words
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    return msg


@pytest.mark.parametrize("case", list(TAMPERED))
def test_load_run_refuses_tampered_values_naming_file_and_key(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    import json

    change, key = TAMPERED[case]
    run = _copy_run(small_run, tmp_path)
    (run / "checksums.json").unlink()  # an edit that also rewrote the manifest: values decide
    data = json.loads((run / "summary.json").read_text("utf-8"))
    change(data)
    (run / "summary.json").write_text(json.dumps(data), "utf-8")
    msg = _refused(run, capsys)
    assert str(run / "summary.json") in msg and key in msg, msg


def test_load_run_refuses_a_checksum_mismatch_of_either_file(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every value still plausible: only the checksum tells (summary.json, then a
    samples.parquet rewritten with one confidence changed)."""
    import json

    import auditor

    assert auditor.load_run(small_run).summary.dataset.n_evaluated == 24  # intact: accepted
    run = _copy_run(small_run, tmp_path)
    data = json.loads((run / "summary.json").read_text("utf-8"))
    data["title"] = "a plausible edit"
    (run / "summary.json").write_text(json.dumps(data), "utf-8")
    msg = _refused(run, capsys)
    assert str(run / "summary.json") in msg and "checksums.json" in msg, msg

    run2 = _copy_run(small_run, tmp_path / "b")
    table = pq.read_table(run2 / "samples.parquet")
    col = table.column_names.index("pred_confidence")
    values = table.column(col).to_pylist()
    values[0] = 0.5 * values[0]
    table = table.set_column(col, table.field(col), [values])
    pq.write_table(table, run2 / "samples.parquet")
    msg = _refused(run2, capsys)
    assert str(run2 / "samples.parquet") in msg and "checksums.json" in msg, msg


@pytest.mark.parametrize("key", ["overall", "schema_version"])
def test_load_run_refuses_a_summary_without_a_required_key(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    import json

    run = _copy_run(small_run, tmp_path)
    (run / "checksums.json").unlink()
    data = json.loads((run / "summary.json").read_text("utf-8"))
    del data[key]
    (run / "summary.json").write_text(json.dumps(data), "utf-8")
    msg = _refused(run, capsys)
    assert str(run / "summary.json") in msg and f"missing key(s) {key}" in msg, msg


def test_load_run_refuses_a_deleted_samples_parquet(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(small_run, tmp_path)
    (run / "samples.parquet").unlink()
    msg = _refused(run, capsys)  # not an empty DataFrame
    assert str(run / "samples.parquet") in msg and "missing" in msg and "24 evaluated" in msg


def test_load_run_refuses_a_truncated_samples_parquet(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for keep_manifest in (True, False):  # with checksums.json and without: never ArrowInvalid
        run = _copy_run(small_run, tmp_path / str(keep_manifest))
        if not keep_manifest:
            (run / "checksums.json").unlink()
        data = (run / "samples.parquet").read_bytes()
        (run / "samples.parquet").write_bytes(data[: len(data) // 2])
        msg = _refused(run, capsys)
        assert str(run / "samples.parquet") in msg and "truncated" in msg, msg


def test_cams_with_the_shards_deleted_raise_naming_the_shards(
    small_run: Path, tmp_path: Path
) -> None:
    import shutil

    import auditor
    from auditor.errors import AuditorInputError

    run_dir = _copy_run(small_run, tmp_path)
    run = auditor.load_run(run_dir)
    ids = list(run.samples["id"].astype(str))[:2]
    assert len(run.cams(ids)) == 2  # intact: the maps
    shutil.rmtree(run_dir / "shards")
    with pytest.raises(AuditorInputError, match="shards.*missing or incomplete") as info:
        auditor.load_run(run_dir).cams(ids)  # not {}
    assert str(run_dir / "shards") in str(info.value)


def test_compare_a_run_with_itself_is_refused_by_every_entry_point(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run.compare(run)``, ``run.compare(path)``, through a symlink, ``compare_runs(p, p)``
    and ``auditor compare p p``: refused, and no comparison folder is written anywhere."""
    import auditor
    from auditor.errors import AuditorInputError

    run_dir = _copy_run(small_run, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(run_dir, target_is_directory=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    run = auditor.load_run(run_dir)
    for other in (run, run_dir, str(run_dir), link):
        with pytest.raises(AuditorInputError, match="itself"):
            run.compare(other)
    with pytest.raises(AuditorInputError, match="itself"):
        auditor.compare_runs(run_dir, link, render=False)
    assert main(["compare", str(run_dir), str(link), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "itself" in err[0] and str(run_dir) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_compare_refuses_a_run_whose_files_changed_since_written(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A samples.parquet rewritten after the run (checksums.json disagrees): compare refuses it
    (exit 2, naming the role and the file) instead of comparing edited rows."""
    run_b = _copy_run(small_run, tmp_path)
    table = pq.read_table(run_b / "samples.parquet")
    col = table.column_names.index("pred_confidence")
    values = table.column(col).to_pylist()
    values[0] = 0.5 * values[0]
    pq.write_table(table.set_column(col, table.field(col), [values]), run_b / "samples.parquet")
    out = tmp_path / "cmp"
    assert main(["compare", str(small_run), str(run_b), "--out", str(out), "--no-pdf",
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RUN_B" in err[0], err
    assert str(run_b / "samples.parquet") in err[0] and "checksums.json" in err[0], err
    assert not out.exists()
