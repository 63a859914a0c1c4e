"""Finalising a detection run: rows -> samples.parquet, summary.json, report (issue 26).

The same run-directory files as a classifier run; ``summary.json`` keeps schema 1 and adds
(additively) ``detection`` (the run's thresholds, the target layer explained, overall
recall/precision) and ``classes.<c>.detection`` (:mod:`auditor.analysis.detection`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from auditor._version import __version__
from auditor.analysis.detection import RULES, analyse_detection
from auditor.analysis.gates import evaluate_gates
from auditor.audit.store import RunStore, atomic_write_json
from auditor.config import AuditConfig, to_jsonable
from auditor.errors import AuditorInputError
from auditor.results import AuditResult, DatasetInfo, ModelInfo, RunInfo, freeze, method_info

__all__ = ["finish_detection", "read_box_maps"]


def _method_infos(methods: tuple[str, ...]) -> Any:
    from auditor.cam import METHODS

    out = {}
    for m in methods:
        info = method_info(METHODS[m])
        if METHODS[m].needs_gradients:
            info = replace(
                info,
                description=(
                    info.description + " Detection: y is the score of the explained detection; "
                    "A are the target layer's levels upsampled to the finest and concatenated."
                ),
            )
        out[m] = info
    return MappingProxyType(out)


def finish_detection(
    run_dir: Path,
    store: RunStore,
    *,
    cfg: AuditConfig,
    dataset: Any,
    classes: tuple[str, ...],
    model_info: dict[str, Any],
    started: datetime,
    t0: float,
    loop_s: float,
    pdf: bool,
    render: bool,
    command: str | None,
) -> Any:
    """Analyse the stored rows, write the run directory, render the report."""
    from auditor.analysis.finalize import AuditOutcome
    from auditor.audit.provenance import library_versions
    from auditor.export import write_findings_csv, write_junit, write_per_class_csv

    s = cfg.audit
    rows = store.read_rows()
    skipped = store.read_skipped()
    store.write_samples(rows)
    _group_columns(run_dir, cfg)
    per_class, overall, findings, block = analyse_detection(rows, classes, s)
    findings = _attach_groups(block, rows, cfg, findings)
    block["gallery"] = _gallery(run_dir, rows, per_class, dataset, s)  # drawn once, here
    n_images = int(block.get("n_images", 0))
    detection = {
        "task": "detection",
        "score_threshold": cfg.model.score_threshold,
        "iou_threshold": s.iou_threshold,
        "intervention_fill": s.intervention_fill,
        "interventions": s.interventions,
        "target_layer": model_info.get("target_layer"),
        "target_layer_explained": model_info.get("target_layer_explained"),
        "label_convention": "detector label k + 1 = class k of dataset.classes; 0 = background",
        **block,
    }
    result = AuditResult(
        methods=tuple(s.methods),
        primary_method=s.primary,
        overall=overall,
        classes=MappingProxyType(per_class),
        findings=findings,
        rules=freeze(dict(RULES)),
        tool=freeze({"name": "cam-auditor", "version": __version__}),
        run=RunInfo.from_json(
            {
                "started": started.isoformat(timespec="seconds"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - t0, 3),
                "timings": {"audit_loop_s": round(loop_s, 3)},
                "config_sha256": cfg.sha256,
                "seed": s.seed,
                "device": s.device,
                "command": command,
                "versions": library_versions(),
                "config": to_jsonable(cfg.raw),
            }
        ),  # fmt: skip
        title=cfg.report.title,
        model=ModelInfo.from_json(model_info),
        dataset=DatasetInfo.from_json(
            {
                "name": Path(str(cfg.data.annotations or cfg.data.root)).name,
                "format": cfg.data.format,
                "sha256": _dataset_sha(dataset, skipped),
                "annotation_sha256": dataset.annotation_sha256(),
                "n_samples": len(dataset),
                "n_evaluated": n_images,
                "n_skipped": len(skipped),
                "annotated": True,
                "input_size": list(cfg.data.input_size),
                "classes": list(classes),
                "skipped": [{"id": sk["id"], "reason": sk["reason"]} for sk in skipped],
            }
        ),  # fmt: skip
        methods_info=_method_infos(tuple(s.methods)),
        settings=freeze(to_jsonable(s)),
        extra=MappingProxyType({"detection": detection}),
    )
    result = result.replace(gates=_gates(result, cfg.gates, block.get("groups")))
    atomic_write_json(run_dir / "summary.json", result.to_json())
    write_junit(run_dir / "junit.xml", result)
    write_per_class_csv(result, run_dir / "classes.csv")
    write_findings_csv(result, run_dir / "findings.csv")
    if n_images == 0:
        reasons = "; ".join(f"{d['id']}: {d['reason']}" for d in skipped[:3])
        raise AuditorInputError(
            f"no image could be evaluated ({len(skipped)} skipped"
            + (f", e.g. {reasons}" if reasons else "")
            + f"); see {run_dir / 'summary.json'}"
        )
    report: dict[str, Path] = {}
    if render:
        from auditor.report import render_report

        report = render_report(run_dir, html=True, pdf=pdf, templates=cfg.report.templates,
                               pdf_timeout_s=cfg.report.pdf_timeout_s)  # fmt: skip
    return AuditOutcome(run_dir=run_dir, result=result, passed=result.passed, report=report)


def _groups(rows: Any, cfg: AuditConfig, primary: str) -> dict[str, Any] | None:
    """The ``detection.groups`` block (:mod:`auditor.analysis.detection_groups`); ``None``
    without ``[data] groups``."""
    from auditor.analysis.detection_groups import analyse_detection_groups
    from auditor.data.groups import read_groups

    table = read_groups(cfg.data)
    if table is None:
        return None
    import pyarrow.compute as pc

    prim = rows.filter(pc.equal(rows.column("method"), primary)) if rows.num_rows else rows
    ids = [str(v) for v in prim.column("id").to_pylist()] if prim.num_rows else []
    levels = {a: table.column(a, ids) for a in table.attributes}
    return analyse_detection_groups(
        prim, levels, min_group_size=cfg.report.min_group_size, confidence=cfg.audit.confidence
    )


def _attach_groups(block: dict[str, Any], rows: Any, cfg: AuditConfig, findings: Any) -> Any:
    """With ``[data] groups``: ``block["groups"]`` (:func:`_groups`) and the run's findings
    with one ``group_detection_disparity`` per flagged group, numbered after them; else
    ``findings`` unchanged."""
    from auditor.analysis.detection_groups import detection_group_findings

    groups = _groups(rows, cfg, cfg.audit.primary)
    if groups is None:
        return findings
    block["groups"] = groups
    new = detection_group_findings(groups)
    return (*findings, *(replace(f, id=f"F{len(findings) + i + 1}") for i, f in enumerate(new)))


def _gates(result: AuditResult, rules: Any, groups: Mapping[str, Any] | None) -> Any:
    """The run gates, with the detection group gates (scope ``"group"``) checked on
    ``groups``."""
    from auditor.analysis.detection_groups import evaluate_detection_group_gates
    from auditor.results import Gates

    gates = evaluate_gates(result, rules)
    extra = evaluate_detection_group_gates(groups, rules)
    if not extra:
        return gates
    return Gates.of([*(gates.results if gates is not None else ()), *extra])


def _group_columns(run_dir: Path, cfg: AuditConfig) -> None:
    """``group_<attribute>`` columns in samples.parquet (as a classifier run's)."""
    from auditor.analysis.groups.run import add_group_columns
    from auditor.data.groups import read_groups

    table = read_groups(cfg.data)
    path = run_dir / "samples.parquet"
    if table is not None and path.is_file():
        add_group_columns(path, table)


def _dataset_sha(dataset: Any, skipped: list[dict[str, Any]]) -> str:
    """The evaluated data's fingerprint: the annotations' sha256 and the skipped ids."""
    h = hashlib.sha256(dataset.annotation_sha256().encode())
    for sk in skipped:
        h.update(f"skipped\0{sk['id']}\n".encode())
    return h.hexdigest()


def _gallery(run_dir: Path, rows: Any, per_class: Mapping[str, Any], dataset: Any,
             s: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Draw the detection gallery (:mod:`auditor.report.detection_gallery`); its entries."""
    from auditor.report.detection_gallery import choose_detection_panels, draw_detection_gallery

    if rows.num_rows == 0:
        return []
    flagged = {c: bool(r.flagged) for c, r in per_class.items()}
    picks = choose_detection_panels(rows, list(per_class), flagged, s.primary,
                                    s.gallery_per_class)  # fmt: skip
    maps = read_box_maps(run_dir, [p["box_id"] for p in picks], s.primary) if picks else {}
    return draw_detection_gallery(run_dir, picks, maps, dataset, s.primary)


def read_box_maps(run_dir: Path, ids: list[str], method: str) -> dict[str, Any]:
    """Low-resolution maps ``[h, w]`` (scaled to a maximum of 1; all-zero stays zero) of the
    boxes ``ids`` (``"<image id>#gt<k>"``: ground-truth box k, ``"#fp<j>"``: false-positive
    detection j; a missed box's map is all zero). ``KeyError`` for an unknown id."""
    import numpy as np

    store = RunStore(run_dir)
    want, out = set(ids), {}
    for b in store.batch_numbers():
        with np.load(store.shards / f"cams-{b:05d}.npz", allow_pickle=False) as z:
            key = f"cam__{method}"
            if key not in z.files:
                continue
            for k, box_id in enumerate(z["ids"].tolist()):
                if box_id in want:
                    m = z[key][k].astype(np.float32)
                    peak = float(m.max()) if m.size else 0.0
                    out[box_id] = m / peak if peak > 0 else m
    missing = [i for i in ids if i not in out]
    if missing:
        raise KeyError(
            f"`ids`: not boxes of this detection run: {missing[:5]} (ids look like "
            f"'<image id>#gt0' or '<image id>#fp3')"
        )
    return out
