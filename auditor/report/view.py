"""The report's typed view model: frozen dataclasses the templates read (issue 21).

:func:`auditor.report.assemble.build_view` fills a :class:`ReportView` from a run directory;
:meth:`ReportView.context` flattens it into the template names documented in
``docs/report.md`` (``classes``, ``findings``, ``galleries``, ...). Nothing here computes a
statistic: every number is copied from the typed result (:class:`auditor.results.AuditResult`).

Every view object also answers ``view["key"]`` and ``view.get("key")`` (:class:`ViewItem`), so
that templates and callers written against the earlier dict context keep working; the key
``"class"`` (a Python keyword) reads the field ``cls``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from auditor.report.context import ReportLimits
from auditor.results import AuditResult, MetricInfo, Stat

__all__ = [
    "Chance",
    "ComplianceView",
    "FailedGate",
    "GroupAttributeView",
    "GroupRow",
    "GroupsView",
    "TopFinding",
    "TransplantRow",
    "TransplantView",
    "Verdict",
    "ClassRow",
    "ClassTable",
    "ClusterClassView",
    "ClusterSample",
    "ClusterView",
    "Cover",
    "FigureView",
    "FindingRef",
    "FindingView",
    "GalleryView",
    "GateRow",
    "GateTable",
    "ImageView",
    "MethodView",
    "Methodology",
    "PanelRef",
    "PanelView",
    "Provenance",
    "ReportView",
    "SanityRow",
    "SubgroupTestView",
    "SubgroupView",
    "Support",
    "TableColumn",
    "ViewItem",
]

#: Keys that are not valid attribute names, read as these fields.
_ALIASES = {"class": "cls"}


class ViewItem:
    """Read access by key (``item["name"]``, ``item.get("name")``) beside attribute access.

    Jinja tries an attribute first and an item second, so ``f.class`` in a template reads the
    field ``cls`` through :meth:`__getitem__`.
    """

    __slots__ = ()
    _FIELDS: ClassVar[dict[type, frozenset[str]]] = {}

    def _names(self) -> frozenset[str]:
        cls = type(self)
        if cls not in ViewItem._FIELDS:
            ViewItem._FIELDS[cls] = frozenset(f.name for f in fields(self))  # type: ignore[arg-type]
        return ViewItem._FIELDS[cls]

    def __getitem__(self, key: str) -> Any:
        name = _ALIASES.get(key, key) if isinstance(key, str) else key
        if isinstance(name, str) and name in self._names():
            return getattr(self, name)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (see :meth:`__getitem__`), else ``default``."""
        try:
            return self[key]
        except KeyError:
            return default


# --------------------------------------------------------------------------------------------
# per-class table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chance(ViewItem):
    """A class's chance level of energy in the object: the ``randomcam`` baseline with its
    interval (``source="randomcam"``), else the mean mask area fraction (``source="area"``)."""

    source: str
    mean: float | None
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class ClassRow(ViewItem):
    """One row of the per-class table (primary method's statistics)."""

    name: str
    slug: str
    index: int | None
    n: int | None
    accuracy: float | None
    accuracy_ci: tuple[float | None, float | None]
    m: Mapping[str, Stat]
    """table metric → its statistic (an empty :class:`Stat` where the class has none)"""
    interventions: Mapping[str, Any] | None
    flagged: bool
    flags: tuple[str, ...]
    risk: float | None
    finding_ids: tuple[str, ...]
    chance: Chance | None


@dataclass(frozen=True)
class TableColumn(ViewItem):
    """A metric column of the per-class table."""

    name: str
    title: str
    formula: str


@dataclass(frozen=True)
class ClassTable(ViewItem):
    """The per-class table: rows by risk (highest first, missing last, ties by name)."""

    metrics: tuple[str, ...]
    columns: tuple[TableColumn, ...]
    rows: tuple[ClassRow, ...]

    @property
    def n_flagged(self) -> int:
        return sum(1 for r in self.rows if r.flagged)

    @property
    def any_interventions(self) -> bool:
        return any(r.interventions is not None for r in self.rows)

    @property
    def any_chance(self) -> bool:
        return any(r.chance is not None for r in self.rows)


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PanelView(ViewItem):
    """A gallery panel (:class:`auditor.results.GalleryPanel`) with its ``data:`` URI."""

    id: str
    file: str
    label: str | None
    pred: str | None
    confidence: float | None
    energy_in_mask: float | None
    background_focus: float | None
    why: str
    uri: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PanelRef(ViewItem):
    """A panel drawn earlier in the document: the sample, and where it is drawn."""

    id: str
    anchor: str
    label: str


@dataclass(frozen=True)
class ImageView(ViewItem):
    """A picture of the run directory (cluster or subgroup panel) and its ``data:`` URI."""

    file: str
    uri: str


@dataclass(frozen=True)
class FigureView(ViewItem):
    """A figure drawn from the run's data."""

    id: str
    title: str
    caption: str
    alt: str
    uri: str


@dataclass(frozen=True)
class GalleryView(ViewItem):
    """One class's gallery: its first panels, and references to panels drawn earlier."""

    cls: str
    slug: str
    n_total: int
    panels: tuple[PanelView, ...]
    panel_refs: tuple[PanelRef, ...]


# --------------------------------------------------------------------------------------------
# findings and gates
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Support(ViewItem):
    """The statistic a finding rests on: its estimate, interval and the baseline it excludes."""

    statistic: str
    label: str
    estimate: float | None
    ci: tuple[float | None, float | None]
    baseline: float | None
    against: str
    subgroup: float | None
    rest: float | None
    confidence: float | None


@dataclass(frozen=True)
class FindingView(ViewItem):
    """A finding as listed (severity order), with readable evidence and its panels."""

    id: str
    cls: str | None
    slug: str | None
    kind: str
    severity: str
    title: str
    message: str
    evidence: tuple[tuple[str, Any], ...]
    """(readable label, value) pairs; the member list is left to the Subgroups section"""
    examples: tuple[str, ...]
    panels: tuple[PanelView, ...]
    panel_refs: tuple[PanelRef, ...]
    support: Support | None


@dataclass(frozen=True)
class FindingRef(ViewItem):
    """The finding a subgroup raised."""

    id: str
    title: str


@dataclass(frozen=True)
class GateRow(ViewItem):
    """One gate check (``cls`` None: run-wide)."""

    rule: str
    cls: str | None
    quantity: str | None
    stat: str | None
    value: float | None
    threshold: float | None
    bound: str | None
    passed: bool
    note: str


@dataclass(frozen=True)
class GateTable(ViewItem):
    """The release gates: checks failed first, then by rule and class."""

    passed: bool
    results: tuple[GateRow, ...]
    n_failed: int


# --------------------------------------------------------------------------------------------
# clusters and subgroups
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterView(ViewItem):
    """One cluster of a class's maps."""

    id: Any
    size: int
    background_focus: float | None
    outlier: bool
    exemplars: tuple[str, ...]
    images: tuple[ImageView, ...]


@dataclass(frozen=True)
class ClusterSample(ViewItem):
    """A class clustered on ``n`` of its ``of`` maps (issue 14)."""

    n: int
    of: int


@dataclass(frozen=True)
class ClusterClassView(ViewItem):
    """The clustering of one class's maps."""

    cls: str
    slug: str
    k: int
    eigengap: float | None
    clusters: tuple[ClusterView, ...]
    sample: ClusterSample | None


@dataclass(frozen=True)
class SubgroupTestView(ViewItem):
    """One statistic of a subgroup against the rest of its class."""

    name: str
    label: str
    subgroup: float | None
    rest: float | None
    diff: float | None
    ci: tuple[float | None, float | None]
    margin: float | None
    method: Any
    separates: Any


@dataclass(frozen=True)
class SubgroupView(ViewItem):
    """A reported subgroup (``clusters[class].subgroups``) of the "Subgroups" section."""

    cls: str
    slug: str
    finding: FindingRef | None
    severity: str
    size: int
    class_size: int
    where: Any
    region_share: float | None
    rest_region_share: float | None
    needed_statistic: Any
    interventions: Any
    only_bg_rate: float | None
    only_bg_rate_ci: tuple[float | None, float | None]
    tests: tuple[SubgroupTestView, ...]
    members: tuple[str, ...]
    """the first 60 members (all of them are in summary.json)"""
    n_members_hidden: int
    images: tuple[ImageView, ...]


# --------------------------------------------------------------------------------------------
# methodology, cover, provenance
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodView(ViewItem):
    """A CAM method of the run: its definition and dataset-wide statistics."""

    name: str
    title: str
    formula: str | None
    description: str | None
    reference: str | None
    cost: Any
    primary: bool
    metrics: Mapping[str, Stat]
    status_counts: Mapping[str, Any]


@dataclass(frozen=True)
class SanityRow(ViewItem):
    """The model-randomisation sanity check of one method."""

    method: str
    similarity: float | None
    threshold: float | None
    trustworthy: bool
    n: int
    randomised: tuple[str, ...]


@dataclass(frozen=True)
class FaithfulnessRow(ViewItem):
    """Faithfulness statistics (deletion / insertion) of one method."""

    method: str
    metrics: Mapping[str, Stat]


@dataclass(frozen=True)
class Methodology(ViewItem):
    """The methods, metric definitions, finding rules and checks of the run."""

    methods: tuple[MethodView, ...]
    metrics_info: tuple[MetricInfo, ...]
    metric_titles: Mapping[str, str]
    rules: tuple[tuple[str, str], ...]
    faithfulness: tuple[FaithfulnessRow, ...]
    sanity: tuple[SanityRow, ...]
    sanity_status: Mapping[str, Any] | None

    @property
    def overall_metric_names(self) -> list[str]:
        """The metrics present in the methods' dataset-wide statistics, first seen first."""
        return list(dict.fromkeys(k for m in self.methods for k in m.metrics))


@dataclass(frozen=True)
class Cover(ViewItem):
    """The first screen: title, date, one-line verdict, counts by severity."""

    title: str
    date: str | None
    verdict_text: str
    severity_counts: Mapping[str, int]
    reshape_text: str | None


@dataclass(frozen=True)
class Provenance(ViewItem):
    """What was audited with what: the summary's objects (every documented key present),
    versions, timings, configuration and the skipped samples."""

    tool: Mapping[str, Any]
    model: Mapping[str, Any]
    dataset: Mapping[str, Any]
    run: Mapping[str, Any]
    versions: tuple[tuple[str, str], ...]
    timings: tuple[tuple[str, Any], ...]
    config: Mapping[str, Any] | None
    skipped: tuple[Mapping[str, Any], ...]
    """the first ``limits.skipped`` skipped samples"""
    n_skipped: int

    @property
    def config_text(self) -> str | None:
        """The validated configuration as pretty JSON (None when the run recorded none)."""
        if not self.config:
            return None
        return json.dumps(self.config, indent=2, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# verdict, compliance and limitations (issue 25)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FailedGate(ViewItem):
    """A failed gate check as one sentence (the cover's "Why not")."""

    sentence: str
    cls: str | None
    rule: str


@dataclass(frozen=True)
class TopFinding(ViewItem):
    """One of the most severe findings as one sentence (the cover's "Main findings")."""

    id: str
    severity: str
    cls: str | None
    sentence: str


@dataclass(frozen=True)
class Verdict(ViewItem):
    """The cover's verdict (:func:`auditor.report.verdict.verdict_block`): ``ship`` True /
    False / None (no gate configured), the headline, why the run is not interpretable, the
    failed gates and the top findings as sentences."""

    ship: bool | None
    headline: str
    interpretable: bool | None
    not_interpretable_reasons: tuple[str, ...]
    failed_gates: tuple[FailedGate, ...]
    n_failed_gates_hidden: int
    top_findings: tuple[TopFinding, ...]


@dataclass(frozen=True)
class ComplianceView(ViewItem):
    """Verdict, compliance record, limitations, glossary, clause map and sign-offs
    (:func:`auditor.report.compliance.compliance_view`)."""

    verdict: Verdict
    gate_words: Mapping[str, str]
    """``"<rule>|<class or empty>"`` → the failed check as a sentence"""
    glossary: tuple[Mapping[str, str], ...]
    sanity_failed: tuple[str, ...]
    record: Mapping[str, Any]
    """the ``[report]`` compliance record (every key present), with its ``datasheet``"""
    limitations_derived: tuple[str, ...]
    """limitations this run itself shows (the provider's are ``record["limitations"]``)"""
    clauses: Mapping[str, Any]
    signoffs: tuple[Any, ...]

    def context(self) -> dict[str, Any]:
        """The template names of this part (docs/report.md)."""
        return {
            "verdict": self.verdict,
            "gate_words": self.gate_words,
            "glossary": list(self.glossary),
            "glossary_ids": [g["id"] for g in self.glossary],
            "sanity_failed": list(self.sanity_failed),
            "compliance": self.record,
            "limitations_derived": list(self.limitations_derived),
            "clauses": self.clauses,
            "signoffs": list(self.signoffs),
        }


# --------------------------------------------------------------------------------------------
# transplant (issue 22) and metadata groups (issue 24)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransplantRow(ViewItem):
    """One class's transplant result (:class:`auditor.results.transplant.TransplantResult`)
    and its figure as a ``data:`` URI."""

    name: str
    status: str
    reason: str | None
    source: str | None
    region: tuple[int, int, int, int] | None
    n: int
    flips: int
    control_flips: int
    flip_rate: float | None
    flip_ci: tuple[float | None, float | None]
    control_rate: float | None
    control_ci: tuple[float | None, float | None]
    difference: float | None
    difference_ci: tuple[float | None, float | None]
    margin: float | None
    n_sources: int
    figure: str | None
    uri: str | None


@dataclass(frozen=True)
class TransplantView(ViewItem):
    """The "Causal confirmation by transplant" section."""

    rows: tuple[TransplantRow, ...]
    rule: str

    @property
    def n_confirmed(self) -> int:
        return sum(1 for r in self.rows if r.status == "confirmed")


@dataclass(frozen=True)
class GroupRow(ViewItem):
    """One level of a metadata attribute (``stats``: its
    :class:`auditor.group_results.GroupResult`); ``n`` None when suppressed."""

    level: str
    label: str
    n: int | None
    suppressed: bool
    stats: Any
    worst: bool


@dataclass(frozen=True)
class GroupAttributeView(ViewItem):
    """One attribute of the "Groups" section: its levels, forest plot and class cells."""

    name: str
    rows: tuple[GroupRow, ...]
    figure: str | None
    """the forest plot as a ``data:`` URI (None: no level large enough to show)"""
    worst: str | None
    worst_accuracy: float | None
    largest_gap: Any
    classes: tuple[Any, ...]
    """class x level cells that are shown (not suppressed)"""
    n_classes_suppressed: int


@dataclass(frozen=True)
class GroupsView(ViewItem):
    """The "Groups" section (:func:`auditor.report.groups.groups_context`)."""

    min_group_size: int
    confidence: float
    adjustment: str
    n_tests: int
    accuracy_margin: float
    background_focus_margin: float
    overall_accuracy: float | None
    attributes: tuple[GroupAttributeView, ...]
    slices: tuple[Any, ...]


# --------------------------------------------------------------------------------------------
# the whole report
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportView(ViewItem):
    """Everything the report templates show, by section."""

    result: AuditResult
    limits: ReportLimits
    cover: Cover
    provenance: Provenance
    methodology: Methodology
    overall: Mapping[str, Any]
    table: ClassTable
    findings: tuple[FindingView, ...]
    gates: GateTable | None
    figures: tuple[FigureView, ...]
    galleries: tuple[GalleryView, ...]
    n_gallery_classes: int
    clusters: tuple[ClusterClassView, ...]
    subgroups: tuple[SubgroupView, ...]
    notes: tuple[str, ...]
    groups: GroupsView | None
    """metadata groups (issue 24)"""
    labels: Mapping[str, Any] | None
    """multi-label runs (:func:`auditor.report.labels.labels_context`)"""
    detection: Mapping[str, Any] | None
    """detection runs (:func:`auditor.report.detection.detection_context`)"""
    transplant: TransplantView | None
    """the transplant section (issue 22)"""
    compliance: ComplianceView
    """verdict, compliance record, limitations, clause map, sign-offs (issue 25)"""

    def context(self, output: str = "html") -> dict[str, Any]:
        """The template names of ``docs/report.md`` (plus ``view``: this object)."""
        p, meth, t = self.provenance, self.methodology, self.table
        return {
            "output": output,
            "view": self,
            "summary": self.result,
            "result": self.result,
            "title": self.cover.title,
            "date": self.cover.date,
            "tool": p.tool,
            "model": p.model,
            "dataset": p.dataset,
            "run": p.run,
            "primary_method": self.result.primary_method,
            "methods": list(meth.methods),
            "metrics_info": list(meth.metrics_info),
            "metric_titles": meth.metric_titles,
            "overall": self.overall,
            "overall_metric_names": meth.overall_metric_names,
            "table_metrics": list(t.metrics),
            "table_columns": list(t.columns),
            "classes": list(t.rows),
            "n_classes": len(t.rows),
            "n_flagged": t.n_flagged,
            "any_interventions": t.any_interventions,
            "any_chance": t.any_chance,
            "findings": list(self.findings),
            "severity_counts": self.cover.severity_counts,
            "gates": self.gates,
            "verdict_text": self.cover.verdict_text,
            "figures": list(self.figures),
            "labels": self.labels,
            "galleries": list(self.galleries),
            "n_gallery_classes": self.n_gallery_classes,
            "clusters": list(self.clusters),
            "subgroups": list(self.subgroups),
            "groups": self.groups,
            "detection": self.detection,
            "transplant": self.transplant,
            "rules": list(meth.rules),
            "faithfulness": list(meth.faithfulness),
            "sanity": list(meth.sanity),
            "sanity_status": meth.sanity_status,
            "reshape_text": self.cover.reshape_text,
            "versions": list(p.versions),
            "timings": list(p.timings),
            "config_text": p.config_text,
            "skipped": list(p.skipped),
            "n_skipped": p.n_skipped,
            "notes": list(self.notes),
            "limits": asdict(self.limits),
            **self.compliance.context(),
        }
