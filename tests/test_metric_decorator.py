"""A metric added with the decorator only (here, in a test module) reaches every output."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import Tensor

from auditor.metrics.registry import METRICS, metric, sample_metric_names, unregister


@pytest.fixture
def object_area_metric() -> Iterator[str]:
    @metric(
        "object_area",
        title="Object area (test metric)",
        formula="|mask| / N",
        higher_is_better=None,
        needs_mask=True,
        range=(0.0, 1.0),
        description="Share of the image covered by the object.",
        reference="test",
        table=True,
    )
    def object_area(cams: Tensor, masks: Tensor) -> Tensor:
        return masks.flatten(1).to(torch.float64).mean(1)

    try:
        yield "object_area"
    finally:
        unregister("object_area")
    assert "object_area" not in METRICS


def test_decorated_metric_in_samples_summary_and_table(
    object_area_metric: str, demo_inputs: Path, tmp_path: Path
) -> None:
    import auditor

    assert object_area_metric in sample_metric_names() and METRICS[object_area_metric].table
    cfg = auditor.load_config(demo_inputs)
    cfg = dataclasses.replace(
        cfg,
        gates=(),
        audit=dataclasses.replace(
            cfg.audit,
            methods=("gradcam",),
            faithfulness_samples=0,
            sanity_check=False,
            clusters=False,
            interventions=False,
            bootstrap=200,
        ),
    )
    out = tmp_path / "run"
    auditor.run_audit(cfg, out, limit=24, pdf=False, progress=False)

    # samples: the value of every row is |mask| / N, the same as the stored mask_area
    t = pq.read_table(out / "samples.parquet").to_pandas()
    assert object_area_metric in t.columns
    np.testing.assert_allclose(t[object_area_metric], t["mask_area"], rtol=1e-12)

    # summary: aggregated per class and overall, described in metrics_info
    s = json.loads((out / "summary.json").read_text("utf-8"))
    assert s["metrics_info"][object_area_metric]["formula"] == "|mask| / N"
    for name, c in s["classes"].items():
        stat = c["metrics"]["gradcam"][object_area_metric]
        rows = t[t["label_name"] == name]
        assert stat["mean"] == pytest.approx(float(rows["mask_area"].mean()))
        assert stat["n"] == len(rows)

    # the per-class table and the methodology
    page = (out / "report.html").read_text("utf-8")
    table = page.split('id="class-table"', 1)[1].split("</table>", 1)[0]
    assert "Object area (test metric)" in table
    assert f"<code>{object_area_metric}</code>" in page.split('id="methodology"', 1)[1]
    classes = auditor.load_run(out).classes
    assert f"{object_area_metric}_mean" in classes.columns


def test_plugin_metric_is_a_compared_quantity(object_area_metric: str) -> None:
    """A metric added with @metric is compared by ``auditor compare`` like a built-in one
    (after the built-ins, where both runs have its column), and not where one run lacks it."""
    from auditor.compare.core import compared_quantities

    cols = ["index", "id", "label", "correct", "energy_in_mask", object_area_metric]
    got = compared_quantities(cols, cols, with_accuracy=False)
    assert got == ["energy_in_mask", object_area_metric]
    assert object_area_metric not in compared_quantities(cols, cols[:-1], with_accuracy=False)


def test_unregistered_column_is_not_compared() -> None:
    from auditor.compare.core import compared_quantities

    cols = ["index", "id", "label", "energy_in_mask", "object_area"]
    assert compared_quantities(cols, cols, with_accuracy=False) == ["energy_in_mask"]
