"""Typed results of an audit: the one source of truth from analysis to report.

:func:`auditor.analysis.analyse` returns an :class:`AuditResult`; the runner completes it
(provenance, model, dataset, gates, gallery) and writes ``summary.json`` with
:meth:`AuditResult.to_json`; gates, exports, the report context and ``compare`` read it back
with :meth:`AuditResult.from_json`. Every class here is a frozen dataclass.

The JSON form is ``summary.json`` schema_version 1 (DESIGN 4.3), unchanged: ``from_json`` then
``to_json`` gives back the same object for every summary the auditor writes (pinned by
``tests/test_results.py`` on the committed example runs). Keys a class does not know (added
by a later version, or by a user) are kept in its ``extra`` mapping and written back after
the known ones, so a round trip never drops data. Missing keys take the documented defaults
(``None`` for a value that was not computed, never an invented number).

Lists are stored as tuples and objects as read-only mappings (``types.MappingProxyType``),
so a result cannot be edited by accident after it was computed; use
:func:`dataclasses.replace` to derive a changed copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from auditor.audit.status import migrate_status
from auditor.results.transplant import TransplantResult, class_transplant
from auditor.results.vocab import CATEGORIES, SEVERITIES

__all__ = [
    "COMPARISON_SCHEMA_VERSION",
    "DATASET_KEYS",
    "EVIDENCE_LABELS",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "AuditResult",
    "ClassClusters",
    "ClassResult",
    "ComparisonResult",
    "Confusion",
    "DatasetInfo",
    "Finding",
    "GalleryPanel",
    "GateResult",
    "Gates",
    "Interventions",
    "MethodAgreement",
    "MethodInfo",
    "MetricInfo",
    "ModelInfo",
    "OverallResult",
    "RunInfo",
    "SanityResult",
    "Stat",
    "SubgroupResult",
    "SubgroupTest",
    "SubgroupDetail",
    "TransplantResult",
    "evidence_label",
    "freeze",
    "method_info",
    "thaw",
]

#: ``summary.json`` schema version written by this code (DESIGN 4.3).
SCHEMA_VERSION = 1

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-like value: dicts → mappingproxy, lists → tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON data from a frozen value (mappings → dict, tuples → list, results → JSON)."""
    if hasattr(value, "to_json") and not isinstance(value, type):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise TypeError(f"`{where}` must be a JSON object, got {type(value).__name__}")
    return value


def _extra(src: Mapping[str, Any], known: Iterable[str]) -> Mapping[str, Any]:
    known = set(known)
    return freeze({k: v for k, v in src.items() if k not in known})


def _pair(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return (_opt_float(value[0]), _opt_float(value[1]))
    return (None, None)


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _with_extra(out: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if k not in out:
            out[k] = thaw(v)
    return out


def _method_metric_stats(value: Any, where: str) -> Mapping[str, Mapping[str, Stat]]:
    """``{method: {metric: Stat}}`` from its JSON form."""
    return MappingProxyType(
        {
            str(m): MappingProxyType(
                {str(k): Stat.from_json(v) for k, v in _obj(block, f"{where}.{m}").items()}
            )
            for m, block in _obj(value, where).items()
        }
    )


def _stats_json(value: Mapping[str, Mapping[str, Stat]]) -> dict[str, Any]:
    return {m: {k: s.to_json() for k, s in block.items()} for m, block in value.items()}


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """A mean with its confidence interval over ``n`` finite values (``n_nan`` NaN excluded).

    ``None`` where it could not be computed (no finite value), never a made-up number.
    """

    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    n_nan: int = 0

    @property
    def ci(self) -> tuple[float | None, float | None]:
        return (self.ci_low, self.ci_high)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "n_nan": self.n_nan,
        }

    @classmethod
    def from_json(cls, value: Any) -> Stat:
        d = _obj(value, "stat")
        return cls(
            mean=_opt_float(d.get("mean")),
            ci_low=_opt_float(d.get("ci_low")),
            ci_high=_opt_float(d.get("ci_high")),
            n=_opt_int(d.get("n")) or 0,
            n_nan=_opt_int(d.get("n_nan")) or 0,
        )


@dataclass(frozen=True)
class Interventions:
    """Per-class accuracies under background interventions (Xiao et al. 2021).

    ``only_fg_drop`` = accuracy − only-foreground accuracy with its paired bootstrap interval;
    ``background_gap`` = accuracy − mixed-random-background accuracy.
    """

    accuracy: float | None = None
    n: int = 0
    only_fg_accuracy: float | None = None
    only_bg_accuracy: float | None = None
    mixed_rand_accuracy: float | None = None
    only_fg_drop: float | None = None
    only_fg_drop_ci: tuple[float | None, float | None] = (None, None)
    background_gap: float | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "accuracy",
        "n",
        "only_fg_accuracy",
        "only_bg_accuracy",
        "mixed_rand_accuracy",
        "only_fg_drop",
        "only_fg_drop_ci",
        "background_gap",
    )

    def get(self, key: str, default: Any = None) -> Any:
        """The quantity ``key`` (a field or an extra key), ``default`` if absent."""
        if key in self._KEYS:
            return getattr(self, key)
        return self.extra.get(key, default)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS}
        out["only_fg_drop_ci"] = list(self.only_fg_drop_ci)
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> Interventions | None:
        if value is None:
            return None
        d = _obj(value, "interventions")
        return cls(
            accuracy=_opt_float(d.get("accuracy")),
            n=_opt_int(d.get("n")) or 0,
            only_fg_accuracy=_opt_float(d.get("only_fg_accuracy")),
            only_bg_accuracy=_opt_float(d.get("only_bg_accuracy")),
            mixed_rand_accuracy=_opt_float(d.get("mixed_rand_accuracy")),
            only_fg_drop=_opt_float(d.get("only_fg_drop")),
            only_fg_drop_ci=_pair(d.get("only_fg_drop_ci")),
            background_gap=_opt_float(d.get("background_gap")),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class ClassResult:
    """One class: accuracy (Wilson interval), metrics per method, interventions, flags."""

    name: str
    index: int | None = None
    n: int = 0
    accuracy: float | None = None
    accuracy_ci: tuple[float | None, float | None] = (None, None)
    metrics: Mapping[str, Mapping[str, Stat]] = field(default_factory=_empty)
    interventions: Interventions | None = None
    flagged: bool = False
    flags: tuple[str, ...] = ()
    risk: float | None = 0.0
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "index",
        "n",
        "accuracy",
        "accuracy_ci",
        "metrics",
        "interventions",
        "flagged",
        "flags",
        "risk",
    )

    def stat(self, method: str, metric: str) -> Stat | None:
        """The interval of ``metric`` for ``method``, ``None`` if it was not measured."""
        return self.metrics.get(method, _EMPTY).get(metric)

    @property
    def transplant(self) -> TransplantResult | None:
        """The transplant intervention's result (issue 22; summary.json
        ``classes[<name>]["transplant"]``), ``None`` when the run has none."""
        return class_transplant(self)

    def to_json(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "n": self.n,
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci),
            "metrics": _stats_json(self.metrics),
            "interventions": None if self.interventions is None else self.interventions.to_json(),
            "flagged": self.flagged,
            "flags": list(self.flags),
            "risk": self.risk,
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, name: str, value: Any) -> ClassResult:
        d = _obj(value, f"classes.{name}")
        return cls(
            name=str(name),
            index=_opt_int(d.get("index")),
            n=_opt_int(d.get("n")) or 0,
            accuracy=_opt_float(d.get("accuracy")),
            accuracy_ci=_pair(d.get("accuracy_ci")),
            metrics=_method_metric_stats(d.get("metrics"), f"classes.{name}.metrics"),
            interventions=Interventions.from_json(d.get("interventions")),
            flagged=bool(d.get("flagged", False)),
            flags=tuple(str(f) for f in d.get("flags") or ()),
            risk=_opt_float(d.get("risk")),
            extra=_extra(d, cls._KEYS),
        )


def _migrate_status_counts(counts: Mapping[str, Any]) -> dict[str, Any]:
    """Status counts of an older summary.json in the one vocabulary (:mod:`auditor.audit.status`).

    Runs written before the vocabulary was one say ``nonfinite_cam`` where they now say
    ``nonfinite``; counts of a renamed status are added to the new name's.
    """
    out: dict[str, Any] = {}
    for method, per in counts.items():
        if not isinstance(per, Mapping):
            out[method] = per
            continue
        merged: dict[str, Any] = {}
        for status, n in per.items():
            key = migrate_status(str(status))
            if key in merged and isinstance(n, int) and isinstance(merged[key], int):
                merged[key] += n
            else:
                merged[key] = n
        out[method] = merged
    return out


@dataclass(frozen=True)
class OverallResult:
    """The whole evaluation set: accuracy, metrics per method, per-sample status counts."""

    n: int = 0
    accuracy: float | None = None
    accuracy_ci: tuple[float | None, float | None] = (None, None)
    metrics: Mapping[str, Mapping[str, Stat]] = field(default_factory=_empty)
    status_counts: Mapping[str, Mapping[str, int]] = field(default_factory=_empty)
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("n", "accuracy", "accuracy_ci", "metrics", "status_counts")

    def stat(self, method: str, metric: str) -> Stat | None:
        return self.metrics.get(method, _EMPTY).get(metric)

    def to_json(self) -> dict[str, Any]:
        out = {
            "n": self.n,
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci),
            "metrics": _stats_json(self.metrics),
            "status_counts": thaw(self.status_counts),
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> OverallResult:
        d = _obj(value, "overall")
        return cls(
            n=_opt_int(d.get("n")) or 0,
            accuracy=_opt_float(d.get("accuracy")),
            accuracy_ci=_pair(d.get("accuracy_ci")),
            metrics=_method_metric_stats(d.get("metrics"), "overall.metrics"),
            status_counts=freeze(
                _migrate_status_counts(_obj(d.get("status_counts"), "overall.status_counts"))
            ),
            extra=_extra(d, cls._KEYS),
        )


# --------------------------------------------------------------------------------------------
# findings, subgroups, sanity, gates
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One finding: ``cls`` is the class it concerns (``None`` for run-wide findings).

    ``evidence`` holds the numbers the finding rests on (keys are metric or statistic names;
    the report prints them with readable labels); ``examples`` are sample ids.
    """

    kind: str
    severity: str
    title: str
    message: str
    cls: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=_empty)
    examples: tuple[str, ...] = ()
    id: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("class", "kind", "severity", "title", "message", "evidence", "id", "examples")

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"`severity` must be one of {SEVERITIES}, got {self.severity!r}")
        if not isinstance(self.evidence, MappingProxyType):
            object.__setattr__(self, "evidence", freeze(dict(self.evidence)))

    def to_json(self) -> dict[str, Any]:
        out = {
            "class": self.cls,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "evidence": thaw(self.evidence),
            "id": self.id,
            "examples": list(self.examples),
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> Finding:
        d = _obj(value, "finding")
        sev = str(d.get("severity") or "info").lower()
        return cls(
            cls=None if d.get("class") is None else str(d.get("class")),
            kind=str(d.get("kind") or "other"),
            severity=sev if sev in SEVERITIES else "info",
            title=str(d.get("title") or d.get("message") or d.get("kind") or ""),
            message=str(d.get("message") or ""),
            evidence=freeze(_obj(d.get("evidence"), "finding.evidence")),
            id=str(d.get("id") or ""),
            examples=tuple(str(x) for x in d.get("examples") or ()),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class SubgroupResult:
    """A group of a class's samples whose explanations differ (a SpRAy cluster, Lapuschkin
    et al. 2019): its size, mean background focus, exemplar ids and gallery files."""

    id: int
    size: int
    background_focus: float | None = None
    exemplars: tuple[str, ...] = ()
    outlier: bool = False
    gallery: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("id", "size", "background_focus", "exemplars", "outlier", "gallery")

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "size": self.size,
            "background_focus": self.background_focus,
            "exemplars": list(self.exemplars),
            "outlier": self.outlier,
            "gallery": list(self.gallery),
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> SubgroupResult:
        d = _obj(value, "cluster")
        return cls(
            id=_opt_int(d.get("id")) or 0,
            size=_opt_int(d.get("size")) or 0,
            background_focus=_opt_float(d.get("background_focus")),
            exemplars=tuple(str(x) for x in d.get("exemplars") or ()),
            outlier=bool(d.get("outlier", False)),
            gallery=tuple(str(x) for x in d.get("gallery") or ()),
            extra=_extra(d, cls._KEYS),
        )


def _number(value: Any) -> int | float | None:
    """A JSON number kept as written (int stays int), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _numbers(value: Any, n: int) -> tuple[Any, ...]:
    items = list(value) if isinstance(value, list | tuple) else []
    return tuple(_number(v) for v in (items + [None] * n)[:n])


@dataclass(frozen=True)
class SubgroupTest:
    """One statistic of a tested subgroup against the rest of its class
    (:class:`auditor.analysis.spray.subgroups.StatTest` as summary.json stores it)."""

    name: str
    subgroup: float | None = None
    rest: float | None = None
    diff: float | None = None
    ci: tuple[float | None, float | None] = (None, None)
    n_subgroup: int = 0
    n_rest: int = 0
    method: str = ""
    confidence: float | None = None
    margin: float | None = None
    baseline: float | None = None
    separates: bool = False
    direction: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "name", "subgroup", "rest", "diff", "ci", "n_subgroup", "n_rest", "method",
        "confidence", "margin", "baseline", "separates", "direction",
    )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS}
        out["ci"] = list(self.ci)
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> SubgroupTest:
        d = _obj(value, "subgroup test")
        lo, hi = _numbers(d.get("ci"), 2)
        return cls(
            name=str(d.get("name") or ""),
            subgroup=_number(d.get("subgroup")),
            rest=_number(d.get("rest")),
            diff=_number(d.get("diff")),
            ci=(lo, hi),
            n_subgroup=_opt_int(d.get("n_subgroup")) or 0,
            n_rest=_opt_int(d.get("n_rest")) or 0,
            method=str(d.get("method") or ""),
            confidence=_number(d.get("confidence")),
            margin=_number(d.get("margin")),
            baseline=_number(d.get("baseline")),
            separates=bool(d.get("separates", False)),
            direction=str(d.get("direction") or ""),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class SubgroupDetail:
    """A SpRAy cluster tested against the rest of its class
    (:mod:`auditor.analysis.spray.subgroups`):
    where its maps look, which statistics separate it, whether an intervention shows the model
    needs what it looks at, and its severity. ``cluster`` is the :class:`SubgroupResult` id."""

    cluster: int
    size: int = 0
    class_size: int = 0
    members: tuple[str, ...] = ()
    exemplars: tuple[str, ...] = ()
    rest_exemplars: tuple[str, ...] = ()
    severity: str = "low"
    separating: tuple[str, ...] = ()
    elsewhere: bool = False
    elsewhere_statistic: str | None = None
    needed: bool = False
    needed_statistic: str | None = None
    interventions: bool = False
    where: str = ""
    region_share: float | None = None
    rest_region_share: float | None = None
    border_share: float | None = None
    only_bg_rate: tuple[float | None, float | None, float | None] = (None, None, None)
    tests: Mapping[str, SubgroupTest] = field(default_factory=_empty)
    gallery: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "cluster", "size", "class_size", "members", "exemplars", "rest_exemplars", "severity",
        "separating", "elsewhere", "elsewhere_statistic", "needed", "needed_statistic",
        "interventions", "where", "region_share", "rest_region_share", "border_share",
        "only_bg_rate", "tests", "gallery",
    )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._KEYS:
            value = getattr(self, key)
            if key == "tests":
                out[key] = {k: t.to_json() for k, t in value.items()}
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> SubgroupDetail:
        d = _obj(value, "subgroup")

        def strs(key: str) -> tuple[str, ...]:
            return tuple(str(x) for x in d.get(key) or ())

        def opt_str(key: str) -> str | None:
            return None if d.get(key) is None else str(d.get(key))

        rate = _numbers(d.get("only_bg_rate"), 3)
        return cls(
            cluster=_opt_int(d.get("cluster")) or 0,
            size=_opt_int(d.get("size")) or 0,
            class_size=_opt_int(d.get("class_size")) or 0,
            members=strs("members"),
            exemplars=strs("exemplars"),
            rest_exemplars=strs("rest_exemplars"),
            severity=str(d.get("severity") or "low"),
            separating=strs("separating"),
            elsewhere=bool(d.get("elsewhere", False)),
            elsewhere_statistic=opt_str("elsewhere_statistic"),
            needed=bool(d.get("needed", False)),
            needed_statistic=opt_str("needed_statistic"),
            interventions=bool(d.get("interventions", False)),
            where=str(d.get("where") or ""),
            region_share=_number(d.get("region_share")),
            rest_region_share=_number(d.get("rest_region_share")),
            border_share=_number(d.get("border_share")),
            only_bg_rate=(rate[0], rate[1], rate[2]),
            tests=MappingProxyType(
                {
                    str(k): SubgroupTest.from_json(t)
                    for k, t in _obj(d.get("tests"), "subgroup.tests").items()
                }
            ),
            gallery=strs("gallery"),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class ClassClusters:
    """The clustering of one class's maps: ``k`` clusters chosen by the eigengap."""

    k: int
    eigengap: float | None = None
    clusters: tuple[SubgroupResult, ...] = ()
    subgroups: tuple[SubgroupDetail, ...] | None = None
    """The clusters tested against the rest of the class (``None``: not analysed)."""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("k", "eigengap", "clusters", "subgroups")

    def to_json(self) -> dict[str, Any]:
        out = {
            "k": self.k,
            "eigengap": self.eigengap,
            "clusters": [c.to_json() for c in self.clusters],
        }
        out = _with_extra(out, self.extra)
        if self.subgroups is not None:  # written last, where the analysis puts it
            out["subgroups"] = [sg.to_json() for sg in self.subgroups]
        return out

    @classmethod
    def from_json(cls, value: Any) -> ClassClusters:
        d = _obj(value, "clusters")
        return cls(
            k=_opt_int(d.get("k")) or 0,
            eigengap=_opt_float(d.get("eigengap")),
            clusters=tuple(SubgroupResult.from_json(c) for c in d.get("clusters") or ()),
            subgroups=None
            if d.get("subgroups") is None
            else tuple(SubgroupDetail.from_json(sg) for sg in d.get("subgroups") or ()),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class SanityResult:
    """Model-randomisation check of one method (Adebayo et al. 2018): rank correlation of the
    maps before/after the layers in ``randomised`` were re-initialised."""

    similarity: float | None = None
    threshold: float | None = None
    trustworthy: bool = True
    n: int = 0
    randomised: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("similarity", "threshold", "trustworthy", "n", "randomised")

    def to_json(self) -> dict[str, Any]:
        out = {
            "similarity": self.similarity,
            "threshold": self.threshold,
            "trustworthy": self.trustworthy,
            "n": self.n,
            "randomised": list(self.randomised),
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> SanityResult:
        d = _obj(value, "sanity")
        return cls(
            similarity=_opt_float(d.get("similarity")),
            threshold=_opt_float(d.get("threshold")),
            trustworthy=bool(d.get("trustworthy", True)),
            n=_opt_int(d.get("n")) or 0,
            randomised=tuple(str(x) for x in d.get("randomised") or ()),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class GateResult:
    """One gate check (a rule on one class, or run-wide when ``cls`` is None).

    ``value`` None means the quantity was not available, which fails the gate (``note`` says
    why).
    """

    rule: str
    passed: bool
    cls: str | None = None
    quantity: str | None = None
    stat: str | None = None
    value: float | None = None
    threshold: float | None = None
    bound: str | None = None
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("rule", "class", "quantity", "stat", "value", "threshold", "bound", "passed", "note")

    def to_json(self) -> dict[str, Any]:
        out = {
            "rule": self.rule,
            "class": self.cls,
            "quantity": self.quantity,
            "stat": self.stat,
            "value": self.value,
            "threshold": self.threshold,
            "bound": self.bound,
            "passed": self.passed,
            "note": self.note,
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> GateResult:
        d = _obj(value, "gate")
        return cls(
            rule=str(d.get("rule") or ""),
            cls=None if d.get("class") is None else str(d.get("class")),
            quantity=None if d.get("quantity") is None else str(d.get("quantity")),
            stat=None if d.get("stat") is None else str(d.get("stat")),
            value=_opt_float(d.get("value")),
            threshold=_opt_float(d.get("threshold")),
            bound=None if d.get("bound") is None else str(d.get("bound")),
            passed=bool(d.get("passed", False)),
            note=str(d.get("note") or ""),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class Gates:
    """Every gate check; ``passed`` is True when all passed (vacuously with no rule)."""

    passed: bool = True
    results: tuple[GateResult, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.results if not r.passed)

    def to_json(self) -> dict[str, Any]:
        out = {"passed": self.passed, "results": [r.to_json() for r in self.results]}
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> Gates | None:
        if value is None:
            return None
        d = _obj(value, "gates")
        return cls(
            passed=bool(d.get("passed", False)),
            results=tuple(GateResult.from_json(r) for r in d.get("results") or ()),
            extra=_extra(d, ("passed", "results")),
        )

    @classmethod
    def of(cls, results: Iterable[GateResult]) -> Gates:
        res = tuple(results)
        return cls(passed=all(r.passed for r in res), results=res)


# --------------------------------------------------------------------------------------------
# metadata (what a method or metric means, for the methodology section)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodInfo:
    """A CAM method as the report describes it: title, formula, description, reference."""

    name: str
    title: str = ""
    formula: str = ""
    reference: str = ""
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("title", "formula", "reference", "description")

    def to_json(self) -> dict[str, Any]:
        out = {
            "title": self.title,
            "formula": self.formula,
            "reference": self.reference,
            "description": self.description,
        }
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, name: str, value: Any) -> MethodInfo:
        d = _obj(value, f"methods_info.{name}")
        return cls(
            name=str(name),
            title=str(d.get("title") or name),
            formula=str(d.get("formula") or ""),
            reference=str(d.get("reference") or ""),
            description=str(d.get("description") or ""),
            extra=_extra(d, cls._KEYS),
        )




@dataclass(frozen=True)
class MetricInfo:
    """What a metric means, for people reading a report (in the spirit of Quantus' metric
    attributes, Hedström et al. 2023).

    ``higher_is_better``: ``True``/``False``, or ``None`` when neither direction is "good"
    (e.g. entropy, a description of the map). ``range``: the bounds of the per-sample value,
    ``None`` when unbounded or image-dependent. ``formula``: unicode only (HTML- and PDF-safe
    once escaped).
    """

    name: str
    title: str
    higher_is_better: bool | None
    category: str
    needs_mask: bool
    range: tuple[float, float] | None
    formula: str
    description: str
    reference: str
    table: bool = False
    """shown as a column of the report's per-class table"""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"`category` must be one of {CATEGORIES}, got {self.category!r}")
        if self.range is not None:
            if len(self.range) != 2 or not self.range[0] <= self.range[1]:
                raise ValueError(f"`range` must be (low, high) with low <= high, got {self.range}")
            object.__setattr__(self, "range", (float(self.range[0]), float(self.range[1])))

    @property
    def direction(self) -> str:
        """ "higher is better", "lower is better" or "descriptive"."""
        if self.higher_is_better is None:
            return "descriptive"
        return "higher is better" if self.higher_is_better else "lower is better"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "higher_is_better": self.higher_is_better,
            "category": self.category,
            "needs_mask": self.needs_mask,
            "range": None if self.range is None else list(self.range),
            "formula": self.formula,
            "description": self.description,
            "reference": self.reference,
            **({"table": True} if self.table else {}),
        }

    @classmethod
    def from_json(cls, name: str, value: Any) -> MetricInfo:
        d = _obj(value, f"metrics_info.{name}")
        rng = d.get("range")
        cat = str(d.get("category") or "localisation")
        hib = d.get("higher_is_better")
        return cls(
            name=str(d.get("name") or name),
            title=str(d.get("title") or name),
            higher_is_better=None if hib is None else bool(hib),
            category=cat if cat in CATEGORIES else "localisation",
            needs_mask=bool(d.get("needs_mask", False)),
            range=None if not isinstance(rng, list | tuple) or len(rng) != 2 else tuple(rng),
            formula=str(d.get("formula") or ""),
            description=str(d.get("description") or ""),
            reference=str(d.get("reference") or ""),
            table=bool(d.get("table", False)),
        )


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """The audited model: name, sha256 of its weights, where it came from, target layer."""

    name: str | None = None
    sha256: str | None = None
    source: str | None = None
    parameters: int | None = None
    num_classes: int | None = None
    target_layer: str | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = ("name", "sha256", "source", "parameters", "num_classes", "target_layer")

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS}
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> ModelInfo:
        d = _obj(value, "model")
        s = {k: (None if d.get(k) is None else str(d[k])) for k in ("name", "sha256", "source")}
        return cls(
            **s,
            parameters=_opt_int(d.get("parameters")),
            num_classes=_opt_int(d.get("num_classes")),
            target_layer=None if d.get("target_layer") is None else str(d["target_layer"]),
            extra=_extra(d, cls._KEYS),
        )


#: The keys of summary.json's ``dataset`` object, in the order the report reads them: the
#: fields of :class:`DatasetInfo`, and ``n_nonfinite_logits`` (the samples whose logits were
#: not finite, written by finalisation, carried in ``DatasetInfo.extra``).
DATASET_KEYS: tuple[str, ...] = (
    "name",
    "format",
    "sha256",
    "annotation_sha256",
    "n_samples",
    "n_evaluated",
    "n_skipped",
    "n_nonfinite_logits",
    "annotated",
    "input_size",
    "classes",
    "skipped",
)


@dataclass(frozen=True)
class DatasetInfo:
    """The evaluation set: hashes, counts, classes and the skipped samples with reasons."""

    name: str | None = None
    format: str | None = None
    sha256: str | None = None
    annotation_sha256: str | None = None
    n_samples: int | None = None
    n_evaluated: int = 0
    n_skipped: int = 0
    annotated: bool | None = None
    input_size: tuple[int, ...] = ()
    classes: tuple[str, ...] = ()
    skipped: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = tuple(k for k in DATASET_KEYS if k != "n_nonfinite_logits")

    def to_json(self) -> dict[str, Any]:
        out = {k: thaw(getattr(self, k)) for k in self._KEYS}
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> DatasetInfo:
        d = _obj(value, "dataset")
        s = {
            k: (None if d.get(k) is None else str(d[k]))
            for k in ("name", "format", "sha256", "annotation_sha256")
        }
        skipped = tuple(freeze(_obj(x, "dataset.skipped")) for x in d.get("skipped") or ())
        ann = d.get("annotated")
        return cls(
            **s,
            n_samples=_opt_int(d.get("n_samples")),
            n_evaluated=_opt_int(d.get("n_evaluated")) or 0,
            n_skipped=_opt_int(d.get("n_skipped")) or len(skipped),
            annotated=None if ann is None else bool(ann),
            input_size=tuple(int(x) for x in d.get("input_size") or ()),
            classes=tuple(str(c) for c in d.get("classes") or ()),
            skipped=skipped,
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class RunInfo:
    """When, how and with what the audit ran (timestamps, timings, seed, versions, config)."""

    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    timings: Mapping[str, float] = field(default_factory=_empty)
    config_sha256: str | None = None
    seed: int | None = None
    device: str | None = None
    command: str | None = None
    versions: Mapping[str, str] = field(default_factory=_empty)
    config: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "started",
        "finished",
        "duration_s",
        "timings",
        "config_sha256",
        "seed",
        "device",
        "command",
        "versions",
        "config",
    )

    def to_json(self) -> dict[str, Any]:
        out = {k: thaw(getattr(self, k)) for k in self._KEYS}
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> RunInfo:
        d = _obj(value, "run")
        s = {
            k: (None if d.get(k) is None else str(d[k]))
            for k in ("started", "finished", "config_sha256", "device", "command")
        }
        cfg = d.get("config")
        return cls(
            **s,
            duration_s=_opt_float(d.get("duration_s")),
            timings=freeze(_obj(d.get("timings"), "run.timings")),
            seed=_opt_int(d.get("seed")),
            versions=freeze(_obj(d.get("versions"), "run.versions")),
            config=None if cfg is None else freeze(_obj(cfg, "run.config")),
            extra=_extra(d, cls._KEYS),
        )


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix of the primary method's predictions: rows true, columns predicted."""

    classes: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "matrix": [list(r) for r in self.matrix]}

    @classmethod
    def from_json(cls, value: Any) -> Confusion | None:
        if value is None:
            return None
        d = _obj(value, "confusion")
        return cls(
            classes=tuple(str(c) for c in d.get("classes") or ()),
            matrix=tuple(tuple(r) for r in d.get("matrix") or ()),
        )


@dataclass(frozen=True)
class MethodAgreement:
    """Spearman correlation between methods of a per-sample metric (``None``: undefined)."""

    methods: tuple[str, ...]
    metric: str
    spearman: tuple[tuple[float | None, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "metric": self.metric,
            "spearman": [list(r) for r in self.spearman],
        }

    @classmethod
    def from_json(cls, value: Any) -> MethodAgreement | None:
        if value is None:
            return None
        d = _obj(value, "method_agreement")
        return cls(
            methods=tuple(str(m) for m in d.get("methods") or ()),
            metric=str(d.get("metric") or "energy_in_mask"),
            spearman=tuple(tuple(_opt_float(v) for v in r) for r in d.get("spearman") or ()),
        )


@dataclass(frozen=True)
class GalleryPanel:
    """One drawn example of a class (``file`` relative to the run directory) and why."""

    id: str
    file: str
    label: str | None = None
    pred: str | None = None
    confidence: float | None = None
    energy_in_mask: float | None = None
    background_focus: float | None = None
    why: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "id",
        "file",
        "label",
        "pred",
        "confidence",
        "energy_in_mask",
        "background_focus",
        "why",
    )

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS}
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> GalleryPanel:
        d = _obj(value, "gallery entry")
        return cls(
            id=str(d.get("id") or ""),
            file=str(d.get("file") or ""),
            label=None if d.get("label") is None else str(d["label"]),
            pred=None if d.get("pred") is None else str(d["pred"]),
            confidence=_opt_float(d.get("confidence")),
            energy_in_mask=_opt_float(d.get("energy_in_mask")),
            background_focus=_opt_float(d.get("background_focus")),
            why=str(d.get("why") or ""),
            extra=_extra(d, cls._KEYS),
        )


# --------------------------------------------------------------------------------------------
# the whole result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditResult:
    """Everything an audit found: ``summary.json`` as typed, frozen objects.

    ``classes`` keeps the dataset's class order; ``findings`` are sorted by severity and carry
    ids ``F1``, ``F2``, …; ``clusters``, ``sanity``, ``faithfulness`` are ``None`` when that
    analysis did not run; ``sanity_status`` (``{"run", "reason", "randomised"}``) says why.
    """

    methods: tuple[str, ...]
    primary_method: str
    overall: OverallResult = field(default_factory=OverallResult)
    classes: Mapping[str, ClassResult] = field(default_factory=_empty)
    findings: tuple[Finding, ...] = ()
    rules: Mapping[str, str] = field(default_factory=_empty)
    confusion: Confusion | None = None
    method_agreement: MethodAgreement | None = None
    faithfulness: Mapping[str, Mapping[str, Stat]] | None = None
    sanity: Mapping[str, SanityResult] | None = None
    clusters: Mapping[str, ClassClusters] | None = None
    sanity_status: Mapping[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION
    tool: Mapping[str, Any] = field(default_factory=_empty)
    run: RunInfo = field(default_factory=RunInfo)
    title: str | None = None
    model: ModelInfo = field(default_factory=ModelInfo)
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    methods_info: Mapping[str, MethodInfo] = field(default_factory=_empty)
    metrics_info: Mapping[str, MetricInfo] = field(default_factory=_empty)
    settings: Mapping[str, Any] = field(default_factory=_empty)
    gates: Gates | None = None
    gallery: Mapping[str, tuple[GalleryPanel, ...]] = field(default_factory=_empty)
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    #: summary.json keys in the order they are written.
    _ORDER = (
        "schema_version",
        "tool",
        "run",
        "title",
        "model",
        "dataset",
        "methods",
        "primary_method",
        "methods_info",
        "metrics_info",
        "overall",
        "classes",
        "findings",
        "rules",
        "confusion",
        "method_agreement",
        "faithfulness",
        "sanity",
        "sanity_status",
        "clusters",
        "settings",
        "gates",
        "gallery",
    )

    # -- convenience ----------------------------------------------------------------------
    @property
    def passed(self) -> bool:
        """The gate verdict (True when no gate was configured)."""
        return True if self.gates is None else self.gates.passed

    def findings_for(self, cls: str | None) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.cls == cls)

    def replace(self, **changes: Any) -> AuditResult:
        """A copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return replace(self, **changes)

    # -- JSON -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` object (schema_version 1), keys in the documented order."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "tool": thaw(self.tool),
            "run": self.run.to_json(),
            "title": self.title,
            "model": self.model.to_json(),
            "dataset": self.dataset.to_json(),
            "methods": list(self.methods),
            "primary_method": self.primary_method,
            "methods_info": {k: v.to_json() for k, v in self.methods_info.items()},
            "metrics_info": {k: v.to_json() for k, v in self.metrics_info.items()},
            "overall": self.overall.to_json(),
            "classes": {k: v.to_json() for k, v in self.classes.items()},
            "findings": [f.to_json() for f in self.findings],
            "rules": dict(self.rules),
            "confusion": None if self.confusion is None else self.confusion.to_json(),
            "method_agreement": (
                None if self.method_agreement is None else self.method_agreement.to_json()
            ),
            "faithfulness": None if self.faithfulness is None else _stats_json(self.faithfulness),
            "sanity": (
                None if self.sanity is None else {k: v.to_json() for k, v in self.sanity.items()}
            ),
            "sanity_status": thaw(self.sanity_status),
            "clusters": (
                None
                if self.clusters is None
                else {k: v.to_json() for k, v in self.clusters.items()}
            ),
            "settings": thaw(self.settings),
            "gates": None if self.gates is None else self.gates.to_json(),
            "gallery": {k: [p.to_json() for p in v] for k, v in self.gallery.items()},
        }
        if self.sanity_status is None:  # written by runs since the status was added
            del out["sanity_status"]
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(cls, value: Any) -> AuditResult:
        """Parse a ``summary.json`` object; ``ValueError`` on another schema version."""
        d = _obj(value, "summary")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"`schema_version` must be {SCHEMA_VERSION}, got {version!r}")
        methods = tuple(str(m) for m in d.get("methods") or ())
        primary = d.get("primary_method") or (methods[0] if methods else "")
        faith = d.get("faithfulness")
        sanity = d.get("sanity")
        clusters = d.get("clusters")
        return cls(
            schema_version=SCHEMA_VERSION,
            tool=freeze(_obj(d.get("tool"), "tool")),
            run=RunInfo.from_json(d.get("run")),
            title=None if d.get("title") is None else str(d["title"]),
            model=ModelInfo.from_json(d.get("model")),
            dataset=DatasetInfo.from_json(d.get("dataset")),
            methods=methods,
            primary_method=str(primary),
            methods_info=MappingProxyType(
                {
                    str(k): MethodInfo.from_json(k, v)
                    for k, v in _obj(d.get("methods_info"), "methods_info").items()
                }
            ),
            metrics_info=MappingProxyType(
                {
                    str(k): MetricInfo.from_json(k, v)
                    for k, v in _obj(d.get("metrics_info"), "metrics_info").items()
                }
            ),
            overall=OverallResult.from_json(d.get("overall")),
            classes=MappingProxyType(
                {
                    str(k): ClassResult.from_json(k, v)
                    for k, v in _obj(d.get("classes"), "classes").items()
                }
            ),
            findings=tuple(Finding.from_json(f) for f in d.get("findings") or ()),
            rules=freeze({str(k): str(v) for k, v in _obj(d.get("rules"), "rules").items()}),
            confusion=Confusion.from_json(d.get("confusion")),
            method_agreement=MethodAgreement.from_json(d.get("method_agreement")),
            faithfulness=None if faith is None else _method_metric_stats(faith, "faithfulness"),
            sanity=None
            if sanity is None
            else MappingProxyType(
                {
                    str(k): SanityResult.from_json(v)
                    for k, v in _obj(sanity, "sanity").items()
                    if not str(k).startswith("_")
                }
            ),
            clusters=None
            if clusters is None
            else MappingProxyType(
                {str(k): ClassClusters.from_json(v) for k, v in _obj(clusters, "clusters").items()}
            ),
            sanity_status=(
                None
                if d.get("sanity_status") is None
                else freeze(_obj(d.get("sanity_status"), "sanity_status"))
            ),
            settings=freeze(_obj(d.get("settings"), "settings")),
            gates=Gates.from_json(d.get("gates")),
            gallery=MappingProxyType(
                {
                    str(k): tuple(GalleryPanel.from_json(p) for p in v or ())
                    for k, v in _obj(d.get("gallery"), "gallery").items()
                }
            ),
            extra=_extra(d, cls._ORDER),
        )


def _doc_formula(doc: str) -> str:
    """The ``literal`` equations (text in double backticks holding ``=``) of a docstring's
    first two paragraphs, joined by ``; ``: a fallback for methods registered without a
    ``formula``."""
    import re

    head = "\n\n".join(doc.strip().split("\n\n")[:2])
    parts = [" ".join(p.split()) for p in re.findall(r"``(.+?)``", head, flags=re.S)]
    return "; ".join(p for p in parts if "=" in p)


def _doc_description(doc: str) -> str:
    first = doc.strip().split("\n\n")[0] if doc.strip() else ""
    return " ".join(first.replace("``", "").split())


def method_info(method: Any) -> MethodInfo:
    """The :class:`MethodInfo` of a registered CAM method (``auditor.cam.METHODS[name]``).

    Reads the registration's ``title``, ``formula``, ``reference``, ``description`` (and
    ``cost`` when present); where a field is empty, falls back to the method function's
    docstring (its first paragraph, and the equations it spells out).
    """
    name = str(getattr(method, "name", "") or "")
    fn = getattr(method, "fn", None)
    doc = (getattr(fn, "__doc__", None) or "") if fn is not None else ""
    extra: dict[str, Any] = {}
    cost = getattr(method, "cost", None)
    if cost:
        extra["cost"] = str(cost)
    return MethodInfo(
        name=name,
        title=str(getattr(method, "title", "") or name),
        formula=str(getattr(method, "formula", "") or _doc_formula(doc)),
        reference=str(getattr(method, "reference", "") or ""),
        description=str(getattr(method, "description", "") or _doc_description(doc)),
        extra=freeze(extra),
    )


#: Readable labels of the evidence keys the finding rules (``auditor.analysis.findings``)
#: write; metric names are labelled with their :class:`MetricInfo` title instead. A rule
#: that writes a new key adds its label here.
EVIDENCE_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "ci": "confidence interval",
        "baseline": "other classes (baseline)",
        "baseline_lift": "other classes' energy lift",
        "method": "method",
        "share": "share of correct predictions",
        "n": "samples",
        "accuracy": "accuracy",
        "only_fg_drop": "accuracy drop without background",
        "only_fg_drop_ci": "interval of the drop",
        "background_focus_by_method": "background focus by method",
        "cluster": "cluster",
        "size": "images in the cluster",
        "similarity": "rank correlation after randomisation",
        "threshold": "threshold",
        "trustworthy": "trustworthy",
        "randomised": "randomised layers",
        # issue 25: no raw key in the report ("only bg ci", "diff", "n other", ...)
        "ci_low": "interval, lower end",
        "ci_high": "interval, upper end",
        "energy_lift_ci": "interval of the energy lift",
        "lift_max": "energy lift limit (at most)",
        "lift_fires": "energy lift test triggered",
        "only_bg_ci": "interval of the background-only accuracy",
        "only_bg_n": "images with a background-only result",
        "only_bg_fires": "background-only test triggered",
        "only_bg_accuracy_ci": "interval of the background-only accuracy",
        "only_bg_rate": "share whose background alone is called the class",
        "only_bg_rate_ci": "interval of that share",
        "only_bg_hit": "background alone predicted as the class",
        "chance": "chance level",
        "margin": "margin over chance",
        "diff": "difference from the other classes",
        "n_other": "images of the other classes",
        "intervention_diff": "difference in the intervention outcome",
        "intervention_ci": "interval of the intervention outcome",
        "n_interventions": "images with an intervention result",
        "n_images": "images",
        "n_classes": "classes",
        "class_size": "images in the class",
        "not_estimable": "not estimable",
        "against": "compared with",
        "rest": "the rest of the class",
        "confidence": "confidence level",
    }
)

#: abbreviations spelled out in a key without a label (:func:`evidence_label`)
_KEY_WORDS: Mapping[str, str] = MappingProxyType(
    {
        "ci": "interval",
        "bg": "background",
        "fg": "object",
        "n": "number of",
        "diff": "difference",
        "max": "maximum",
        "min": "minimum",
        "conf": "confidence",
        "rand": "random",
    }
)


def evidence_label(key: str, titles: Mapping[str, str] | None = None) -> str:
    """A readable label for an evidence key: the metric's title, the rule's label, else the
    key's words with abbreviations spelled out (``"only_fg_ci"`` → "only object interval")."""
    if titles and key in titles:
        return titles[key]
    if key in EVIDENCE_LABELS:
        return EVIDENCE_LABELS[key]
    return " ".join(_KEY_WORDS.get(w, w) for w in key.split("_") if w)


# --------------------------------------------------------------------------------------------
# comparison.json (auditor compare)
# --------------------------------------------------------------------------------------------
COMPARISON_SCHEMA_VERSION = 1
"""``comparison.json`` schema version written by this code (docs/compare.md)."""


def _snum(v: Any, digits: int = 3, signed: bool = False) -> str:
    from auditor.format import fmt

    return fmt(v, f"{'+' if signed else ''}.{digits}f", missing="n/a")


def _pnum(v: Any) -> str:
    from auditor.format import fmt

    return fmt(v, ".2g", missing="n/a")


@dataclass(frozen=True)
class ComparisonResult:
    """``comparison.json`` typed (what :func:`auditor.compare_runs` returns and writes).

    The paired blocks (``primary``, ``methods``: per-quantity statistics overall and per class,
    docs/compare.md) stay read-only JSON mappings; gates are typed :class:`Gates`.
    :meth:`to_json` gives ``comparison.json`` back key for key; unknown keys are kept in
    ``extra``. ``out_dir`` and ``report`` say where it was written (not part of the JSON).

    Attributes:
        run_a, run_b: each run's name, path, model and primary method.
        dataset: sha256, name, annotation_sha256, n_samples, classes.
        pairing: key, n_paired, n_only_a, n_only_b.
        settings: n_boot, seed, confidence, interval, test, top_n.
        primary: the primary methods' paired block; ``methods``: one per shared method.
        class_order: classes, most regressed first; ``regressed``, ``improved``: their names.
        gates: the comparison gates; ``moved``: the samples whose maps moved most.
        metrics_info: each metric's metadata (title, formula, direction).
    """

    run_a: Mapping[str, Any] = field(default_factory=_empty)
    run_b: Mapping[str, Any] = field(default_factory=_empty)
    dataset: Mapping[str, Any] = field(default_factory=_empty)
    pairing: Mapping[str, Any] = field(default_factory=_empty)
    settings: Mapping[str, Any] = field(default_factory=_empty)
    primary: Mapping[str, Any] = field(default_factory=_empty)
    methods: Mapping[str, Any] = field(default_factory=_empty)
    class_order: tuple[str, ...] = ()
    regressed: tuple[str, ...] = ()
    improved: tuple[str, ...] = ()
    gates: Gates = field(default_factory=Gates)
    moved: tuple[Mapping[str, Any], ...] = ()
    metrics_info: Mapping[str, Any] = field(default_factory=_empty)
    tool: Mapping[str, Any] = field(default_factory=_empty)
    created: str = ""
    schema_version: int = COMPARISON_SCHEMA_VERSION
    kind: str = "comparison"
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)
    out_dir: Path | None = field(default=None, compare=False)
    report: Mapping[str, Path] = field(default_factory=_empty, compare=False)

    _KEYS = (
        "schema_version",
        "kind",
        "tool",
        "created",
        "run_a",
        "run_b",
        "dataset",
        "pairing",
        "settings",
        "primary",
        "methods",
        "class_order",
        "regressed",
        "improved",
        "gates",
        "moved",
        "metrics_info",
    )

    @property
    def passed(self) -> bool:
        """All comparison gates passed (True when there are none)."""
        return self.gates.passed

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def comparison(self) -> dict[str, Any]:
        """The content of ``comparison.json`` (plain JSON data; :meth:`to_json`)."""
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._KEYS:
            value = getattr(self, key)
            out[key] = value.to_json() if key == "gates" else thaw(value)
        return _with_extra(out, self.extra)

    @classmethod
    def from_json(
        cls,
        value: Any,
        *,
        out_dir: Path | None = None,
        report: Mapping[str, Path] | None = None,
    ) -> ComparisonResult:
        """A typed comparison from the dict of ``comparison.json``.

        Raises:
            ValueError: ``schema_version`` or ``kind`` is not this code's.
            TypeError: ``value`` or one of its sections has the wrong JSON type.
        """
        d = _obj(value, "comparison")
        version = d.get("schema_version", COMPARISON_SCHEMA_VERSION)
        if version != COMPARISON_SCHEMA_VERSION:
            raise ValueError(
                f"`schema_version` must be {COMPARISON_SCHEMA_VERSION}, got {version!r}"
            )
        if d.get("kind", "comparison") != "comparison":
            raise ValueError(f"`kind` must be 'comparison', got {d.get('kind')!r}")

        def names(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in d.get(key) or ())

        return cls(
            run_a=freeze(_obj(d.get("run_a") or {}, "run_a")),
            run_b=freeze(_obj(d.get("run_b") or {}, "run_b")),
            dataset=freeze(_obj(d.get("dataset") or {}, "dataset")),
            pairing=freeze(_obj(d.get("pairing") or {}, "pairing")),
            settings=freeze(_obj(d.get("settings") or {}, "settings")),
            primary=freeze(_obj(d.get("primary") or {}, "primary")),
            methods=freeze(_obj(d.get("methods") or {}, "methods")),
            class_order=names("class_order"),
            regressed=names("regressed"),
            improved=names("improved"),
            gates=Gates.from_json(d.get("gates")) or Gates(),
            moved=tuple(freeze(_obj(m, "moved[]")) for m in d.get("moved") or ()),
            metrics_info=freeze(_obj(d.get("metrics_info") or {}, "metrics_info")),
            tool=freeze(_obj(d.get("tool") or {}, "tool")),
            created=str(d.get("created") or ""),
            schema_version=COMPARISON_SCHEMA_VERSION,
            kind="comparison",
            extra=_extra(d, cls._KEYS),
            out_dir=out_dir,
            report=MappingProxyType(dict(report or {})),
        )

    def describe(self) -> str:
        """A one-screen terminal summary: overall changes, regressed/improved classes, gates."""
        c = self.to_json()
        prim = c["primary"]
        a, b = c["run_a"], c["run_b"]
        lines = [
            f"cam-auditor {c['tool']['version']} compare: B {b['name']} vs A {a['name']} on "
            f"{c['pairing']['n_paired']} paired "
            f"{'boxes' if c['pairing'].get('unit') == 'ground-truth box' else 'images'} "
            f"({prim['method_b']} vs {prim['method_a']})",
        ]
        for q in ("background_focus", "energy_in_mask", "accuracy", "detection_recall",
                  "detection_precision", "context_recall_drop"):  # fmt: skip
            s = prim["overall"].get(q)
            if not s or s["n"] == 0:
                continue
            lo, hi = _snum(s["ci_low"], signed=True), _snum(s["ci_high"], signed=True)
            lines.append(
                f"  {q}: {_snum(s['mean_a'])} → {_snum(s['mean_b'])} "
                f"(B − A {_snum(s['diff'], signed=True)} [{lo}, {hi}], "
                f"p={_pnum(s['p_value'])}) {s['status']}"
            )
        for kind in ("regressed", "improved"):
            names = c[kind]
            shown = []
            for nm in names[:8]:
                bf = prim["classes"][nm]["metrics"].get("background_focus") or {}
                shown.append(f"{nm} (bf {_snum(bf.get('diff'), signed=True)})")
            more = f", … {len(names) - 8} more" if len(names) > 8 else ""
            lines.append(f"  {kind} classes ({len(names)}): " + (", ".join(shown) + more or "none"))
        from auditor.format import gate_verdict

        res = c["gates"]["results"]
        failed = [r for r in res if not r["passed"]]
        lines.append("  gates: " + gate_verdict(res))  # evaluated checks only, as `auditor run`
        for r in failed[:6]:
            lines.append(
                f"    ✗ {r['rule']} [{r['class']}]: "
                f"{'n/a' if r['value'] is None else format(r['value'], '.4g')} vs "
                f"{r['bound']} {r['threshold']}" + (f" ({r['note']})" if r.get("note") else "")
            )
        if len(failed) > 6:
            lines.append(f"    … {len(failed) - 6} more failed checks")
        if self.out_dir is not None:
            lines.append(f"  comparison: {self.out_dir / 'comparison.json'}")
        for kind, path in self.report.items():
            lines.append(f"  {kind}: {path}")
        return "\n".join(lines)
