"""Hostile cases of issues 23 and 27 (gates, run/compare folders, load_run, exit codes, CLI).

Each case asserts the documented exit code (0 ok, 1 gate failed, 2 bad input), the message,
and that nothing in the user's folders was lost or mixed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import auditor
from auditor.cli import gate_verdict, main
from auditor.config import load_config
from auditor.errors import AuditorInputError
from auditor.notebook import load_run

SMALL_AUDIT = """
[audit]
methods = ["gradcam"]
target = "label"
batch_size = 50
seed = 0
faithfulness_samples = 0
sanity_samples = 0
interventions = false
bootstrap = 100
"""


def config(demo_inputs: Path, name: str, gates: str = "", model: str | None = None) -> Path:
    text = Path(demo_inputs).read_text("utf-8")
    head = text.split("[audit]")[0]
    if model is not None:
        head = model + "\n[data]" + head.split("[data]")[1]
    tail = "[report]" + text.split("[report]")[1]
    out = Path(demo_inputs).parent / name
    out.write_text(head + SMALL_AUDIT + ("\n[gates]\n" + gates + "\n" if gates else "") + tail)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def user_folder(tmp_path: Path) -> Path:
    """A folder of the user's own files, one of them named like ours."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "summary.json").write_text('{"my": "notes"}')
    (d / "classes.csv").write_text("precious,data\n")
    (d / "report.html").write_text("<p>my report</p>")
    return d


@pytest.fixture(scope="module")
def two_runs(demo_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cfg = load_config(config(demo_inputs, "r6.toml"))
    root = tmp_path_factory.mktemp("r6")
    auditor.run_audit(cfg, root / "a", limit=50, pdf=False, render=False, progress=False)
    shutil.copytree(root / "a", root / "b")
    return root / "a", root / "b"


# -- gates in the wrong place -------------------------------------------------------------
@pytest.mark.parametrize(
    ("gates", "needle"),
    [
        ("max_background_focus_increase = 0.05", "comparison gate"),
        ("max_accuracy_decrease = 0.05\nmax_background_focus = 0.9", "comparison gate"),
        ("max_backgroud_focus = 0.5", "did you mean 'max_background_focus'"),
        ("max_overall_only_fg_drop = 0.3", "interventions = false"),
    ],
)
def test_run_config_gate_errors_exit_2_before_the_model(
    demo_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], gates: str, needle: str
) -> None:
    cfg = config(demo_inputs, "g.toml", gates)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-pdf"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "g.toml" in err
    assert err.count("\n") == 1  # one line
    assert not out.exists()  # refused before anything was written


def test_typo_lists_at_most_three_distinct_gates(demo_inputs: Path, capsys) -> None:
    cfg = config(demo_inputs, "t.toml", "max_backgrnd_focus = 0.5")
    assert main(["run", str(cfg), "--no-pdf"]) == 2
    err = capsys.readouterr().err
    hint = err.split("did you mean")[1].split("?")[0]
    names = [n.strip(" '") for n in hint.split(",")]
    assert 1 <= len(names) <= 3 and len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[gates]\nmax_background_focus = 0.5\n", "run gate"),
        ("[gates]\nmax_findings_high = 0\n", "run gate"),
        ('[[gates.rule]]\nmetric = "accuracy"\nmin = 0.5\n', "gates.rule"),
        ("[gatez]\nmax_background_focus_increase = 0.1\n", "unknown key [top level] gatez"),
        ("oops = 1\n[gates]\nmax_background_focus_increase = 0.1\n", "oops"),
        ("[gates]\nmax_background_focus_increse = 0.1\n", "max_background_focus_increase"),
    ],
)
def test_compare_config_is_as_strict_as_a_run_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    gates = tmp_path / "cmp.toml"
    gates.write_text(text)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--config", str(gates)])
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "cmp.toml" in err


def test_verdict_counts_evaluated_gates_only() -> None:
    ok = {"value": 0.1, "passed": True}
    missing = {"value": None, "passed": False}
    assert gate_verdict([]) == "none configured"
    assert gate_verdict([ok, ok]) == "PASSED (2/2 passed)"
    assert gate_verdict([ok, missing]) == "FAILED (1/1 passed, 1 not evaluated)"
    assert gate_verdict([missing]).startswith("FAILED")


# -- nothing overwritten ------------------------------------------------------------------
def test_run_out_refuses_a_folder_with_a_user_summary(
    demo_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = user_folder(tmp_path)
    before = snapshot(mine)
    cfg = config(demo_inputs, "o.toml")
    assert main(["run", str(cfg), "--out", str(mine), "--no-pdf"]) == 2
    assert "not a cam-auditor run directory" in capsys.readouterr().err
    assert snapshot(mine) == before


def test_compare_out_refuses_a_foreign_folder(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_runs
    mine = user_folder(tmp_path)
    before = snapshot(mine)
    assert main(["compare", str(a), str(b), "--out", str(mine), "--no-pdf"]) == 2
    assert "not a cam-auditor comparison directory" in capsys.readouterr().err
    assert snapshot(mine) == before
    # its own folder is reused
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--no-pdf"]) == 0
    assert main(["compare", str(a), str(b), "--out", str(out), "--no-pdf"]) == 0
    assert (out / ".cam-auditor-compare").is_file()


def test_finished_run_gives_one_advice_and_overwrite_restores_on_failure(
    two_runs: tuple[Path, Path], demo_inputs: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    before = snapshot(run)
    cfg = config(demo_inputs, "r6.toml")
    assert main(["run", str(cfg), "--out", str(run), "--no-pdf", "--limit", "50"]) == 2
    err = capsys.readouterr().err
    assert "finished audit" in err and "--overwrite" in err and "--resume" not in err
    # --overwrite whose new run fails (the weights are gone): the old run comes back
    broken = config(
        demo_inputs, "broken.toml",
        model='[model]\nfactory = "auditor.demo:build_model"\nweights = "gone.pt"\n',
    )  # fmt: skip
    assert main(["run", str(broken), "--out", str(run), "--no-pdf", "--overwrite"]) == 2
    assert snapshot(run) == before
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_overwrite_replaces_a_finished_run(
    two_runs: tuple[Path, Path], demo_inputs: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    (run / "stale.txt").write_text("from the old run")
    cfg = config(demo_inputs, "r6.toml")
    args = ["run", str(cfg), "--out", str(run), "--no-pdf", "--limit", "50", "--quiet"]
    assert main([*args, "--overwrite"]) == 0
    assert (run / "summary.json").is_file() and not (run / "stale.txt").exists()
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_baseline_evaluates_comparison_gates(
    two_runs: tuple[Path, Path], demo_inputs: Path, tmp_path: Path, capsys
) -> None:
    cfg = config(demo_inputs, "bl.toml", "max_background_focus_increase = 0.0001")
    out = tmp_path / "cand"
    code = main(
        ["run", str(cfg), "--out", str(out), "--no-pdf", "--limit", "50",
         "--baseline", str(two_runs[0])]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text  # the same model and data: no increase
    assert "max_background_focus_increase (vs baseline)" not in text  # passed: not listed
    assert "PASSED" in text
    cmp = json.loads((out / "baseline-comparison" / "comparison.json").read_text())
    assert cmp["gates"]["results"] and all(r["value"] is not None for r in cmp["gates"]["results"])
    # a baseline that is not a run: exit 2 before the model
    assert main(["run", str(cfg), "--out", str(tmp_path / "x"), "--baseline", str(tmp_path)]) == 2
    assert not (tmp_path / "x").exists()


# -- load_run is strict -------------------------------------------------------------------
def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


@pytest.mark.parametrize("key", ["overall", "schema_version"])
def test_load_run_refuses_an_incomplete_summary(two_runs, tmp_path: Path, key: str) -> None:
    run = _copy(two_runs[0], tmp_path)
    data = json.loads((run / "summary.json").read_text())
    del data[key]
    (run / "summary.json").write_text(json.dumps(data))
    with pytest.raises(AuditorInputError, match=f"summary.json.*{key}"):
        load_run(run)


def test_load_run_refuses_missing_or_broken_files(two_runs, tmp_path: Path) -> None:
    run = _copy(two_runs[0], tmp_path)
    ids = list(load_run(run).samples["id"][:2])
    for p in (run / "shards").glob("*.np*"):
        p.unlink()
    with pytest.raises(AuditorInputError, match="shards"):
        load_run(run).cams(ids)
    data = (run / "samples.parquet").read_bytes()
    (run / "samples.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(AuditorInputError, match="samples.parquet.*truncated"):
        _ = load_run(run).samples
    (run / "samples.parquet").unlink()
    with pytest.raises(AuditorInputError, match="samples.parquet"):
        load_run(run)


def test_api_refuses_a_run_compared_with_itself(two_runs) -> None:
    run = load_run(two_runs[0])
    with pytest.raises(AuditorInputError, match="itself"):
        run.compare(run)


# -- exit codes of report, pipes ----------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(schema_version=2),
        lambda d: d.update(classes="tampered"),
        lambda d: d.pop("dataset"),
    ],
)
def test_report_on_a_future_or_tampered_summary_exits_2(two_runs, tmp_path, capsys, change):
    run = _copy(two_runs[0], tmp_path)
    data = json.loads((run / "summary.json").read_text())
    change(data)
    (run / "summary.json").write_text(json.dumps(data))
    assert main(["report", str(run)]) == 2
    assert "summary.json" in capsys.readouterr().err
    assert not (run / "report.html").exists()


def test_closed_stdout_is_not_an_internal_error() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor", "gates"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "internal error" not in err


def test_gates_command_lists_every_gate(capsys) -> None:
    from auditor.analysis.gate_registry import GATES

    assert main(["gates"]) == 0
    out = capsys.readouterr().out
    for key in GATES:
        assert f"\n{key} " in out
    assert "max_background_focus_increase" in out and "baseline" in out


def test_misleading_messages_fixed(demo_inputs: Path, capsys) -> None:
    cfg = config(demo_inputs, "m.toml")
    cfg.write_text(cfg.read_text().replace('methods = ["gradcam"]', 'methods = ["gradcampp"]'))
    assert main(["run", str(cfg), "--no-pdf"]) == 2
    assert "did you mean 'gradcam++'" in capsys.readouterr().err
    tv = config(
        demo_inputs, "tv.toml", model='[model]\ntorchvision = "resnet5O"\nrandom_weights = true\n'
    )
    assert main(["run", str(tv), "--out", str(demo_inputs.parent / "tv-run"), "--no-pdf"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet5O'" in err and "resnet50" in err
