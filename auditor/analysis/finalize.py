"""Finalisation: a run's shards → the complete typed result and the run directory's outputs.

Both paths take ONE frozen :class:`FinalizeInputs`:

* exact (:func:`_finalize_exact`): every row in memory (Arrow), :func:`auditor.analysis.analyse`;
* streamed (:func:`_finalize_streamed`): the shards read one at a time
  (:class:`auditor.analysis.streamed.StreamedRun`), for runs too large for memory.

Either way :func:`_finish` adds provenance (run, model, dataset), the methods' and metrics'
metadata, groups, gates and the drawn gallery, then writes ``summary.json``, ``junit.xml``, the
CSVs and (``render``) the reports. No model is loaded and torch is never imported here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor._version import __version__
from auditor.analysis import FindingRules, analyse, evaluate_gates
from auditor.audit.provenance import library_versions
from auditor.audit.store import atomic_write_json
from auditor.config import AuditConfig, AuditSettings, GateRule, to_jsonable
from auditor.errors import AuditorInputError
from auditor.results import (
    AuditResult,
    DatasetInfo,
    MethodInfo,
    ModelInfo,
    RunInfo,
    SanityCheck,
    SanityResult,
    freeze,
    method_info,
)

if TYPE_CHECKING:
    from auditor.audit.store import RunStore

__all__ = ["AuditOutcome", "FinalizeInputs", "cluster_analysis", "finalize"]

log = logging.getLogger("auditor")


@dataclass
class AuditOutcome:
    """What :func:`auditor.run_audit` returns: the run directory, the typed result and the
    verdict."""

    run_dir: Path
    result: AuditResult | None  # None: a shard job / torchrun rank > 0 (no finalisation here)
    passed: bool
    report: dict[str, Path] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """The result as the ``summary.json`` object (a fresh dict on every call; ``{}`` for a
        shard job, whose results ``auditor finalize`` makes)."""
        return self.result.to_json() if self.result is not None else {}

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


@dataclass(frozen=True)
class FinalizeInputs:
    """Everything finalisation reads, gathered once by the audit loop or ``auditor finalize``.

    Attributes:
        run_dir: the run directory written to.
        store: its :class:`~auditor.audit.store.RunStore` (the shards to read).
        dataset: the opened dataset (display images, hashes, sizes; no model).
        classes: the model's class names, in output order.
        settings: ``[audit]`` (methods, primary method, aggregation, bootstrap, ...).
        gates: the release gate rules.
        model_info: the ``model`` object of summary.json (source, sha256, target layer).
        config: the validated config, or ``None`` for a run started through the Python API.
        sanity: the stored sanity check (:class:`~auditor.results.SanityCheck`, or its JSON
            form ``sanity.json``), or ``None`` when none ran.
        started: when the audit started (UTC).
        t0: ``time.perf_counter()`` at the start (for ``duration_s``).
        loop_s: seconds the audit loop took (the longest shard's).
        pdf: write report.pdf too; render: write the reports at all.
        command: the command line recorded in summary.json ``run.command``.
        methods_info: the methods' ``MethodInfo`` JSON recorded in the shard manifest (read
            by ``auditor finalize``: a method the torch-free registry does not hold in this
            process is described from it), or ``None``.
        transplant: the transplant intervention's hook (issue 22; built by the audit loop,
            which holds the model: :func:`auditor.audit.transplant.make_transplant`), run on
            the analysed result; ``None``: not run (``auditor finalize`` has no model).
    """

    run_dir: Path
    store: RunStore
    dataset: Any
    classes: Sequence[str]
    settings: AuditSettings
    gates: Sequence[GateRule]
    model_info: Mapping[str, Any]
    config: AuditConfig | None
    sanity: SanityCheck | Mapping[str, Any] | None
    started: datetime
    t0: float
    loop_s: float
    pdf: bool
    render: bool
    command: str | None
    methods_info: Mapping[str, Any] | None = None
    transplant: Callable[..., AuditResult] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "gates", tuple(self.gates))
        if self.sanity is not None and not isinstance(self.sanity, SanityCheck):
            object.__setattr__(self, "sanity", SanityCheck.from_json(self.sanity))

    @property
    def sanity_check(self) -> SanityCheck:
        """The sanity check's record (not run, "not run", when none was recorded)."""
        if isinstance(self.sanity, SanityCheck):
            return self.sanity
        return SanityCheck.not_run("not run")

    @property
    def sanity_results(self) -> dict[str, SanityResult]:
        """The per-method sanity results."""
        return dict(self.sanity_check.results)


@dataclass(frozen=True)
class _Analysed:
    """What either aggregation path hands to :func:`_finish`."""

    result: AuditResult
    prim: pa.Table  # the primary method's rows (at least id, index, label, pred, status, ...)
    hasher: Any  # hashlib object over (id, image, mask, label) of the evaluated samples
    cams: Mapping[int, np.ndarray]  # the primary method's low-resolution maps by index
    aggregation: str  # "exact" | "streaming"
    t_an: float  # perf_counter() when the analysis started


def finalize(inputs: FinalizeInputs) -> AuditOutcome:
    """Aggregate the shards, write samples.parquet, summary.json, gallery, junit, report."""
    from auditor.analysis.streamed import choose_aggregation, count_rows

    s, store = inputs.settings, inputs.store
    t_an = time.perf_counter()
    aggregation = choose_aggregation(
        s.aggregation, count_rows(store.shards, store.batch_numbers()), len(s.methods)
    )
    if aggregation == "streaming" and not getattr(inputs.dataset, "multilabel", False):
        return _finalize_streamed(inputs, t_an)
    return _finalize_exact(inputs, t_an)


def _finalize_exact(inputs: FinalizeInputs, t_an: float) -> AuditOutcome:
    """:func:`finalize` with every row in memory."""
    s, store = inputs.settings, inputs.store
    table = store.read_rows()
    log.info("aggregating %d rows from %s", table.num_rows, store.shards)
    # multi-label (issue 26): every (image, label) row is kept in samples.parquet; the
    # per-class analysis reads the pairs where the image carries the label
    full = table
    fills: dict[str, Any] | None = None
    multilabel = "explained" in table.column_names
    if multilabel:
        from auditor.analysis.multilabel import positive_rows

        table, fills = _label_fills(positive_rows(full), full, inputs.classes, s)
    # the primary method's low-resolution CAMs, read once for clusters and gallery (tiny:
    # h×w float32 per sample)
    primary_cams = store.load_cams(s.primary) if table.num_rows else {}
    clusters, membership = cluster_analysis(
        primary_cams, table, inputs.classes, s, tuple(inputs.dataset.config.input_size)
    )
    if table.num_rows:
        # `cluster`: the primary method's cluster id within the sample's class (-1: none)
        cl_col = np.asarray(
            [membership.get(int(i), -1) for i in table.column("index").to_pylist()], np.int64
        )
        table = table.append_column("cluster", pa.array(cl_col, pa.int64()))
        if multilabel:
            cl_full = [membership.get(int(i), -1) for i in full.column("index").to_pylist()]
            full = full.append_column("cluster", pa.array(cl_full, pa.int64()))
        store.write_samples(full if multilabel else table)
        result = analyse(
            table,
            classes=inputs.classes,
            methods=s.methods,
            settings=s,
            rules=_finding_rules(full, inputs.classes, s) if multilabel else FindingRules(),
            clusters=clusters,
            sanity=inputs.sanity_results,
        )
    else:
        result = AuditResult(methods=tuple(s.methods), primary_method=s.primary)
    if multilabel:
        from auditor.analysis.multilabel import attach_labels

        result = attach_labels(result, full, inputs.classes, s)
        if fills is not None:  # the multi-label fill choice, not the single-label one
            extra = {**dict(result.extra), "intervention_fills": fills}
            result = result.replace(extra=freeze(extra))
    prim = table.filter(pc.equal(table.column("method"), s.primary)) if table.num_rows else table
    h = hashlib.sha256()
    if prim.num_rows:
        for sid, ish, msh, lab in zip(
            prim.column("id").to_pylist(),
            prim.column("image_sha256").to_pylist(),
            prim.column("mask_sha256").to_pylist(),
            prim.column("label").to_pylist(),
        ):
            h.update(f"{sid}\0{ish}\0{msh}\0{lab}\n".encode())
    return _finish(inputs, _Analysed(result, prim, h, primary_cams, "exact", t_an))


def _label_fills(
    table: pa.Table, full: pa.Table, classes: Sequence[str], s: AuditSettings
) -> tuple[pa.Table, dict[str, Any] | None]:
    """The positive rows of a multi-label run with collapsed interventions replaced by an
    alternative fill, and the record (:mod:`auditor.analysis.multilabel_fills`)."""
    from auditor.analysis.multilabel import label_chance
    from auditor.analysis.multilabel_fills import choose_label_fills

    chance = label_chance(full, len(classes), primary=s.primary, threshold=s.threshold)
    return choose_label_fills(table, primary=s.primary, configured=s.intervention_fill,
                              chance=chance, confidence=s.confidence)  # fmt: skip


def _finding_rules(full: pa.Table, classes: Sequence[str], s: AuditSettings) -> FindingRules:
    """A multi-label run's finding rules: the per-label chance baseline of the
    only-background test (:func:`auditor.analysis.multilabel.label_chance`, issue 26)."""
    from auditor.analysis.multilabel import label_chance

    chance = label_chance(full, len(classes), primary=s.primary, threshold=s.threshold)
    return FindingRules(label_chance=chance)


def _finalize_streamed(inputs: FinalizeInputs, t_an: float) -> AuditOutcome:
    """:func:`finalize` reading the shards one at a time (auditor.analysis.streamed)."""
    from auditor.analysis.streamed import StreamedRun

    s, store = inputs.settings, inputs.store
    log.info("aggregating the shards of %s one at a time (streaming)", store.shards)
    streamed = StreamedRun(store, classes=inputs.classes, settings=s)
    try:
        slim = streamed.slim
        clusters, membership = cluster_analysis(
            streamed.cams, slim, inputs.classes, s, tuple(inputs.dataset.config.input_size)
        )
        if slim.num_rows:
            streamed.write_samples(membership)
            result = streamed.analyse(
                rules=FindingRules(), clusters=clusters, sanity=inputs.sanity_results
            )
        else:
            result = AuditResult(methods=tuple(s.methods), primary_method=s.primary)
        return _finish(
            inputs, _Analysed(result, slim, streamed.hasher, streamed.cams, "streaming", t_an)
        )
    finally:
        streamed.close()


def _finish(inputs: FinalizeInputs, done: _Analysed) -> AuditOutcome:
    """The rest of :func:`finalize` from the analysed result and the primary method's rows
    (provenance, gates, gallery, summary.json, JUnit, CSVs, report)."""
    from auditor.analysis.groups.run import attach_groups, group_gates
    from auditor.report.gallery import draw_gallery

    run_dir, s, config = inputs.run_dir, inputs.settings, inputs.config
    skipped = inputs.store.read_skipped()
    result = _with_provenance(inputs, done, skipped)
    result = _transplant(inputs, done, result)  # issue 22: after the findings, before gates
    result = attach_groups(
        run_dir, result, data_config=inputs.dataset.config, classes=inputs.classes, settings=s,
        min_group_size=config.report.min_group_size if config else 10,
    )  # fmt: skip
    gates = inputs.gates
    from auditor.analysis.interpretability import attach as attach_interpretability

    result = attach_interpretability(result)  # before the gates: require_interpretable
    result = result.replace(gates=group_gates(result, evaluate_gates(result, gates), gates))
    view = inputs.dataset.pair_view() if getattr(inputs.dataset, "multilabel", False) else None
    result = draw_gallery(run_dir, done.cams, view or inputs.dataset, done.prim, result, s)
    _write_outputs(run_dir, result)
    if result.dataset.n_evaluated == 0:
        reasons = "; ".join(f"{d['id']}: {d['reason']}" for d in result.dataset.skipped[:3])
        raise AuditorInputError(
            f"no sample could be evaluated ({len(skipped)} skipped"
            + (f", e.g. {reasons}" if reasons else "")
            + f"); see {run_dir / 'summary.json'}"
        )
    report: dict[str, Path] = {}
    if inputs.render:
        from auditor.report import render_report

        report = render_report(
            run_dir,
            html=True,
            pdf=inputs.pdf,
            templates=config.report.templates if config else None,
            pdf_timeout_s=config.report.pdf_timeout_s if config else 600,
        )
    return AuditOutcome(run_dir=run_dir, result=result, passed=result.passed, report=report)


def _transplant(inputs: FinalizeInputs, done: _Analysed, result: AuditResult) -> AuditResult:
    """Run the transplant hook, or record why it was not run (``[audit] transplant``)."""
    if not getattr(inputs.settings, "transplant", False) or not result.classes:
        return result
    from auditor.analysis.transplant import apply_transplants, not_run

    if getattr(inputs.dataset, "multilabel", False):
        reason = "multi-label run: the transplant is defined for single-label classifiers"
    elif inputs.transplant is None:
        reason = "finalised without the model (sharded run: auditor finalize)"
    else:
        return inputs.transplant(inputs.run_dir, result, done.cams, done.prim)
    return apply_transplants(result, {name: not_run(reason) for name in result.classes})


def _write_outputs(run_dir: Path, result: AuditResult) -> None:
    """summary.json, junit.xml, classes.csv and findings.csv of the finished result."""
    from auditor.export import write_findings_csv, write_per_class_csv
    from auditor.report.junit import write_junit

    atomic_write_json(run_dir / "summary.json", result.to_json())
    write_junit(run_dir / "junit.xml", result)
    write_per_class_csv(result, run_dir / "classes.csv")
    write_findings_csv(result, run_dir / "findings.csv")
    _refresh_manifest(run_dir)


def _refresh_manifest(run_dir: Path) -> None:
    """A run finalised again (``auditor finalize``, ``render=False``) rewrote files that an
    earlier report's ``checksums.json`` covers: the manifest is rewritten over the tool's own
    new files, so that ``load_run``/``compare`` do not read them as tampered. A signed run
    (``signoff.json``) is left alone: its signature covers the old manifest, and
    ``auditor verify`` must show that the signed files changed."""
    from auditor.report.signoff import MANIFEST, SIGNOFF, write_manifest

    if (run_dir / MANIFEST).is_file() and not (run_dir / SIGNOFF).exists():
        write_manifest(run_dir)


def _with_provenance(
    inputs: FinalizeInputs, done: _Analysed, skipped: Sequence[Mapping[str, Any]]
) -> AuditResult:
    """The analysed result with tool, run, model, dataset, methods' and metrics' metadata,
    settings and the sanity check's status filled in."""
    from auditor.metrics.registry import METRICS

    s, config, prim, h = inputs.settings, inputs.config, done.prim, done.hasher
    result = done.result
    for sk in skipped:
        h.update(f"skipped\0{sk['id']}\n".encode())
    annotated = bool(prim.num_rows and any(prim.column("has_mask").to_pylist()))
    n_nonfinite = _nonfinite_count(prim)
    finished = datetime.now(timezone.utc)
    dataset = inputs.dataset
    return result.replace(
        tool=freeze({"name": "cam-auditor", "version": __version__}),
        run=RunInfo.from_json(
            {
                "started": inputs.started.isoformat(timespec="seconds"),
                "finished": finished.isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - inputs.t0, 3),
                "timings": {
                    "audit_loop_s": round(inputs.loop_s, 3),
                    "analysis_s": round(time.perf_counter() - done.t_an, 3),
                },
                "config_sha256": config.sha256 if config else None,
                "aggregation": done.aggregation,
                "seed": s.seed,
                "device": s.device,
                "command": inputs.command,
                "versions": library_versions(),
                "config": to_jsonable(config.raw) if config else to_jsonable(s),
            }
        ),
        title=config.report.title if config else "Model attention audit",
        model=ModelInfo.from_json(dict(inputs.model_info)),
        dataset=DatasetInfo.from_json(
            {
                "name": getattr(dataset.config, "source", None)
                and Path(str(dataset.config.manifest or dataset.config.root)).name,
                "format": dataset.config.format,
                "sha256": h.hexdigest(),
                "annotation_sha256": dataset.annotation_sha256(),
                "n_samples": len(dataset),
                # multi-label: images (prim holds one row per image and label it carries)
                "n_evaluated": (
                    int(result.extra["labels"]["n_images"])
                    if "labels" in result.extra
                    else int(prim.num_rows)
                ),
                "n_skipped": len(skipped),
                "n_nonfinite_logits": n_nonfinite,
                "annotated": annotated,
                "input_size": list(dataset.config.input_size),
                "classes": list(inputs.classes),
                "skipped": [{"id": sk["id"], "reason": sk["reason"]} for sk in skipped],
            }
        ),
        methods_info=MappingProxyType(_methods_info(s.methods, inputs.methods_info)),
        metrics_info=MappingProxyType(dict(METRICS)),
        settings=freeze(to_jsonable(s)),
        sanity_status=inputs.sanity_check.status,
    )


def _nonfinite_count(prim: pa.Table) -> int:
    """Samples whose logits were NaN/Inf (status ``nonfinite_logits``; the finding is the
    registered rule :mod:`auditor.analysis.findings.run`)."""
    if not prim.num_rows or "status" not in prim.column_names:
        return 0
    bad = pc.fill_null(pc.equal(prim.column("status"), "nonfinite_logits"), False)
    return int(pc.sum(pc.cast(bad, pa.int64())).as_py() or 0)


def cluster_analysis(
    cams: Mapping[int, np.ndarray],
    table: pa.Table,
    classes: Sequence[str],
    s: AuditSettings,
    input_size: tuple[int, int] | None = None,
) -> tuple[dict[str, Any], dict[int, int]]:
    """SpRAy + subgroup tests per class on the primary method's low-resolution CAMs.

    Returns (``summary["clusters"]``, ``{dataset index: cluster id within its class}``).
    """
    from auditor.analysis.spray.subgroups import analyse_class, border_chance, class_to_json

    if not s.clusters or table.num_rows == 0:
        return {}, {}
    from auditor.progress import phase

    phase("clustering", f"SpRAy and subgroup tests per class on {s.primary}")
    prim = table.filter(pc.equal(table.column("method"), s.primary))
    idx = prim.column("index").to_numpy()
    labels = prim.column("label").to_numpy()
    ids = prim.column("id")  # made into Python strings one class at a time
    per_sample = _per_sample_stats(prim)
    some = next(iter(cams.values()), None)
    size = input_size or ((some.shape[0], some.shape[1]) if some is not None else (1, 1))
    chance = border_chance(size, s.border_width) if min(size) > 2 else 1.0
    out: dict[str, Any] = {}
    membership: dict[int, int] = {}
    for ci, name in enumerate(classes):
        sel = np.flatnonzero(labels == ci)
        sel = sel[np.fromiter((int(idx[j]) in cams for j in sel), bool, sel.size)]
        if len(sel) < 6:
            continue
        maps = np.stack([cams[int(idx[j])] for j in sel])
        stats = {k: v[sel] for k, v in per_sample.items() if np.isfinite(v[sel]).sum() >= 2}
        res = analyse_class(
            maps,
            stats,
            n_classes=len(classes),
            border_chance_share=chance,
            confidence=s.confidence,
            n_boot=max(200, min(s.bootstrap, 2000)),
            seed=s.seed,
        )
        out[name] = class_to_json(res, [str(v) for v in ids.take(pa.array(sel)).to_pylist()])
        for j, lab in zip(sel, res.labels):
            membership[int(idx[j])] = int(lab)
    return out, membership


def _per_sample_stats(prim: pa.Table) -> dict[str, np.ndarray]:
    """The per-sample statistics SpRAy's subgroups are tested on (float64, nulls NaN, no Python
    object per sample)."""

    def col(name: str) -> np.ndarray:
        if name not in prim.column_names:
            return np.full(prim.num_rows, np.nan)
        a = pc.fill_null(pc.cast(prim.column(name), pa.float64()), np.nan)
        return np.asarray(a.to_numpy(), float)

    correct = col("correct")
    return {
        "background_focus": col("background_focus"),
        "border_focus": col("border_focus"),
        "entropy": col("entropy"),
        "correct": correct,
        "only_bg_hit": col("only_bg_correct"),
        "only_fg_drop": correct - col("only_fg_correct"),
    }


def _methods_info(
    methods: Sequence[str], recorded: Mapping[str, Any] | None
) -> dict[str, MethodInfo]:
    """Each method's :class:`MethodInfo`: from the registry where this process registered it
    (the audit loop), else from the shard manifest's record (``auditor finalize``: no torch);
    only a run directory from before that record imports the CAM methods (and torch)."""
    from auditor.cam.registry import METHODS  # torch-free

    rec = recorded or {}
    if any(m not in METHODS and m not in rec for m in methods):
        import auditor.cam.methods  # noqa: F401  (registers the built-in methods)
    return {
        m: method_info(METHODS[m]) if m in METHODS else MethodInfo.from_json(m, rec[m])
        for m in methods
    }
