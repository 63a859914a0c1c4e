"""The one result codec (issue 21): summary.json and comparison.json stay byte-identical through
the typed API, every result class round-trips, and the codec's rules hold on edge cases."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from auditor.audit.store import dumps_json
from auditor.results import (
    AuditResult,
    ClassClusters,
    ComparisonResult,
    DatasetInfo,
    Finding,
    GateResult,
    Gates,
    MetricInfo,
    RunInfo,
    SanityCheck,
    SanityResult,
    SanityStatus,
    Stat,
    SubgroupTest,
    TransplantResult,
)
from auditor.results.codec import decode, encode, extra_field, jfield, json_keys

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = sorted((ROOT / "example_audits").rglob("summary.json"))
COMPARISONS = sorted((ROOT / "example_audits").rglob("comparison.json"))


def _results(obj: Any) -> Iterator[Any]:
    """Every result dataclass inside ``obj`` (itself included), depth first."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield obj
        for f in dataclasses.fields(obj):
            yield from _results(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _results(v)
    elif isinstance(obj, tuple):
        for v in obj:
            yield from _results(v)


def _read_back(obj: Any) -> Any:
    """``type(obj).from_json(obj.to_json())`` for each signature the classes have."""
    cls = type(obj)
    if (
        "name" in {f.name for f in dataclasses.fields(obj)}
        and cls.from_json.__code__.co_argcount == 3
    ):
        return cls.from_json(obj.name, obj.to_json())
    return cls.from_json(obj.to_json())


# --------------------------------------------------------------------------------------------
# the gate: committed runs and a fresh demo run, byte for byte
# --------------------------------------------------------------------------------------------
def test_the_committed_examples_are_there() -> None:
    assert len(SUMMARIES) >= 2 and len(COMPARISONS) >= 1, (SUMMARIES, COMPARISONS)


@pytest.mark.parametrize("path", SUMMARIES + COMPARISONS, ids=lambda p: p.parent.name)
def test_committed_outputs_reserialise_byte_identically(path: Path) -> None:
    raw = path.read_bytes()
    data = json.loads(raw)
    typed = (ComparisonResult if data.get("kind") == "comparison" else AuditResult).from_json(data)
    assert dumps_json(typed.to_json()) == raw
    assert dumps_json(json.loads(json.dumps(typed.to_json(), allow_nan=False))) == raw


@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: p.parent.name)
def test_every_nested_result_round_trips_on_its_own(path: Path) -> None:
    result = AuditResult.from_json(json.loads(path.read_bytes()))
    seen: set[str] = set()
    for obj in _results(result):
        if not hasattr(obj, "from_json"):
            continue
        seen.add(type(obj).__name__)
        again = _read_back(obj)
        assert again == obj, type(obj).__name__
        assert again.to_json() == obj.to_json(), type(obj).__name__
    for cls in result.classes.values():  # typed views of additive keys
        if cls.transplant is not None:
            seen.add("TransplantResult")
            assert TransplantResult.from_json(cls.transplant.to_json()) == cls.transplant
    expected = {"Stat", "ClassResult", "Finding", "RunInfo", "DatasetInfo", "MetricInfo",
                "SanityResult", "SanityStatus", "Gates", "GateResult", "ClassClusters"}  # fmt: skip
    assert expected <= seen, expected - seen


def test_a_fresh_demo_run_reserialises_byte_identically(demo_run: Path) -> None:
    raw = (demo_run / "summary.json").read_bytes()
    result = AuditResult.from_json(json.loads(raw))
    assert dumps_json(result.to_json()) == raw
    # the fields that used to land in `extra`
    assert result.run.aggregation in ("exact", "streaming")
    assert "aggregation" not in result.run.extra
    assert result.dataset.n_nonfinite_logits == 0
    assert "n_nonfinite_logits" not in result.dataset.extra
    # the sanity check: typed status, and sanity.json written by SanityCheck, byte for byte
    assert isinstance(result.sanity_status, SanityStatus)
    assert result.sanity_status.state == "run" and result.sanity_status.randomised
    stored = (demo_run / "sanity.json").read_bytes()
    check = SanityCheck.from_json(json.loads(stored))
    assert dumps_json(check.to_json()) == stored
    assert check.status == result.sanity_status
    assert dict(check.results) == dict(result.sanity or {})


# --------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------
def test_none_is_kept_and_never_replaced_by_a_number() -> None:
    s = Stat.from_json({"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_nan": 3})
    assert s == Stat(None, None, None, 0, 3)
    assert s.to_json() == {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "n_nan": 3}
    run = RunInfo.from_json({"seed": None, "duration_s": None, "config": None})
    assert run.seed is None and run.duration_s is None and run.config is None
    assert run.to_json()["config"] is None and "aggregation" not in run.to_json()


def test_nan_is_never_written_as_a_number() -> None:
    s = Stat(mean=math.nan, ci_low=0.1, ci_high=math.inf, n=2)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        json.dumps(s.to_json(), allow_nan=False)
    written = json.loads(dumps_json(s.to_json()))  # the project's writer: null, not NaN
    assert written == {"mean": None, "ci_low": 0.1, "ci_high": None, "n": 2, "n_nan": 0}
    assert Stat.from_json(written).mean is None


def test_empty_lists_and_objects_round_trip() -> None:
    data = {
        "schema_version": 1,
        "methods": [],
        "primary_method": "",
        "classes": {},
        "findings": [],
        "clusters": {"a": {"k": 0, "eigengap": None, "clusters": [], "subgroups": []}},
        "gallery": {"a": []},
        "gates": {"passed": True, "results": []},
    }
    out = AuditResult.from_json(data).to_json()
    assert out["methods"] == [] and out["findings"] == [] and out["classes"] == {}
    assert out["clusters"] == {"a": {"k": 0, "eigengap": None, "clusters": [], "subgroups": []}}
    assert out["gallery"] == {"a": []} and out["gates"] == {"passed": True, "results": []}


def test_nested_optionals_are_absent_null_or_present() -> None:
    # ClassClusters.subgroups: absent -> None (key left out), [] -> (), written after extras
    bare = ClassClusters.from_json({"k": 2, "clusters": []})
    assert bare.subgroups is None and "subgroups" not in bare.to_json()
    full = ClassClusters.from_json({"k": 2, "subgroups": [{"cluster": 1}], "later": 1})
    assert list(full.to_json()) == ["k", "eigengap", "clusters", "later", "subgroups"]
    assert full.subgroups is not None and full.subgroups[0].cluster == 1
    # AuditResult: optional sections stay None; sanity_status absent in older summaries
    old = AuditResult.from_json({"methods": ["gradcam"], "interventions": None})
    assert old.confusion is None and old.sanity is None and old.gates is None
    assert old.sanity_status is None and "sanity_status" not in old.to_json()
    assert old.primary_method == "gradcam"  # defaults to the first method
    assert old.classes == {} and old.overall.accuracy is None


def test_keys_the_classes_do_not_know_are_kept_after_the_known_ones() -> None:
    g = GateResult.from_json({"zzz": 1, "passed": True, "rule": "r", "class": "a"})
    assert list(g.to_json()) == [*json_keys(GateResult), "zzz"]
    assert g.cls == "a" and g.passed and g.to_json()["class"] == "a"
    d = DatasetInfo.from_json({"future": [1], "n_nonfinite_logits": 2, "skipped": [{"id": "x"}]})
    assert d.n_nonfinite_logits == 2 and d.n_skipped == 1 and dict(d.extra) == {"future": (1,)}
    assert list(d.to_json())[-2:] == ["n_nonfinite_logits", "future"]


def test_renamed_and_fallback_keys() -> None:
    f = Finding.from_json({"class": "cat", "kind": "k", "severity": "HIGH", "message": "m"})
    assert (f.cls, f.severity, f.title) == ("cat", "high", "m")  # title falls back to message
    assert Finding.from_json({"severity": "urgent"}).severity == "info"
    assert Finding.from_json({}).kind == "other"
    m = MetricInfo.from_json("iou", {"category": "nonsense", "range": [0, 1]})
    assert (m.name, m.title, m.category, m.range) == ("iou", "iou", "localisation", (0.0, 1.0))
    assert "table" not in m.to_json() and dataclasses.replace(m, table=True).to_json()["table"]
    assert Gates.from_json({}) == Gates(passed=False)  # no verdict recorded: not passed


def test_numbers_are_kept_as_written_where_declared() -> None:
    t = SubgroupTest.from_json({"name": "bf", "subgroup": 1, "ci": [0]})
    assert t.subgroup == 1 and isinstance(t.subgroup, int) and t.ci == (0, None)
    assert Stat.from_json({"mean": 1}).mean == 1.0 and Stat.from_json({"mean": "x"}).mean is None


def test_bad_input_names_the_culprit() -> None:
    with pytest.raises(TypeError, match="`findings\\[0\\].evidence` must be a JSON object"):
        AuditResult.from_json({"findings": [{"evidence": [1]}]})
    with pytest.raises(TypeError, match="`run.timings` must be a JSON object, got str"):
        AuditResult.from_json({"run": {"timings": "fast"}})
    with pytest.raises(ValueError, match="`transplant.flip_ci` must be a list of 2"):
        TransplantResult.from_json({"status": "not_run", "flip_ci": [1]})
    with pytest.raises(ValueError, match="could not convert string to float"):
        TransplantResult.from_json({"status": "not_run", "flip_rate": "high"})  # strict class


# --------------------------------------------------------------------------------------------
# the typed sanity status
# --------------------------------------------------------------------------------------------
def test_sanity_status_is_typed_and_its_json_unchanged() -> None:
    ran = SanityStatus.ran("randomised fc", ["fc"])
    assert ran.to_json() == {"run": True, "reason": "randomised fc", "randomised": ["fc"]}
    assert ran.run and ran.state == "run" and ran.get("reason") == "randomised fc"
    assert ran["randomised"] == ["fc"] and ran.get("nothing") is None  # read like the old dict
    with pytest.raises(KeyError):
        ran["nothing"]
    off = SanityStatus.from_json({"run": False, "reason": "disabled", "randomised": []})
    assert off == SanityStatus.not_run("disabled") and not off.run
    with pytest.raises(ValueError, match="`state` must be one of"):
        SanityStatus("maybe")  # type: ignore[arg-type]
    # an AuditResult given the old plain mapping converts it
    r = AuditResult(methods=("gradcam",), primary_method="gradcam",
                    sanity_status={"run": False, "reason": "x", "randomised": []})  # fmt: skip
    assert r.sanity_status == SanityStatus.not_run("x")


def test_sanity_json_keeps_its_status_key_in_one_place() -> None:
    record = {
        "gradcam": {
            "similarity": 0.3,
            "threshold": 0.5,
            "trustworthy": True,
            "n": 8,
            "randomised": ["fc"],
        },  # fmt: skip
        "_status": {"run": True, "reason": "r", "randomised": ["fc"]},
    }
    check = SanityCheck.from_json(record)
    assert check.status.run and set(check.results) == {"gradcam"}
    assert isinstance(check.results["gradcam"], SanityResult)
    assert check.to_json() == record and list(check.to_json()) == ["gradcam", "_status"]
    older = SanityCheck.from_json({"_skipped": "no samples"})  # written before the status
    assert older.status == SanityStatus.not_run("no samples") and not older.results
    assert SanityCheck.from_json({}).status == SanityStatus.not_run("not run")


# --------------------------------------------------------------------------------------------
# the codec on a class declared here (a contributor's new result needs no to/from JSON code)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Leaf:
    x: float | None = None
    extra: Mapping[str, Any] = extra_field()


def _is_none(v: Any) -> bool:
    return v is None


@dataclasses.dataclass(frozen=True)
class _Tree:
    name: str = jfield(from_name=True)
    kind: str = jfield("leafy", key="type")
    leaves: tuple[_Leaf, ...] = ()
    by_name: Mapping[str, _Leaf] = dataclasses.field(default_factory=dict)
    best: _Leaf | None = None
    note: str | None = jfield(None, omit=_is_none)
    size: int = 0
    extra: Mapping[str, Any] = extra_field()

    _JSON_ORDER = ("type", "size", "leaves", "by_name", "best", "note")


def test_a_new_class_is_encoded_from_its_fields() -> None:
    t = _Tree("oak", leaves=(_Leaf(1.0),), by_name={"a": _Leaf(None)}, size=3)
    out = encode(t)
    leaves, by_name = [{"x": 1.0}], {"a": {"x": None}}
    assert out == {"type": "leafy", "size": 3, "leaves": leaves, "by_name": by_name, "best": None}
    back = decode(_Tree, json.loads(json.dumps(out)), "trees.oak", name="oak")
    assert back == t and back.name == "oak" and isinstance(back.leaves, tuple)
    with pytest.raises(TypeError, match="`trees.oak.best` must be a JSON object, got int"):
        decode(_Tree, {"best": 3}, "trees.oak", name="oak")


def test_a_wrong_json_order_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Bad:
        a: int = 0
        b: int = 0
        _JSON_ORDER = ("a", "c")

    with pytest.raises(TypeError, match="_JSON_ORDER must list its JSON keys"):
        encode(Bad())
