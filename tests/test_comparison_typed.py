"""comparison.json typed: ComparisonResult round-trips, the report context consumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import auditor
from auditor.report.compare import build_compare_context
from auditor.results import ComparisonResult, Gates


def test_comparison_json_round_trips(demo_run: Path, tmp_path: Path) -> None:
    import shutil

    twin = shutil.copytree(demo_run, tmp_path / "twin")  # a run with itself is refused
    res = auditor.compare_runs(demo_run, twin, out=tmp_path / "cmp", render=False, n_boot=50)
    assert isinstance(res, ComparisonResult) and isinstance(res.gates, Gates)
    written = json.loads((tmp_path / "cmp" / "comparison.json").read_text("utf-8"))
    assert res.to_json() == written  # key for key, as written
    assert list(res.to_json()) == list(written)  # and in the same order
    again = ComparisonResult.from_json(written)
    assert again == res and again.to_json() == written
    assert res.passed is True and res.exit_code == 0
    assert res.class_order == tuple(written["class_order"])
    assert res.comparison["primary"] == written["primary"]  # the old dict view still works
    assert "comparison.json" in res.describe()
    # the report context reads the typed result, or a comparison.json dict the same way
    ctx_typed = build_compare_context(res, tmp_path / "cmp")
    ctx_dict = build_compare_context(written, tmp_path / "cmp")
    for key in ("title", "rows", "gates", "counts", "n_classes", "moved"):
        assert ctx_typed[key] == ctx_dict[key], key


def test_comparison_from_json_refuses_other_documents() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        ComparisonResult.from_json({"schema_version": 99})
    with pytest.raises(ValueError, match="kind"):
        ComparisonResult.from_json({"schema_version": 1, "kind": "summary"})
    with pytest.raises(TypeError):
        ComparisonResult.from_json([])
    extra = ComparisonResult.from_json({"schema_version": 1, "future": {"x": 1}})
    assert extra.to_json()["future"] == {"x": 1}  # unknown keys kept
