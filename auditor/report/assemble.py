"""Assemble the report's view model (:class:`auditor.report.view.ReportView`) from a run
directory, one small function per section.

Input: ``summary.json`` read as the typed result (:class:`auditor.results.AuditResult`, the
only source of every number), ``samples.parquet`` (two distribution figures only) and
``gallery/*.png``. Nothing here computes a statistic: values are copied, ordered (classes by
risk, findings by severity), capped (:class:`auditor.report.context.ReportLimits`) and drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auditor.format import finite_or_none, finite_pair, slugify
from auditor.report.context import (
    TABLE_METRICS,
    ReportLimits,
    _Images,
    _read_samples,
    load_result,
)
from auditor.report.figure_views import report_figures
from auditor.report.panels import PanelLedger
from auditor.report.view import (
    Chance,
    ClassRow,
    ClassTable,
    ClusterClassView,
    ClusterSample,
    ClusterView,
    Cover,
    FaithfulnessRow,
    FindingRef,
    FindingView,
    GalleryView,
    GateRow,
    GateTable,
    ImageView,
    Methodology,
    MethodView,
    PanelView,
    Provenance,
    ReportView,
    SanityRow,
    SubgroupTestView,
    SubgroupView,
    Support,
    TableColumn,
)
from auditor.results import (
    DATASET_KEYS,
    AuditResult,
    Finding,
    GalleryPanel,
    Gates,
    MethodInfo,
    Stat,
    evidence_label,
    method_info,
    thaw,
)
from auditor.results.vocab import SEVERITIES, severity_rank

__all__ = ["build_context", "build_view"]

_INTERVENTION_KEYS = (
    "accuracy",
    "only_fg_accuracy",
    "only_bg_accuracy",
    "mixed_rand_accuracy",
    "only_fg_drop",
    "only_fg_drop_ci",
    "background_gap",
    "n",
)
_MODEL_KEYS = (
    "name",
    "source",
    "sha256",
    "target_layer",
    "num_classes",
    "parameters",
    "target_layer_reason",
    "reshape",
)
_RUN_KEYS = (
    "started",
    "finished",
    "duration_s",
    "config_sha256",
    "seed",
    "device",
    "command",
    "timings",
    "versions",
    "config",
)
#: Subgroup statistics by their readable names.
_STAT_LABELS = {
    "background_focus": "Background focus",
    "border_focus": "Border focus",
    "entropy": "Map entropy",
    "peak_distance": "Peak distance from the centre",
    "only_fg_drop": "Accuracy lost without the background",
    "only_bg_hit": "Background alone predicted as the class",
    "correct": "Accuracy",
}
#: Members of a subgroup listed by id (the rest are counted).
_MEMBERS_SHOWN = 60


def build_view(run_dir: Path, *, limits: ReportLimits | None = None) -> ReportView:
    """The report of ``run_dir`` as a typed view (see ``docs/report.md``)."""
    run_dir = Path(run_dir)
    limits = limits or ReportLimits()
    result = load_result(run_dir)
    images = _Images(run_dir)
    table = class_table(result)
    ledger = PanelLedger()
    findings = finding_views(result, images, limits, ledger)
    table = _attach_findings(table, findings)
    galleries, n_gallery = gallery_views(result, table.rows, images, limits, ledger)
    from auditor.report.compliance import compliance_view
    from auditor.report.detection import detection_context
    from auditor.report.groups import groups_context
    from auditor.report.labels import labels_context
    from auditor.report.transplant import transplant_context

    detection = detection_context(result, run_dir)  # issue 26: None for classifier runs
    methodology = methodology_view(result)
    return ReportView(
        result=result,
        limits=limits,
        cover=cover_view(result, findings),
        provenance=provenance_view(result, limits),
        methodology=methodology,
        overall=result.overall.to_json(),
        table=table,
        findings=findings,
        gates=gate_table(result.gates),
        figures=report_figures(
            result, table.rows, _read_samples(run_dir, result.primary_method), limits
        ),
        galleries=galleries,
        n_gallery_classes=n_gallery,
        clusters=cluster_views(result, table.rows, images, limits),
        subgroups=subgroup_views(result, images),
        notes=notes(result, table, methodology, detection),
        groups=groups_context(result),
        labels=labels_context(result),  # issue 26: multi-label runs
        detection=detection,
        transplant=transplant_context(result, images),  # issue 22
        compliance=compliance_view(result, run_dir),  # issue 25
    )


def build_context(run_dir: Path, *, limits: ReportLimits | None = None) -> dict[str, Any]:
    """Everything the report templates use, by the names of ``docs/report.md``
    (:meth:`auditor.report.view.ReportView.context` of :func:`build_view`)."""
    return build_view(run_dir, limits=limits).context()


# --------------------------------------------------------------------------------------------
# per-class table
# --------------------------------------------------------------------------------------------
def class_table(result: AuditResult) -> ClassTable:
    """The per-class table without finding ids (:func:`_attach_findings` adds them)."""
    info = dict(result.metrics_info)
    # the table's columns come from the metrics' registration (``table=True``); summaries
    # written before that was recorded get the built-in set
    metrics = tuple(n for n, mi in info.items() if mi.table) or TABLE_METRICS
    columns = tuple(
        TableColumn(
            name=k,
            title=info[k].title or k if k in info else k,
            formula=info[k].formula if k in info else "",
        )
        for k in metrics
    )
    rows = [_class_row(result, name, metrics) for name in result.classes]
    # Highest risk first; classes without a risk score last; ties by name (stable, readable).
    rows.sort(key=lambda r: (r.risk is None, -(r.risk or 0.0), r.name))
    return ClassTable(metrics=metrics, columns=columns, rows=tuple(rows))


def _class_row(result: AuditResult, name: str, metrics: tuple[str, ...]) -> ClassRow:
    c = result.classes[name]
    inter = c.interventions
    return ClassRow(
        name=name,
        slug=slugify(name),
        index=c.index,
        n=c.n,
        accuracy=c.accuracy,
        accuracy_ci=tuple(c.accuracy_ci),  # type: ignore[arg-type]
        m={k: c.stat(result.primary_method, k) or Stat() for k in metrics},
        interventions=None if inter is None else {k: inter.get(k) for k in _INTERVENTION_KEYS},
        flagged=c.flagged,
        flags=tuple(c.flags),
        risk=finite_or_none(c.risk),
        finding_ids=(),
        chance=_chance(c),
    )


def _chance(c: Any) -> Chance | None:
    """The class's chance level of energy in the object for the table: the ``randomcam``
    baseline with its interval where that method ran, else the mean mask area fraction."""
    null = c.extra.get("null_baseline") if isinstance(c.extra, Mapping) else None
    if not isinstance(null, Mapping):
        return None
    rnd = null.get("randomcam")
    if isinstance(rnd, Mapping) and finite_or_none(rnd.get("mean")) is not None:
        return Chance(
            source="randomcam",
            mean=finite_or_none(rnd.get("mean")),
            ci_low=finite_or_none(rnd.get("ci_low")),
            ci_high=finite_or_none(rnd.get("ci_high")),
        )
    area = finite_or_none(null.get("area"))
    return None if area is None else Chance(source="area", mean=area)


def _attach_findings(table: ClassTable, findings: tuple[FindingView, ...]) -> ClassTable:
    """The table with each row's finding ids, in the findings' display order."""
    ids: dict[str, list[str]] = {}
    for f in findings:
        if f.cls is not None:
            ids.setdefault(f.cls, []).append(f.id)
    rows = tuple(
        r if r.name not in ids else _replace(r, finding_ids=tuple(ids[r.name])) for r in table.rows
    )
    return ClassTable(metrics=table.metrics, columns=table.columns, rows=rows)


def _replace(row: ClassRow, **changes: Any) -> ClassRow:
    from dataclasses import replace

    return replace(row, **changes)


# --------------------------------------------------------------------------------------------
# findings, gates, cover
# --------------------------------------------------------------------------------------------
def finding_views(
    result: AuditResult, images: _Images, limits: ReportLimits, ledger: PanelLedger
) -> tuple[FindingView, ...]:
    """Findings by severity (stable); the first ``limits.findings`` carry their panels (each
    picture drawn once: ``ledger`` records where)."""
    titles = {k: v.title or k for k, v in result.metrics_info.items()}
    order = sorted(
        range(len(result.findings)), key=lambda i: severity_rank(result.findings[i].severity)
    )
    out: list[FindingView] = []
    for rank, i in enumerate(order):
        f = result.findings[i]
        fid = f.id or f"F{i + 1}"
        panels: tuple[PanelView, ...] = ()
        refs: tuple[Any, ...] = ()
        if rank < limits.findings:
            chosen = _finding_panels(f, result, limits)
            panels, refs = ledger.place(
                [panel_view(g, images) for g in chosen], f"finding-{slugify(fid)}", fid
            )
        out.append(_finding_view(f, fid, titles, panels, refs))
    return tuple(out)


def _finding_panels(f: Finding, result: AuditResult, limits: ReportLimits) -> list[GalleryPanel]:
    """The gallery panels a finding shows: its examples among its class's gallery, else the
    class's first panels (``limits.finding_images`` at most)."""
    if f.cls is None or not limits.finding_images:
        return []
    entries = list(result.gallery.get(f.cls, ()))
    chosen = [g for g in entries if g.id in f.examples] or entries
    return chosen[: limits.finding_images]


def _finding_view(
    f: Finding, fid: str, titles: Mapping[str, str], panels: Any, refs: Any
) -> FindingView:
    # member lists are long: the Subgroups section shows them
    evidence = {k: v for k, v in f.evidence.items() if k != "members"}
    return FindingView(
        id=fid,
        cls=f.cls,
        slug=None if f.cls is None else slugify(f.cls),
        kind=f.kind,
        severity=f.severity,
        title=f.title or f.message or f.kind or fid,
        message=f.message,
        evidence=tuple((evidence_label(str(k), titles), v) for k, v in evidence.items()),
        examples=tuple(f.examples),
        panels=panels,
        panel_refs=refs,
        support=_support(f.extra.get("support")),
    )


def _support(raw: object) -> Support | None:
    """The statistic a finding rests on: its estimate, interval and the baseline it excludes."""
    d = thaw(raw) if raw is not None else None
    if not isinstance(d, dict) or not d:
        return None
    return Support(
        statistic=str(d.get("statistic") or ""),
        label=str(d.get("label") or d.get("statistic") or ""),
        estimate=finite_or_none(d.get("estimate")),
        ci=_pair(d.get("ci")),
        baseline=finite_or_none(d.get("baseline")),
        against=str(d.get("against") or ""),
        subgroup=finite_or_none(d.get("subgroup")),
        rest=finite_or_none(d.get("rest")),
        confidence=finite_or_none(d.get("confidence")),
    )


def _pair(value: object) -> tuple[float | None, float | None]:
    """An interval of finite bounds (``(None, None)`` unless ``value`` is a pair)."""
    low, high = finite_pair(value)
    return (low, high)


def panel_view(g: GalleryPanel, images: _Images) -> PanelView:
    """A gallery panel with its picture as a ``data:`` URI (read from the run directory)."""
    return PanelView(
        id=g.id,
        file=g.file,
        label=g.label,
        pred=g.pred,
        confidence=g.confidence,
        energy_in_mask=g.energy_in_mask,
        background_focus=g.background_focus,
        why=g.why,
        uri=images.uri(g.file),
        extra=thaw(g.extra),
    )


def gate_table(gates: Gates | None) -> GateTable | None:
    """The gate checks, failed first, then by rule and class (None: no gates configured)."""
    if gates is None:
        return None
    rows = [
        GateRow(
            rule=g.rule,
            cls=g.cls,
            quantity=g.quantity,
            stat=g.stat,
            value=g.value,
            threshold=g.threshold,
            bound=g.bound,
            passed=g.passed,
            note=g.note,
        )
        for g in gates.results
    ]
    rows.sort(key=lambda r: (bool(r.passed), str(r.rule), str(r.cls)))
    return GateTable(passed=gates.passed, results=tuple(rows), n_failed=gates.n_failed)


def cover_view(result: AuditResult, findings: tuple[FindingView, ...]) -> Cover:
    """Title (``[report] title`` when set, else the model's name), date, verdict, counts."""
    counts = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    finished = str(result.run.finished or result.run.started or "")
    interpretable = result.extra.get("interpretability", {}).get("interpretable")
    title = (
        str(result.title)
        if result.title and result.title != "Model attention audit"
        else f"Model audit: {result.model.name or result.model.source or 'unnamed model'}"
    )
    return Cover(
        title=title,
        date=finished[:10] if finished else None,
        verdict_text=("Not interpretable · " if interpretable is False else "")
        + _verdict(result.gates),
        severity_counts=counts,
        reshape_text=_reshape_text(result.model.to_json().get("reshape")),
    )


def _verdict(gates: Gates | None) -> str:
    """The cover's one-line verdict."""
    if gates is None or not gates.results:
        return "No release gates configured"
    if gates.passed:
        return f"All {len(gates.results)} gate checks passed"
    return f"{gates.n_failed} of {len(gates.results)} gate checks failed"


def _reshape_text(value: object) -> str | None:
    """One line for the report: how the target layer's output became a grid."""
    r = value if isinstance(value, Mapping) else {}
    kind = r.get("kind")
    if not kind:
        return None
    if kind == "none":
        return "none: the layer outputs [B, K, h, w]"
    if kind == "channels_last":
        return "channels-last [B, h, w, D] permuted to [B, D, h, w]"
    if kind == "tokens":
        grid = r.get("grid")
        g = f"{grid[0]}x{grid[1]}" if isinstance(grid, list) and len(grid) == 2 else "square"
        src = f" ({r['source']})" if r.get("source") else ""
        return f"tokens: {r.get('prefix_tokens')} prefix token(s) dropped, {g} grid{src}"
    return str(kind)


# --------------------------------------------------------------------------------------------
# galleries, clusters, subgroups
# --------------------------------------------------------------------------------------------
def gallery_views(
    result: AuditResult,
    rows: tuple[ClassRow, ...],
    images: _Images,
    limits: ReportLimits,
    ledger: PanelLedger,
) -> tuple[tuple[GalleryView, ...], int]:
    """Galleries of the highest-risk classes (then classes outside the table), capped, and
    the number of classes with a gallery before the cap."""
    gallery = result.gallery
    names = [r.name for r in rows if r.name in gallery]
    known = {r.name for r in rows}
    names += [n for n in gallery if n not in known]
    out = []
    for name in names[: limits.gallery_classes]:
        entries = list(gallery[name])
        slug = slugify(name)
        panels, refs = ledger.place(
            [panel_view(g, images) for g in entries[: limits.gallery_per_class]],
            f"gallery-{slug}",
            f"gallery of {name}",
        )
        out.append(
            GalleryView(cls=name, slug=slug, n_total=len(entries), panels=panels, panel_refs=refs)
        )
    return tuple(out), len(names)


def cluster_views(
    result: AuditResult, rows: tuple[ClassRow, ...], images: _Images, limits: ReportLimits
) -> tuple[ClusterClassView, ...]:
    """Each clustered class (in risk order, capped at ``limits.gallery_classes``)."""
    out = []
    for name, cc in (result.clusters or {}).items():
        items = tuple(
            ClusterView(
                id=cl.id,
                size=cl.size,
                background_focus=cl.background_focus,
                outlier=cl.outlier,
                exemplars=tuple(cl.exemplars),
                images=tuple(ImageView(file=p, uri=images.uri(p)) for p in cl.gallery),
            )
            for cl in cc.clusters
        )
        out.append(
            ClusterClassView(
                cls=name,
                slug=slugify(name),
                k=cc.k,
                eigengap=cc.eigengap,
                clusters=items,
                sample=_clusters_sample(cc.extra.get("clusters_sample")),
            )
        )
    risk_pos = {r.name: i for i, r in enumerate(rows)}
    out.sort(key=lambda c: risk_pos.get(c.cls, len(rows)))
    return tuple(out[: limits.gallery_classes])


def _clusters_sample(v: Any) -> ClusterSample | None:
    """``(n, of)`` of a sampled class's ``clusters_sample`` block (issue 14), else None."""
    if not isinstance(v, Mapping):
        return None
    try:
        return ClusterSample(n=int(v["n"]), of=int(v["of"]))
    except (KeyError, TypeError, ValueError):
        return None


def subgroup_views(result: AuditResult, images: _Images) -> tuple[SubgroupView, ...]:
    """One entry per reported subgroup (``clusters[class].subgroups``): its finding, every
    statistic's difference and interval, the intervention outcome, members, and the panels of
    its exemplars beside the rest of its class; by severity, then class."""
    by_key: dict[tuple[str, Any], FindingRef] = {}
    for f in result.findings:
        if f.kind in ("subgroup_shortcut", "strategy_cluster") and f.cls is not None:
            by_key[(f.cls, f.evidence.get("cluster"))] = FindingRef(id=f.id, title=f.title)
    out = [
        _subgroup_view(name, sg, by_key.get((name, sg.cluster)), images)
        for name, cc in (result.clusters or {}).items()
        for sg in cc.subgroups or ()
    ]
    order = {"high": 0, "medium": 1, "low": 2}
    out.sort(key=lambda g: (order.get(g.severity, 3), g.cls))
    return tuple(out)


def _subgroup_view(name: str, sg: Any, finding: FindingRef | None, images: _Images) -> SubgroupView:
    tests = tuple(
        SubgroupTestView(
            name=key,
            label=_STAT_LABELS.get(key, key),
            subgroup=finite_or_none(t.subgroup),
            rest=finite_or_none(t.rest),
            diff=finite_or_none(t.diff),
            ci=_pair(t.ci),
            margin=finite_or_none(t.margin),
            method=t.method,
            separates=t.separates,
        )
        for key, t in sg.tests.items()
    )
    members = tuple(sg.members)
    rate = sg.only_bg_rate
    return SubgroupView(
        cls=name,
        slug=slugify(name),
        finding=finding,
        severity=sg.severity,
        size=sg.size,
        class_size=sg.class_size,
        where=sg.where,
        region_share=finite_or_none(sg.region_share),
        rest_region_share=finite_or_none(sg.rest_region_share),
        needed_statistic=sg.needed_statistic,
        interventions=sg.interventions,
        only_bg_rate=finite_or_none(rate[0]),
        only_bg_rate_ci=(finite_or_none(rate[1]), finite_or_none(rate[2])),
        tests=tests,
        members=members[:_MEMBERS_SHOWN],
        n_members_hidden=max(0, len(members) - _MEMBERS_SHOWN),
        images=tuple(ImageView(file=p, uri=images.uri(p)) for p in sg.gallery),
    )


# --------------------------------------------------------------------------------------------
# methodology, provenance, notes
# --------------------------------------------------------------------------------------------
def methodology_view(result: AuditResult) -> Methodology:
    """Methods (definitions and dataset-wide statistics), metric definitions, finding rules,
    faithfulness and the sanity check."""
    infos = _method_infos(result)
    methods = []
    for m in result.methods:
        info = infos.get(m) or MethodInfo(name=m, title=m)
        methods.append(
            MethodView(
                name=m,
                title=info.title or m,
                formula=info.formula or None,
                description=info.description or None,
                reference=info.reference or None,
                cost=info.extra.get("cost"),
                primary=m == result.primary_method,
                metrics=dict(result.overall.metrics.get(m, {})),
                status_counts=thaw(result.overall.status_counts.get(m, {})),
            )
        )
    return Methodology(
        methods=tuple(methods),
        metrics_info=tuple(result.metrics_info.values()),
        metric_titles={k: v.title or k for k, v in result.metrics_info.items()},
        rules=tuple(result.rules.items()),
        faithfulness=tuple(
            FaithfulnessRow(method=m, metrics=dict(stats))
            for m, stats in (result.faithfulness or {}).items()
        ),
        sanity=tuple(
            SanityRow(
                method=m,
                similarity=s.similarity,
                threshold=s.threshold,
                trustworthy=s.trustworthy,
                n=s.n,
                randomised=tuple(s.randomised),
            )
            for m, s in (result.sanity or {}).items()
        ),
        sanity_status=thaw(result.sanity_status) if result.sanity_status else None,
    )


def _method_infos(result: AuditResult) -> dict[str, MethodInfo]:
    """Each method's metadata from the summary; where a run written before the metadata fix
    has none (empty formula), from the live registry, so that a re-render shows it."""
    out = dict(result.methods_info)
    stale = [m for m in result.methods if not (out.get(m) and out[m].formula)]
    if stale:
        from auditor.cam import METHODS  # imports torch: only for such old runs

        for m in stale:
            if m in METHODS:
                out[m] = method_info(METHODS[m])
    return out


def provenance_view(result: AuditResult, limits: ReportLimits) -> Provenance:
    """The summary's objects with every documented key present, and what ran how."""
    return Provenance(
        tool={"name": None, "version": None, **thaw(result.tool)},
        model=_keyed(result.model.to_json(), _MODEL_KEYS),
        dataset=_keyed(result.dataset.to_json(), DATASET_KEYS),
        run=_keyed(result.run.to_json(), _RUN_KEYS),
        versions=tuple(sorted((str(k), str(v)) for k, v in result.run.versions.items())),
        timings=tuple((str(k), v) for k, v in result.run.timings.items()),
        config=thaw(result.run.config) if result.run.config is not None else None,
        skipped=tuple(dict(s) for s in result.dataset.skipped[: limits.skipped]),
        n_skipped=result.dataset.n_skipped,
    )


def _keyed(value: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``value`` with every key the templates read present (``None`` where absent)."""
    return {**{k: None for k in keys}, **value}


def notes(
    result: AuditResult,
    table: ClassTable,
    methodology: Methodology,
    detection: Mapping[str, Any] | None,
) -> tuple[str, ...]:
    """Sentences for the sections that did not run."""
    out = []
    if not table.any_interventions and detection is None:
        out.append(
            "Background interventions did not run: the report shows where the model "
            "looks, not whether it depends on the background."
        )
    if not methodology.faithfulness:
        out.append("Faithfulness metrics (deletion/insertion) did not run.")
    if result.dataset.annotated is False:
        out.append("The dataset has no object annotations: localisation metrics are absent.")
    return tuple(out)
