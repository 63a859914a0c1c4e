"""Typed results: summary.json round-trips unchanged; results are frozen; metadata is typed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from auditor.audit.store import dumps_json
from auditor.results import (
    AuditResult,
    ClassResult,
    Finding,
    MethodInfo,
    Stat,
    freeze,
    method_info,
    thaw,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "example_audits").rglob("summary.json"))


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_committed_summaries_round_trip_byte_for_byte(path: Path) -> None:
    raw = path.read_bytes()
    data = json.loads(raw)
    result = AuditResult.from_json(data)
    assert result.to_json() == data
    assert dumps_json(result.to_json()) == raw  # same keys, same order, same numbers
    # and the typed view reads what the JSON says
    name, cls = next(iter(data["classes"].items()))
    stat = result.classes[name].stat(data["primary_method"], "background_focus")
    assert stat == Stat(**cls["metrics"][data["primary_method"]]["background_focus"])
    assert [f.id for f in result.findings] == [f["id"] for f in data["findings"]]
    assert result.passed is data["gates"]["passed"]


def test_unknown_keys_are_kept_and_missing_ones_defaulted() -> None:
    data = {
        "schema_version": 1,
        "methods": ["gradcam"],
        "primary_method": "gradcam",
        "classes": {"a": {"n": 2, "future_field": [1, 2], "metrics": {}}},
        "findings": [
            {
                "class": "a",
                "kind": "k",
                "severity": "low",
                "title": "t",
                "message": "m",
                "evidence": {"x": 1},
                "id": "F1",
                "examples": [],
                "members": ["s1"],
            }
        ],
        "subgroups": {"a": []},
    }
    result = AuditResult.from_json(data)
    out = result.to_json()
    assert out["classes"]["a"]["future_field"] == [1, 2]
    assert out["findings"][0]["members"] == ["s1"]
    assert out["subgroups"] == {"a": []}
    assert out["classes"]["a"]["accuracy"] is None  # not computed: None, never 0
    assert result.classes["a"].stat("gradcam", "iou") is None
    assert out["gates"] is None and result.passed


def test_results_are_frozen() -> None:
    c = ClassResult(name="a", metrics=freeze({"gradcam": {"iou": Stat(0.5, 0.4, 0.6, 3, 0)}}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.metrics["gradcam"]["iou"] = Stat()  # type: ignore[index]
    f = Finding(kind="k", severity="high", title="t", message="m", evidence={"ci": [0.1, 0.2]})
    with pytest.raises(TypeError):
        f.evidence["ci"] = 1  # type: ignore[index]
    assert thaw(f.evidence) == {"ci": [0.1, 0.2]}


def test_bad_input_is_refused_with_the_culprit() -> None:
    with pytest.raises(ValueError, match="`schema_version` must be 1, got 2"):
        AuditResult.from_json({"schema_version": 2})
    with pytest.raises(TypeError, match="`classes.a` must be a JSON object, got list"):
        AuditResult.from_json({"classes": {"a": [1]}})
    with pytest.raises(ValueError, match="`severity` must be one of"):
        Finding(kind="k", severity="urgent", title="t", message="m")


def test_method_info_reads_the_registration_then_the_docstring() -> None:
    from auditor.cam import METHODS

    for name, m in METHODS.items():
        info = method_info(m)
        assert isinstance(info, MethodInfo) and info.name == name
        assert info.formula and info.description and info.reference, name
        assert "A registered CAM method" not in info.description

    @dataclasses.dataclass
    class Registered:
        name: str = "mine"
        title: str = "My-CAM"
        formula: str = "M = A"
        reference: str = "Me 2026"
        description: str = "The activations."
        fn: object = None

    info = method_info(Registered())
    assert (info.title, info.formula, info.reference, info.description) == (
        "My-CAM",
        "M = A",
        "Me 2026",
        "The activations.",
    )


def test_preserved_training_flags_restores_each_module_also_on_error() -> None:
    from torch import nn

    from auditor.audit.modelstate import preserved_training_flags

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # a user's deliberate mix
    with pytest.raises(RuntimeError, match="boom"):
        with preserved_training_flags(model, eval=True):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, True, False]
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        with preserved_training_flags("model"):  # type: ignore[arg-type]
            pass
