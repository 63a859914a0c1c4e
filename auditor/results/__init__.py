"""Typed results of an audit: the one source of truth from analysis to report.

:func:`auditor.analysis.analyse` returns an :class:`AuditResult`; the runner completes it
(provenance, model, dataset, gates, gallery) and writes ``summary.json`` with
:meth:`AuditResult.to_json`; gates, exports, the report context and ``compare`` read it back
with :meth:`AuditResult.from_json`. Every class here is a frozen dataclass.

The JSON form is ``summary.json`` schema_version 1 (DESIGN 4.3), unchanged: ``from_json`` then
``to_json`` gives back the same object for every summary the auditor writes (pinned byte for
byte by ``tests/test_results.py`` and ``tests/test_codec.py`` on the committed example runs
and a fresh demo run). The JSON form of each class is derived from its fields by ONE codec
(:mod:`auditor.results.codec`): field types say how values are read, ``jfield(...)`` metadata
says what the types cannot (renamed keys, keys omitted when empty, defaults taken from another
key), ``_JSON_ORDER`` the key order where it differs from the constructor's. Keys a class does
not know (added by a later version, or by a user) are kept in its ``extra`` mapping and written
back after the known ones, so a round trip never drops data. Missing keys take the documented
defaults (``None`` for a value that was not computed, never an invented number).

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
from auditor.results.codec import (
    decode,
    encode,
    extra_field,
    freeze,
    jfield,
    json_keys,
    number,
    opt_int,
    require_object,
    thaw,
)
from auditor.results.sanity import SanityCheck, SanityResult, SanityStatus
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
    "SanityCheck",
    "SanityResult",
    "SanityStatus",
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


def _is_none(value: Any) -> bool:
    return value is None


def _numbers(n: int) -> Any:
    """A ``decode`` hook: ``n`` JSON numbers kept as written, padded with ``None``."""

    def read(value: Any, obj: Mapping[str, Any], name: str | None) -> tuple[Any, ...]:
        items = list(value) if isinstance(value, list | tuple) else []
        return tuple(number(v) for v in (items + [None] * n)[:n])

    return read


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
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> Stat:
        return decode(cls, value, "stat")


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
    extra: Mapping[str, Any] = extra_field()

    def get(self, key: str, default: Any = None) -> Any:
        """The quantity ``key`` (a field or an extra key), ``default`` if absent."""
        if key in json_keys(Interventions):
            return getattr(self, key)
        return self.extra.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> Interventions | None:
        return None if value is None else decode(cls, value, "interventions")


@dataclass(frozen=True)
class ClassResult:
    """One class: accuracy (Wilson interval), metrics per method, interventions, flags."""

    name: str = jfield(from_name=True)
    index: int | None = None
    n: int = 0
    accuracy: float | None = None
    accuracy_ci: tuple[float | None, float | None] = (None, None)
    metrics: Mapping[str, Mapping[str, Stat]] = field(default_factory=_empty)
    interventions: Interventions | None = None
    flagged: bool = False
    flags: tuple[str, ...] = ()
    risk: float | None = 0.0
    extra: Mapping[str, Any] = extra_field()

    def stat(self, method: str, metric: str) -> Stat | None:
        """The interval of ``metric`` for ``method``, ``None`` if it was not measured."""
        return self.metrics.get(method, _EMPTY).get(metric)

    @property
    def transplant(self) -> TransplantResult | None:
        """The transplant intervention's result (issue 22; summary.json
        ``classes[<name>]["transplant"]``), ``None`` when the run has none."""
        return class_transplant(self)

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, name: str, value: Any) -> ClassResult:
        return decode(cls, value, f"classes.{name}", name=name)


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


def _read_status_counts(value: Any, obj: Mapping[str, Any], name: str | None) -> Any:
    return freeze(_migrate_status_counts(require_object(value, "overall.status_counts")))


@dataclass(frozen=True)
class OverallResult:
    """The whole evaluation set: accuracy, metrics per method, per-sample status counts."""

    n: int = 0
    accuracy: float | None = None
    accuracy_ci: tuple[float | None, float | None] = (None, None)
    metrics: Mapping[str, Mapping[str, Stat]] = field(default_factory=_empty)
    status_counts: Mapping[str, Mapping[str, int]] = jfield(
        default_factory=_empty, decode=_read_status_counts
    )
    extra: Mapping[str, Any] = extra_field()

    def stat(self, method: str, metric: str) -> Stat | None:
        return self.metrics.get(method, _EMPTY).get(metric)

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> OverallResult:
        return decode(cls, value, "overall")


# --------------------------------------------------------------------------------------------
# findings, subgroups, sanity, gates
# --------------------------------------------------------------------------------------------
def _read_severity(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    sev = str(value or "info").lower()
    return sev if sev in SEVERITIES else "info"


def _read_title(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    return str(value or obj.get("message") or obj.get("kind") or "")


@dataclass(frozen=True)
class Finding:
    """One finding: ``cls`` is the class it concerns (``None`` for run-wide findings).

    ``evidence`` holds the numbers the finding rests on (keys are metric or statistic names;
    the report prints them with readable labels); ``examples`` are sample ids.
    """

    kind: str = jfield(missing="other")
    severity: str = jfield(decode=_read_severity)
    title: str = jfield(decode=_read_title)
    message: str = jfield()
    cls: str | None = jfield(None, key="class")
    evidence: Mapping[str, Any] = field(default_factory=_empty)
    examples: tuple[str, ...] = ()
    id: str = ""
    extra: Mapping[str, Any] = extra_field()

    _JSON_ORDER = ("class", "kind", "severity", "title", "message", "evidence", "id", "examples")

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"`severity` must be one of {SEVERITIES}, got {self.severity!r}")
        if not isinstance(self.evidence, MappingProxyType):
            object.__setattr__(self, "evidence", freeze(dict(self.evidence)))

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> Finding:
        return decode(cls, value, "finding")


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
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> SubgroupResult:
        return decode(cls, value, "cluster")


@dataclass(frozen=True)
class SubgroupTest:
    """One statistic of a tested subgroup against the rest of its class
    (:class:`auditor.analysis.spray.subgroups.StatTest` as summary.json stores it)."""

    name: str
    subgroup: float | None = None
    rest: float | None = None
    diff: float | None = None
    ci: tuple[float | None, float | None] = jfield((None, None), decode=_numbers(2))
    n_subgroup: int = 0
    n_rest: int = 0
    method: str = ""
    confidence: float | None = None
    margin: float | None = None
    baseline: float | None = None
    separates: bool = False
    direction: str = ""
    extra: Mapping[str, Any] = extra_field()

    _JSON_KEEP_NUMBERS = True  # a statistic written as 1 reads back as 1, not 1.0

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> SubgroupTest:
        return decode(cls, value, "subgroup test")


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
    only_bg_rate: tuple[float | None, float | None, float | None] = jfield(
        (None, None, None), decode=_numbers(3)
    )
    tests: Mapping[str, SubgroupTest] = field(default_factory=_empty)
    gallery: tuple[str, ...] = ()
    extra: Mapping[str, Any] = extra_field()

    _JSON_KEEP_NUMBERS = True

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> SubgroupDetail:
        return decode(cls, value, "subgroup")


@dataclass(frozen=True)
class ClassClusters:
    """The clustering of one class's maps: ``k`` clusters chosen by the eigengap."""

    k: int
    eigengap: float | None = None
    clusters: tuple[SubgroupResult, ...] = ()
    #: The clusters tested against the rest of the class (``None``: not analysed); written
    #: last, after unknown keys, where the analysis puts it.
    subgroups: tuple[SubgroupDetail, ...] | None = jfield(None, omit=_is_none, late=True)
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> ClassClusters:
        return decode(cls, value, "clusters")


@dataclass(frozen=True)
class GateResult:
    """One gate check (a rule on one class, or run-wide when ``cls`` is None).

    ``value`` None means the quantity was not available, which fails the gate (``note`` says
    why).
    """

    rule: str
    passed: bool
    cls: str | None = jfield(None, key="class")
    quantity: str | None = None
    stat: str | None = None
    value: float | None = None
    threshold: float | None = None
    bound: str | None = None
    note: str = ""
    extra: Mapping[str, Any] = extra_field()

    _JSON_ORDER = (
        "rule", "class", "quantity", "stat", "value", "threshold", "bound", "passed", "note",
    )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> GateResult:
        return decode(cls, value, "gate")


@dataclass(frozen=True)
class Gates:
    """Every gate check; ``passed`` is True when all passed (vacuously with no rule)."""

    passed: bool = jfield(True, missing=False)  # a gates object without a verdict fails
    results: tuple[GateResult, ...] = ()
    extra: Mapping[str, Any] = extra_field()

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.results if not r.passed)

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> Gates | None:
        return None if value is None else decode(cls, value, "gates")

    @classmethod
    def of(cls, results: Iterable[GateResult]) -> Gates:
        res = tuple(results)
        return cls(passed=all(r.passed for r in res), results=res)


# --------------------------------------------------------------------------------------------
# metadata (what a method or metric means, for the methodology section)
# --------------------------------------------------------------------------------------------
def _or_name(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    """A string that falls back to the key of the mapping holding the object."""
    return str(value or name)


@dataclass(frozen=True)
class MethodInfo:
    """A CAM method as the report describes it: title, formula, description, reference."""

    name: str = jfield(from_name=True)
    title: str = jfield("", decode=_or_name)
    formula: str = ""
    reference: str = ""
    description: str = ""
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, name: str, value: Any) -> MethodInfo:
        return decode(cls, value, f"methods_info.{name}", name=name)


def _read_category(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    cat = str(value or "localisation")
    return cat if cat in CATEGORIES else "localisation"


def _read_range(value: Any, obj: Mapping[str, Any], name: str | None) -> Any:
    return None if not isinstance(value, list | tuple) or len(value) != 2 else tuple(value)


def _not(value: Any) -> bool:
    return not value


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means, for people reading a report (in the spirit of Quantus' metric
    attributes, Hedström et al. 2023).

    ``higher_is_better``: ``True``/``False``, or ``None`` when neither direction is "good"
    (e.g. entropy, a description of the map). ``range``: the bounds of the per-sample value,
    ``None`` when unbounded or image-dependent. ``formula``: unicode only (HTML- and PDF-safe
    once escaped). Unknown keys are not kept (the registry is the source of truth).
    """

    name: str = jfield(decode=_or_name)
    title: str = jfield(decode=_or_name)
    higher_is_better: bool | None = jfield()
    category: str = jfield(decode=_read_category)
    needs_mask: bool = jfield()
    range: tuple[float, float] | None = jfield(decode=_read_range)
    formula: str = jfield()
    description: str = jfield()
    reference: str = jfield()
    #: shown as a column of the report's per-class table (written only when true)
    table: bool = jfield(False, omit=_not)

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
        return encode(self)

    @classmethod
    def from_json(cls, name: str, value: Any) -> MetricInfo:
        return decode(cls, value, f"metrics_info.{name}", name=name)


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
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> ModelInfo:
        return decode(cls, value, "model")


#: The keys of summary.json's ``dataset`` object, in the order the report reads them (the
#: fields of :class:`DatasetInfo`; ``n_nonfinite_logits`` is written after ``skipped``).
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


def _read_n_skipped(value: Any, obj: Mapping[str, Any], name: str | None) -> int:
    """``n_skipped``, else the length of ``skipped``."""
    return opt_int(value) or len(tuple(obj.get("skipped") or ()))


@dataclass(frozen=True)
class DatasetInfo:
    """The evaluation set: hashes, counts, classes and the skipped samples with reasons.

    ``n_nonfinite_logits``: samples whose logits were NaN/Inf (``None``: not counted, as in
    detection runs; the key is then left out of the JSON).
    """

    name: str | None = None
    format: str | None = None
    sha256: str | None = None
    annotation_sha256: str | None = None
    n_samples: int | None = None
    n_evaluated: int = 0
    n_skipped: int = jfield(0, decode=_read_n_skipped)
    annotated: bool | None = None
    input_size: tuple[int, ...] = ()
    classes: tuple[str, ...] = ()
    skipped: tuple[Mapping[str, Any], ...] = ()
    n_nonfinite_logits: int | None = jfield(None, omit=_is_none)
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> DatasetInfo:
        return decode(cls, value, "dataset")


@dataclass(frozen=True)
class RunInfo:
    """When, how and with what the audit ran (timestamps, timings, seed, versions, config).

    ``aggregation``: ``"exact"`` or ``"streaming"``, the path that aggregated the rows
    (``None``: not recorded, as in detection runs; the key is then left out of the JSON).
    """

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
    aggregation: str | None = jfield(None, omit=_is_none)
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> RunInfo:
        return decode(cls, value, "run")


def _read_matrix(value: Any, obj: Mapping[str, Any], name: str | None) -> Any:
    return tuple(tuple(r) for r in value or ())


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix of the primary method's predictions: rows true, columns predicted."""

    classes: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...] = jfield(decode=_read_matrix)

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> Confusion | None:
        return None if value is None else decode(cls, value, "confusion")


@dataclass(frozen=True)
class MethodAgreement:
    """Spearman correlation between methods of a per-sample metric (``None``: undefined)."""

    methods: tuple[str, ...]
    metric: str = jfield(missing="energy_in_mask")
    spearman: tuple[tuple[float | None, ...], ...] = jfield()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> MethodAgreement | None:
        return None if value is None else decode(cls, value, "method_agreement")


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
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> GalleryPanel:
        return decode(cls, value, "gallery entry")


# --------------------------------------------------------------------------------------------
# the whole result
# --------------------------------------------------------------------------------------------
def _schema_version(value: Any, obj: Mapping[str, Any], name: str | None) -> int:
    return SCHEMA_VERSION  # checked by AuditResult.from_json


def _read_primary(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    methods = obj.get("methods") or ()
    return str(value or (str(methods[0]) if methods else ""))


def _read_rules(value: Any, obj: Mapping[str, Any], name: str | None) -> Any:
    return freeze({str(k): str(v) for k, v in require_object(value, "rules").items()})


def _read_sanity(value: Any, obj: Mapping[str, Any], name: str | None) -> Any:
    """``{method: SanityResult}``; keys starting with ``_`` are no method (older records)."""
    if value is None:
        return None
    return MappingProxyType(
        {
            str(k): SanityResult.from_json(v)
            for k, v in require_object(value, "sanity").items()
            if not str(k).startswith("_")
        }
    )


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit found: ``summary.json`` as typed, frozen objects.

    ``classes`` keeps the dataset's class order; ``findings`` are sorted by severity and carry
    ids ``F1``, ``F2``, …; ``clusters``, ``sanity``, ``faithfulness`` are ``None`` when that
    analysis did not run; ``sanity_status`` (:class:`SanityStatus`) says whether the sanity
    check ran and why not (``None``: a summary written before the status existed; the key is
    then left out of the JSON).
    """

    methods: tuple[str, ...]
    primary_method: str = jfield(decode=_read_primary)
    overall: OverallResult = field(default_factory=OverallResult)
    classes: Mapping[str, ClassResult] = field(default_factory=_empty)
    findings: tuple[Finding, ...] = ()
    rules: Mapping[str, str] = jfield(default_factory=_empty, decode=_read_rules)
    confusion: Confusion | None = None
    method_agreement: MethodAgreement | None = None
    faithfulness: Mapping[str, Mapping[str, Stat]] | None = None
    sanity: Mapping[str, SanityResult] | None = jfield(None, decode=_read_sanity)
    clusters: Mapping[str, ClassClusters] | None = None
    sanity_status: SanityStatus | None = jfield(None, omit=_is_none)
    schema_version: int = jfield(SCHEMA_VERSION, decode=_schema_version)
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
    extra: Mapping[str, Any] = extra_field()

    #: summary.json keys in the order they are written.
    _JSON_ORDER = (
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

    def __post_init__(self) -> None:
        if self.sanity_status is not None and not isinstance(self.sanity_status, SanityStatus):
            # a plain {"run", "reason", "randomised"} mapping (callers before the type)
            object.__setattr__(self, "sanity_status", SanityStatus.from_json(self.sanity_status))

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
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> AuditResult:
        """Parse a ``summary.json`` object; ``ValueError`` on another schema version."""
        d = require_object(value, "summary")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"`schema_version` must be {SCHEMA_VERSION}, got {version!r}")
        return decode(cls, d, "")


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


def _comparison_version(value: Any, obj: Mapping[str, Any], name: str | None) -> int:
    return COMPARISON_SCHEMA_VERSION  # checked by ComparisonResult.from_json


def _comparison_kind(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    return "comparison"  # checked by ComparisonResult.from_json


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
    schema_version: int = jfield(COMPARISON_SCHEMA_VERSION, decode=_comparison_version)
    kind: str = jfield("comparison", decode=_comparison_kind)
    extra: Mapping[str, Any] = extra_field()
    out_dir: Path | None = jfield(None, compare=False, skip=True)
    report: Mapping[str, Path] = jfield(default_factory=_empty, compare=False, skip=True)

    _JSON_ORDER = (
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
        return encode(self)

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
        d = require_object(value, "comparison")
        version = d.get("schema_version", COMPARISON_SCHEMA_VERSION)
        if version != COMPARISON_SCHEMA_VERSION:
            raise ValueError(
                f"`schema_version` must be {COMPARISON_SCHEMA_VERSION}, got {version!r}"
            )
        if d.get("kind", "comparison") != "comparison":
            raise ValueError(f"`kind` must be 'comparison', got {d.get('kind')!r}")
        return replace(
            decode(cls, d, ""), out_dir=out_dir, report=MappingProxyType(dict(report or {}))
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
