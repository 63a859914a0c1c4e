"""One status vocabulary (auditor.audit.status) and one samples row schema (auditor.audit.store)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import auditor
from auditor import cam, status
from auditor.audit.status import statuses_markdown
from auditor.audit.store import (
    SAMPLE_COLUMNS,
    migrate_samples,
    read_samples,
    rows_table,
    samples_columns_markdown,
    samples_schema,
)
from auditor.metrics import localisation
from auditor.metrics.localisation import METRIC_NAMES
from auditor.metrics.registry import sample_metric_names
from auditor.results import AuditResult


def test_every_producer_uses_the_one_vocabulary() -> None:
    assert cam.STATUSES is status.CAM_STATUSES
    assert localisation.STATUSES is status.METRIC_STATUSES
    assert auditor.metrics.STATUSES is status.METRIC_STATUSES
    for subset in (status.CAM_STATUSES, status.METRIC_STATUSES, status.SAMPLE_STATUSES):
        assert set(subset) <= set(status.STATUSES)
        assert len(set(subset)) == len(subset)
    # one word for one thing: the engine and the metrics both say "nonfinite"
    assert "nonfinite" in status.CAM_STATUSES and "nonfinite" in status.METRIC_STATUSES
    assert not set(status.LEGACY_STATUSES) & set(status.STATUSES)
    assert set(status.STATUS_MEANINGS) == set(status.STATUSES)


def test_sample_status_precedence() -> None:
    got = status.sample_status(
        ["ok", "zero_cam", "ok", "no_mask"],
        ["ok", "nonfinite", "nonfinite", "ok"],
        [False, False, True, False],
    )
    assert got == ["ok", "nonfinite", "nonfinite_logits", "no_mask"]


def test_old_summary_status_counts_migrate() -> None:
    old = {
        "schema_version": 1,
        "overall": {"status_counts": {"gradcam": {"nonfinite_cam": 2, "ok": 5}}},
    }
    result = AuditResult.from_json(old)
    assert dict(result.overall.status_counts["gradcam"]) == {"nonfinite": 2, "ok": 5}
    assert result.to_json()["overall"]["status_counts"] == {"gradcam": {"nonfinite": 2, "ok": 5}}


def test_old_rows_migrate_on_read(tmp_path: Path) -> None:
    table = pa.table({"method": ["gradcam"] * 3, "status": ["ok", "nonfinite_cam", None]})
    pq.write_table(table, tmp_path / "samples.parquet")
    read = read_samples(tmp_path / "samples.parquet")
    assert read.column("status").to_pylist() == ["ok", "nonfinite", None]
    current = pa.table({"status": ["ok", "nonfinite"]})
    assert migrate_samples(current) is current  # nothing to do: the same table


def test_old_run_directory_reads_in_the_current_vocabulary(demo_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(demo_run, old, ignore=shutil.ignore_patterns("*.pdf", "shards", "gallery"))
    rows = pq.read_table(old / "samples.parquet")
    statuses = np.asarray(rows.column("status").to_pylist(), dtype=object)
    statuses[0] = "nonfinite_cam"  # as an older build wrote it
    rows = rows.set_column(rows.column_names.index("status"), "status", pa.array(statuses))
    pq.write_table(rows, old / "samples.parquet")
    summary = json.loads((old / "summary.json").read_text("utf-8"))
    method = next(iter(summary["overall"]["status_counts"]))
    summary["overall"]["status_counts"][method]["nonfinite_cam"] = 1
    (old / "summary.json").write_text(json.dumps(summary), "utf-8")
    # the older build wrote its checksum manifest over these files (load_run checks it)
    import hashlib

    manifest = json.loads((old / "checksums.json").read_text("utf-8"))
    for name in ("summary.json", "samples.parquet"):
        manifest["files"][name] = hashlib.sha256((old / name).read_bytes()).hexdigest()
    (old / "checksums.json").write_text(json.dumps(manifest), "utf-8")
    run = auditor.load_run(old)
    assert "nonfinite_cam" not in set(run.samples["status"])
    assert run.samples["status"].iloc[0] == "nonfinite"
    assert run.summary.overall.status_counts[method]["nonfinite"] >= 1
    comparison = run.compare(auditor.load_run(demo_run))  # compare reads old runs too
    assert comparison is not None


def test_demo_samples_parquet_has_exactly_the_schema(demo_run: Path) -> None:
    written = pq.read_schema(demo_run / "samples.parquet")
    summary = json.loads((demo_run / "summary.json").read_text("utf-8"))
    config = summary["run"]["config"]
    audit = config.get("audit", config)
    expected = samples_schema(
        sample_metric_names(),
        interventions=bool(audit.get("interventions", True)),
        faithfulness=int(audit.get("faithfulness_samples", 0)) > 0,
        finalized=True,
    )
    assert written.remove_metadata().equals(expected), (written, expected)


def test_rows_table_refuses_columns_off_the_schema() -> None:
    schema = samples_schema(("energy_in_mask",), interventions=False, faithfulness=False)
    cols = {f.name: pa.array([], f.type) for f in schema}
    assert rows_table(cols, schema).schema.equals(schema)
    with pytest.raises(RuntimeError, match=r"extra \['surprise'\]"):
        rows_table({**cols, "surprise": []}, schema)


def test_run_directory_docs_list_every_column() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "run-directory.md").read_text("utf-8")
    assert samples_columns_markdown(METRIC_NAMES) in docs
    assert statuses_markdown() in docs
    assert all(f"`{c.name}`" in docs for c in SAMPLE_COLUMNS)
