"""The parity methods through the runner on the demo's real trained model (issue 16, issue 11:
Eigen methods on a trained model must never kill the audit)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

PARITY = ("eigencam", "eigengradcam", "kpcacam", "fem", "randomcam", "shapleycam", "finercam")


@pytest.mark.slow
def test_parity_methods_through_the_runner(tmp_path: Path, demo_inputs: Path) -> None:
    import auditor
    from auditor.config import AuditSettings
    from auditor.data import open_dataset
    from auditor.models import load_model

    cfg = auditor.load_config(demo_inputs)
    dataset = open_dataset(cfg.data)
    model = load_model(cfg.model, num_classes=len(dataset.classes)).module
    settings = AuditSettings(
        methods=("gradcam", *PARITY),
        limit=6,
        faithfulness_samples=0,
        sanity_check=False,
        clusters=False,
        interventions=False,
        bootstrap=50,
    )
    auditor.audit(model, dataset, tmp_path / "run", settings=settings, render=False)
    table = pq.read_table(tmp_path / "run" / "samples.parquet").to_pydict()
    rows = list(zip(table["method"], table["cam_status"], table["energy_in_mask"]))
    for method in PARITY:
        mine = [(status, e) for m, status, e in rows if m == method]
        assert len(mine) == 6, method
        assert all(status in ("ok", "zero_map", "constant_activation") for status, _ in mine), mine
        assert sum(status == "ok" for status, _ in mine) >= 3, (method, mine)


@pytest.mark.slow
def test_fullgrad_through_the_runner(tmp_path: Path, demo_inputs: Path) -> None:
    """FullGrad's input-resolution maps flow through metrics, the shard store and the summary."""
    import json

    import numpy as np

    import auditor
    from auditor.audit.runner import STORED_INPUT_MAP_SIDE
    from auditor.audit.store import RunStore
    from auditor.config import AuditSettings
    from auditor.data import open_dataset
    from auditor.models import load_model

    cfg = auditor.load_config(demo_inputs)
    dataset = open_dataset(cfg.data)
    model = load_model(cfg.model, num_classes=len(dataset.classes)).module
    settings = AuditSettings(
        methods=("fullgrad", "gradcam"),  # the primary method: gallery and report from its maps
        limit=12,
        faithfulness_samples=2,
        sanity_check=False,
        clusters=True,
        interventions=False,
        bootstrap=50,
    )
    run = tmp_path / "run"
    auditor.audit(model, dataset, run, settings=settings, render=True, pdf=False)
    assert "FullGrad" in (run / "report.html").read_text()
    table = pq.read_table(run / "samples.parquet").to_pydict()
    mine = [i for i, m in enumerate(table["method"]) if m == "fullgrad"]
    assert len(mine) == 12
    assert all(table["cam_status"][i] == "ok" for i in mine)
    for metric in ("energy_in_mask", "pointing_game", "iou", "auc"):
        values = np.asarray([table[metric][i] for i in mine], dtype=float)
        assert np.isfinite(values).all(), metric
    summary = json.loads((run / "summary.json").read_text())
    assert "fullgrad" in summary["methods"]
    assert np.isfinite(summary["overall"]["metrics"]["fullgrad"]["energy_in_mask"]["mean"])
    assert "FullGrad" in summary["methods_info"]["fullgrad"]["title"]
    stored = RunStore(run).load_cams("fullgrad")
    side = max(dataset.config.input_size)
    expected = min(side, STORED_INPUT_MAP_SIDE)
    assert len(stored) == 12 and all(max(m.shape) == expected for m in stored.values())
    assert all(
        np.isfinite(m).all() and float(m.max()) == pytest.approx(1.0, abs=1e-2)
        for m in stored.values()
    )


def test_legrad_audit_on_a_small_timm_vit(tmp_path: Path, demo_inputs: Path) -> None:
    """LeGrad through ``audit()`` on a seeded tiny timm ViT (random weights) on the demo data:
    its patch-grid maps (4x4 at 64x64 input, patch 16) flow through the metrics, the low-res
    CAM store and summary.json like the other methods."""
    import json
    import math

    import numpy as np
    import torch

    import auditor
    from auditor.config import AuditSettings
    from auditor.data import open_dataset

    timm = pytest.importorskip("timm")
    cfg = auditor.load_config(demo_inputs)
    dataset = open_dataset(cfg.data)
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=64,
        depth=2,
        num_classes=len(dataset.classes),
    )
    settings = AuditSettings(
        methods=("legrad", "gradcam"),
        limit=6,
        faithfulness_samples=0,
        sanity_check=False,
        clusters=False,
        interventions=False,
        bootstrap=50,
    )
    auditor.audit(model, dataset, tmp_path / "run", settings=settings, render=False)
    table = pq.read_table(tmp_path / "run" / "samples.parquet").to_pydict()
    mine = [i for i, m in enumerate(table["method"]) if m == "legrad"]
    assert len(mine) == 6
    assert all(table["cam_status"][i] == "ok" for i in mine)
    assert all(math.isfinite(table["energy_in_mask"][i]) for i in mine)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "legrad" in summary["methods"]
    assert math.isfinite(summary["overall"]["metrics"]["legrad"]["energy_in_mask"]["mean"])
    assert "legrad" in json.dumps(summary.get("methods_info"))
    run = auditor.load_run(tmp_path / "run")
    ids = list(run.samples["id"].astype(str).unique()[:2])
    maps = run.cams(ids, method="legrad")
    assert len(maps) == 2 and all(np.asarray(a).shape == (4, 4) for a in maps.values())
    assert all(float(np.asarray(a).max()) == pytest.approx(1.0) for a in maps.values())


def test_legrad_on_a_cnn_is_refused_before_any_batch(tmp_path: Path, demo_inputs: Path) -> None:
    """The demo's CNN with ``legrad``: a ConfigError (exit code 2 from the CLI) naming the
    reason, raised when the engine is built, and no run results."""
    import auditor
    from auditor.config import AuditSettings
    from auditor.data import open_dataset
    from auditor.errors import ConfigError
    from auditor.models import load_model

    cfg = auditor.load_config(demo_inputs)
    dataset = open_dataset(cfg.data)
    model = load_model(cfg.model, num_classes=len(dataset.classes)).module
    settings = AuditSettings(methods=("gradcam", "legrad"), limit=4, faithfulness_samples=0)
    with pytest.raises(ConfigError, match="`legrad` cannot run on"):
        auditor.audit(model, dataset, tmp_path / "run", settings=settings, render=False)
    assert not (tmp_path / "run" / "summary.json").exists()
