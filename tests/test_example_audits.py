"""The committed worked example ``example_audits/demo/`` is not stale (issue 23), checked
cheaply: nothing is re-audited here.

``make examples`` (``scripts/make_example_audits.py``) renders it and records in
``generated.json`` the package version, the schema version and a hash of its inputs (report
templates and CSS, every file of ``auditor/report/``, the demo module, the demo weights, the
comparison gates). These tests recompute the
hash, compare the committed configs with the ones the demo writes today, and compare the key
structure of the committed ``summary.json`` with the one the current code writes for the same
config (the session's ``demo_run``, shared with the other end-to-end tests). Any difference:
"run make examples".
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "example_audits" / "demo"
HINT = "example_audits/demo is stale: run `make examples` and commit the result"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_example_audits", REPO / "scripts" / "make_example_audits.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_example_audits", module)
    spec.loader.exec_module(module)
    return module


mk = _load_script()


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value (``a.b``; list items as ``a[]``, their keys merged)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            out |= key_paths(v, path)
    elif isinstance(value, list):
        for item in value:
            out |= key_paths(item, f"{prefix}[]")
    return out


def test_key_paths_by_hand() -> None:
    value = {"a": {"b": 1}, "c": [{"d": 1}, {"e": [2]}], "f": []}
    assert key_paths(value) == {"a", "a.b", "c", "c[].d", "c[].e", "f"}


def test_inputs_hash_matches_the_committed_example() -> None:
    stamp_path = EXAMPLE / mk.STAMP_NAME
    assert stamp_path.is_file(), f"{stamp_path} missing: {HINT}"
    committed = json.loads(stamp_path.read_text(encoding="utf-8"))
    now = mk.stamp(REPO)
    changed = sorted(
        p
        for p in set(committed["inputs"]) | set(now["inputs"])
        if committed["inputs"].get(p) != now["inputs"].get(p)
    )
    assert committed["package_version"] == now["package_version"], HINT
    assert committed["schema_version"] == now["schema_version"], HINT
    assert committed["inputs_sha256"] == now["inputs_sha256"], f"{HINT} (changed: {changed})"


def test_the_hash_moves_when_an_input_changes(tmp_path: Path) -> None:
    """A copy of the inputs, one template byte changed: a different hash naming that file."""
    for p in mk.input_files(REPO):
        dst = tmp_path / p.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    before = mk.stamp(tmp_path)
    assert before["inputs_sha256"] == mk.stamp(REPO)["inputs_sha256"]
    css = tmp_path / "templates" / "report.css"
    css.write_bytes(css.read_bytes() + b" ")
    after = mk.stamp(tmp_path)
    assert after["inputs_sha256"] != before["inputs_sha256"]
    diff = [p for p in after["inputs"] if after["inputs"][p] != before["inputs"][p]]
    assert diff == ["templates/report.css"]


def test_the_hash_covers_the_report_package(tmp_path: Path) -> None:
    """A change of the report's wording in Python (``auditor/report/*.py``) or its data moves
    the hash, so ``make test`` says "run make examples"; byte-code caches do not."""
    inputs = mk.input_files(REPO)
    rel = {p.relative_to(REPO).as_posix() for p in inputs}
    on_disk = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "auditor" / "report").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert on_disk and on_disk <= rel  # every report source file, the .py and the data
    assert "auditor/report/verdict.py" in rel and "auditor/report/clauses.json" in rel
    assert not [p for p in rel if "__pycache__" in p or p.endswith(".pyc")]
    for p in inputs:
        dst = tmp_path / p.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    before = mk.stamp(tmp_path)
    cache = tmp_path / "auditor" / "report" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "verdict.cpython-312.pyc").write_bytes(b"\x00byte code")
    assert mk.stamp(tmp_path)["inputs_sha256"] == before["inputs_sha256"]
    verdict = tmp_path / "auditor" / "report" / "verdict.py"
    verdict.write_text(verdict.read_text("utf-8") + "# reworded\n", encoding="utf-8")
    after = mk.stamp(tmp_path)
    assert after["inputs_sha256"] != before["inputs_sha256"]
    diff = [p for p in after["inputs"] if after["inputs"][p] != before["inputs"].get(p)]
    assert diff == ["auditor/report/verdict.py"]


@pytest.mark.parametrize("variant", mk.VARIANTS)
def test_committed_configs_are_the_demo_configs(variant: str) -> None:
    from auditor.demo.shortcut import DEMO_CONFIG

    name = f"config-{variant}.toml"
    expected = DEMO_CONFIG.format(variant=variant, weights=f"demo-{variant}.pt", config_name=name)
    assert (EXAMPLE / name).read_text(encoding="utf-8") == expected, HINT


def test_rendered_files_are_all_there() -> None:
    for variant in mk.VARIANTS:
        for name in mk.RUN_FILES:
            assert (EXAMPLE / variant / name).is_file(), f"{variant}/{name} missing: {HINT}"
    for name in mk.COMPARE_FILES:
        assert (EXAMPLE / "compare" / name).is_file(), f"compare/{name} missing: {HINT}"


def test_summary_has_the_keys_the_current_code_writes(demo_run: Path) -> None:
    """The shortcut example and the session's demo run audit the same config and data: the
    same key structure (values are not compared: PDFs, timings, paths differ)."""
    committed = json.loads((EXAMPLE / "shortcut" / "summary.json").read_text(encoding="utf-8"))
    current = json.loads((demo_run / "summary.json").read_text(encoding="utf-8"))
    assert committed["schema_version"] == current["schema_version"], HINT
    missing = sorted(key_paths(current) - key_paths(committed))
    extra = sorted(key_paths(committed) - key_paths(current))
    assert not missing and not extra, f"{HINT}: keys missing {missing[:10]}, extra {extra[:10]}"


def test_results_read_back_with_the_current_codec() -> None:
    from auditor.results import AuditResult, ComparisonResult

    for variant in mk.VARIANTS:
        raw = json.loads((EXAMPLE / variant / "summary.json").read_text(encoding="utf-8"))
        AuditResult.from_json(raw)
    raw = json.loads((EXAMPLE / "compare" / "comparison.json").read_text(encoding="utf-8"))
    result = ComparisonResult.from_json(raw)
    assert result.passed is True


def _first_difference(a: str, b: str) -> str:
    """Where two texts first differ, with some context of each."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo, hi = max(0, i - 80), i + 80
    return f"at character {i} of {len(a)}/{len(b)}: {a[lo:hi]!r} vs {b[lo:hi]!r}"


@pytest.mark.parametrize("variant", mk.VARIANTS)
def test_committed_report_renders_byte_identical(variant: str, tmp_path: Path) -> None:
    """The committed run folder (summary.json, samples.parquet, gallery/) rendered by the
    current code gives the committed report.html byte for byte (issue 21: the view model
    changes no byte of the report). Intended changes to the report: run `make examples`."""
    from auditor.report import render_html

    src = EXAMPLE / variant
    run = tmp_path / variant
    run.mkdir()
    for name in ("summary.json", "samples.parquet"):
        (run / name).write_bytes((src / name).read_bytes())
    (run / "gallery").mkdir()
    for png in (src / "gallery").iterdir():
        (run / "gallery" / png.name).write_bytes(png.read_bytes())
    rendered = render_html(run).read_bytes()
    committed = (src / "report.html").read_bytes()
    assert rendered == committed, (
        f"{variant}/report.html differs from a re-render "
        f"{_first_difference(rendered.decode(), committed.decode())}: {HINT} if intended"
    )
