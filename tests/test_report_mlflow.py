"""``auditor export RUN --mlflow URI`` against a real local MLflow file store, read back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.format import slugify
from tests.report_fixtures import make_run_dir

CLASSES = ("circle", "tri angle/?", "square")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(
        tmp_path_factory.mktemp("mlflow") / "run",
        class_names=CLASSES,
        shortcut_classes=("tri angle/?",),
        n_per_class=8,
        gallery=False,
        clusters=False,
    )


def test_export_logs_params_metrics_gates_and_artefacts(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="mlflow (extra) not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file store is opt-in
    uri = (tmp_path / "mlruns").as_uri()  # file:// store
    assert main(["export", str(run_dir), "--mlflow", uri]) == 0
    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cam-auditor")
    (run,) = client.search_runs([exp.experiment_id])
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["primary_method"] == summary["primary_method"] == "gradcam"
    assert params["methods"] == "gradcam,cam"
    # per-class metrics are the summary's numbers, keyed by the class slug
    for name in CLASSES:
        c = summary["classes"][name]
        assert metrics[f"class.{slugify(name)}.accuracy"] == pytest.approx(c["accuracy"])
        eim = c["metrics"]["gradcam"]["energy_in_mask"]["mean"]
        assert metrics[f"class.{slugify(name)}.energy_in_mask"] == pytest.approx(eim)
    assert metrics["overall.accuracy"] == pytest.approx(summary["overall"]["accuracy"])
    gates = summary["gates"]
    assert metrics["gates.passed"] == (1.0 if gates["passed"] else 0.0)
    for g in gates["results"]:
        where = "all" if g["class"] is None else slugify(g["class"])
        assert metrics[f"gate.{slugify(g['rule'])}.{where}"] == (1.0 if g["passed"] else 0.0)
    n_high = sum(1 for f in summary["findings"] if f["severity"] == "high")
    assert metrics["findings.high"] == n_high
    assert tags["cam_auditor.verdict"] == ("pass" if gates["passed"] else "fail")
    assert run.info.status == "FINISHED"
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "model_card.json", "model_card.md"} <= artefacts
    local = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (run_dir / "summary.json").read_bytes()


def test_without_mlflow_exit_2_says_what_to_install(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    code = main(["export", str(run_dir), "--mlflow", (tmp_path / "m").as_uri()])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'cam-auditor[mlflow]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
