"""The detection audit loop: images -> rows per (image, box) (issue 26).

``auditor run`` with ``[model] task = "detection"`` comes here from
:func:`auditor.audit.runner.run_audit` (same run directory claim, lock, store, resume,
summary.json, report). For each image (batch of 1, eval mode):

1. one forward with the target layer hooked (:class:`auditor.cam.detection.DetectorCapture`),
   gradients recorded only when a gradient method is asked for;
2. greedy class-aware matching of the detections at or above ``[model] score_threshold`` to
   the ground-truth boxes at ``[audit] iou_threshold`` (:func:`auditor.metrics.detection.
   match_detections`);
3. for every ground-truth box matched to a detection, and every unmatched (false-positive)
   detection: one map per method for that detection's score; localisation metrics on the box
   (the ground-truth box, or the false positive's own box), computed by the classifier
   path's metric functions with the box as the mask;
4. interventions per ground-truth box (``[audit] interventions``, no gradient): **object
   only** (every pixel outside the box filled) and **context only** (the box filled); the box
   counts as found when a detection of its class matches it (same rule as 2). The fill is
   ``[audit] intervention_fill``: ``"mean"`` (the dataset mean colour) or ``"black"``.

Rows are written per batch of ``[audit] batch_size`` images as the classifier path's shards
(resume, atomic writes); low-resolution maps (the layer grid) go beside them.

Shards and torchrun (:mod:`auditor.audit.distributed`) split the images by batch as for a
classifier: shard ``I`` of ``N`` computes the batches ``b`` with ``b mod N == I`` and records
itself in ``shards/shard-I-of-N.json`` (with the model's record and the target layer's
explanation); ``auditor finalize`` (or torchrun's rank 0) checks the shards and finishes the
run from the union of the batches with :func:`auditor.audit.detection_finish.finish_detection`,
the same code as one process: every batch depends only on its own images, so the summary is the
single process's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F  # noqa: N812

from auditor._version import __version__
from auditor.audit.distributed import ShardSpec
from auditor.audit.modelstate import preserved_training_flags
from auditor.audit.runner import raised_by_model
from auditor.audit.store import RunLock, RunStore, atomic_write_bytes, atomic_write_json
from auditor.cam.detection import Detections, DetectorCapture, method_maps
from auditor.cam.methods import METHODS
from auditor.config import AuditConfig, AuditSettings, ModelConfig, to_jsonable
from auditor.data.detection import GroundTruth, read_coco_boxes
from auditor.errors import ConfigError, ModelLoadError, ModelRuntimeError, SampleSkipped
from auditor.metrics.detection import box_masks, match_detections

log = logging.getLogger("auditor")

__all__ = [
    "DETECTION_ARCHS",
    "detection_rows_for_image",
    "load_detector",
    "run_detection",
]

#: torchvision detection builders the audit builds by name (never with downloaded weights)
DETECTION_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)


def load_detector(cfg: ModelConfig, classes: Sequence[str], data: Any) -> Any:
    """Build the detector (``LoadedModel``): a torchvision name with ``weights=None`` and
    ``weights_backbone=None`` (nothing is downloaded), ``num_classes = len(classes) + 1``
    (label 0 = background), the dataset's mean/std as the model's own normalisation and, for
    the R-CNN/RetinaNet/FCOS families, ``min_size``/``max_size`` = the input size (no internal
    resize); or a factory. ``[model] kwargs`` override these."""
    from auditor import models

    if cfg.torchvision is None:
        return models.load_model(cfg)
    if cfg.torchvision not in DETECTION_ARCHS:
        raise ModelLoadError(
            f"[model] torchvision = {cfg.torchvision!r} is not a detector this audit builds; "
            f"known: {', '.join(DETECTION_ARCHS)} (or use a factory)"
        )
    h, w = data.input_size
    kw: dict[str, Any] = {"weights_backbone": None, "num_classes": len(classes) + 1,
                          "image_mean": list(data.mean), "image_std": list(data.std)}  # fmt: skip
    if not cfg.torchvision.startswith("ssd"):
        kw.update(min_size=min(h, w), max_size=max(h, w))
    kw.update(cfg.factory_kwargs)
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = torchvision.models.get_model(cfg.torchvision, weights=None, **kw)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"[model] torchvision: cannot build {cfg.torchvision!r} with {kw!r}: {exc}"
            ) from exc
    if cfg.weights is not None:
        models.apply_state_dict(model, models.read_state_dict(cfg.weights), cfg.weights)
        sha = models.file_sha256(cfg.weights)
    else:
        sha = models.state_dict_sha256(model)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return models.LoadedModel(model, cfg.name or cfg.torchvision, cfg.source, sha, n_params)


def _fill(image: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``image`` where ``keep`` (bool ``[H, W]``), ``fill`` (``[3, 1, 1]``) elsewhere."""
    return torch.where(keep[None], image, fill)


def _found(dets: Detections, box: Sequence[float], label: int, s: AuditSettings,
           score_threshold: float) -> bool:  # fmt: skip
    m = match_detections(
        [box], [label + 1], dets.boxes.detach().cpu().numpy(), dets.labels.cpu().numpy(),
        dets.scores.detach().cpu().numpy(), iou_threshold=s.iou_threshold,
        score_threshold=score_threshold,
    )  # fmt: skip
    return bool(m.gt_match[0] >= 0)


def _box_metrics(maps: torch.Tensor, masks: torch.Tensor, s: AuditSettings) -> dict[str, list]:
    from auditor.metrics.localisation import (
        background_focus,
        energy_in_mask,
        energy_lift,
        pointing_game,
    )

    return {
        "energy_in_mask": energy_in_mask(maps, masks).tolist(),
        "background_focus": background_focus(maps, masks).tolist(),
        "energy_lift": energy_lift(maps, masks).tolist(),
        "pointing_game": pointing_game(maps, masks, s.pointing_tolerance).tolist(),
    }


def detection_rows_for_image(
    capture: DetectorCapture,
    image: torch.Tensor,
    gt: GroundTruth,
    *,
    settings: AuditSettings,
    score_threshold: float,
    n_classes: int,
    fill: torch.Tensor,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows (one per explained box and method) and low-resolution maps of one image.

    ``image``: ``[3, H, W]`` in [0, 1] on the model's device; ``fill``: ``[3, 1, 1]``.
    """
    s = settings
    grad = any(METHODS[m].needs_gradients for m in s.methods)
    dets = capture.run(image, grad=grad)
    labels = dets.labels.detach().cpu().numpy()
    bad = sorted({int(v) for v in labels if not 1 <= v <= n_classes})
    if bad:
        raise ModelRuntimeError(
            f"model {capture.model_name!r}: detection labels {bad} are outside 1..{n_classes} "
            f"(label k + 1 is class k of the {n_classes} dataset classes; 0 is background)"
        )
    match = match_detections(
        gt.boxes, [c + 1 for c in gt.labels], dets.boxes.detach().cpu().numpy(), labels,
        dets.scores.detach().cpu().numpy(), iou_threshold=s.iou_threshold,
        score_threshold=score_threshold,
    )  # fmt: skip
    # (kind, box index, explained detection or -1, box, class)
    items: list[tuple[str, int, int, tuple[float, ...], int]] = [
        ("gt", i, int(match.gt_match[i]), tuple(b), int(gt.labels[i]))
        for i, b in enumerate(gt.boxes)
    ]
    for j in match.false_positives.tolist():
        box = tuple(float(v) for v in dets.boxes[j].detach().cpu().tolist())
        items.append(("fp", j, j, box, int(labels[j]) - 1))
    low, full, status = _explain(capture, dets, items, s.methods, image.shape[1:])
    h, w = image.shape[1:]
    masks = torch.from_numpy(box_masks([it[3] for it in items], h, w)) if items else None
    if masks is not None:  # a box covering no pixel centre: the metrics are undefined
        anyp, allp = masks.flatten(1).any(1).tolist(), masks.flatten(1).all(1).tolist()
        cover = [
            "empty_mask" if not a else "full_mask" if f else "ok"
            for a, f in zip(anyp, allp, strict=True)
        ]
        for m in s.methods:
            status[m] = [c if st == "ok" else st for st, c in zip(status[m], cover, strict=True)]
    rows: list[dict[str, Any]] = []
    interventions = _interventions(capture, image, items, s, score_threshold, fill)
    for m in s.methods:
        metrics = _box_metrics(full[m], masks, s) if masks is not None else {}
        for r, (kind, i, j, box, c) in enumerate(items):
            defined = status[m][r] == "ok"
            row = {
                "method": m, "kind": kind, "box": i, "label": c,
                "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                "area_fraction": (box[2] - box[0]) * (box[3] - box[1]) / float(h * w),
                "detected": (j >= 0) if kind == "gt" else None,
                "score": float(dets.scores[j].detach()) if j >= 0 else None,
                "match_iou": float(match.gt_iou[i]) if kind == "gt" and j >= 0 else None,
                "status": status[m][r],
                **{k: (v[r] if defined else float("nan")) for k, v in metrics.items()},
                **interventions[r],
            }  # fmt: skip
            rows.append(row)
    return rows, {m: low[m] for m in s.methods}


def _explain(
    capture: DetectorCapture,
    dets: Detections,
    items: Sequence[tuple[str, int, int, tuple[float, ...], int]],
    methods: Sequence[str],
    size: Sequence[int],
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], dict[str, list[str]]]:
    """Maps of every item's detection: low-resolution (layer grid), at the input size, and a
    status per method and item: ``missed`` (no detection to explain), ``zero_gradient`` (the
    score does not reach the layer), ``nonfinite``, ``zero_map`` (0 everywhere after ReLU:
    metrics undefined) or ``ok``."""
    acts = capture.activations()
    grid = capture.grid
    if grid is None:
        raise RuntimeError("no layer grid after the forward")
    h, w = int(size[0]), int(size[1])
    grad_methods = [m for m in methods if METHODS[m].needs_gradients]
    plain = [m for m in methods if m not in grad_methods]
    shared = method_maps(plain, acts, None, grid.layer) if plain else {}
    low = {m: np.zeros((len(items), *grid.size), np.float32) for m in methods}
    full = {m: torch.zeros(len(items), h, w) for m in methods}
    status: dict[str, list[str]] = {m: [] for m in methods}
    for r, (_kind, _i, j, _box, _c) in enumerate(items):
        if j < 0:
            for m in methods:
                status[m].append("missed")
            continue
        maps, zero_grad = dict(shared), False
        if grad_methods:
            grads = capture.gradients(dets.scores[j])
            zero_grad = not bool(grads.abs().sum() > 0)
            maps.update(method_maps(grad_methods, acts, grads, grid.layer))
        for m, cam in maps.items():
            if not bool(torch.isfinite(cam).all()):
                status[m].append("nonfinite")
                continue
            if m in grad_methods and zero_grad:
                status[m].append("zero_gradient")
                continue
            status[m].append("ok" if bool(cam.max() > 0) else "zero_map")
            low[m][r] = cam.cpu().numpy()
            full[m][r] = F.interpolate(cam[None, None].cpu(), size=(h, w), mode="bilinear",
                                       align_corners=False)[0, 0].clamp_min(0)  # fmt: skip
    capture.tensors = []  # free the graph
    return low, full, status


def _interventions(
    capture: DetectorCapture,
    image: torch.Tensor,
    items: Sequence[tuple[str, int, int, tuple[float, ...], int]],
    s: AuditSettings,
    score_threshold: float,
    fill: torch.Tensor,
) -> list[dict[str, Any]]:
    """Per item: ``object_only_detected`` and ``context_only_hit`` (ground-truth rows only)."""
    out: list[dict[str, Any]] = []
    h, w = image.shape[1:]
    for kind, _i, _j, box, c in items:
        if kind != "gt" or not s.interventions:
            out.append({"object_only_detected": None, "context_only_hit": None})
            continue
        inside = torch.from_numpy(box_masks([box], h, w)[0]).to(image.device)
        with torch.no_grad():
            obj = capture.run(_fill(image, inside, fill), grad=False)
            ctx = capture.run(_fill(image, ~inside, fill), grad=False)
        capture.tensors = []
        out.append({
            "object_only_detected": _found(obj, box, c, s, score_threshold),
            "context_only_hit": _found(ctx, box, c, s, score_threshold),
        })  # fmt: skip
    return out


def _fingerprints(cfg: AuditConfig, model_sha: str, annotation_sha: str, layer: str | None
                  ) -> dict[str, str]:  # fmt: skip
    settings = {k: v for k, v in to_jsonable(cfg.audit).items() if k != "aggregation"}
    detection = {"task": "detection", "score_threshold": cfg.model.score_threshold,
                 "target_layer": layer}  # fmt: skip
    return {
        "config_sha256": cfg.sha256,
        "model_sha256": model_sha,
        "annotation_sha256": annotation_sha,
        "settings": hashlib.sha256(repr((settings, detection)).encode()).hexdigest(),
        "tool_version": __version__,
    }


def _image(sample: Any, data: Any, dev: torch.device) -> torch.Tensor:
    """The normalised sample back in [0, 1] (the detector normalises itself)."""
    mean = torch.tensor(data.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(data.std, dtype=torch.float32)[:, None, None]
    return (sample.image.float() * std + mean).clamp(0, 1).to(dev)


def _batch(
    capture: DetectorCapture,
    dataset: Any,
    indices: Sequence[int],
    boxes: Mapping[str, GroundTruth],
    cfg: AuditConfig,
    dev: torch.device,
    fill: torch.Tensor,
    failures: list[str],
) -> tuple[pa.Table, dict[str, np.ndarray], list[str], list[int], list[dict[str, Any]]]:
    """Rows, maps, map ids/indices and skips of one batch of images. An image on which the
    model itself raises is skipped with the error as its reason (``failures`` counts them
    over the run; more than ``[audit] max_failed_batches``: :class:`ModelRuntimeError`)."""
    rows: list[dict[str, Any]] = []
    maps: dict[str, list[np.ndarray]] = {m: [] for m in cfg.audit.methods}
    ids: list[str] = []
    idx: list[int] = []
    skipped: list[dict[str, Any]] = []
    classes = list(dataset.classes)
    for i in indices:
        try:
            sample = dataset.load(i)
        except SampleSkipped as exc:
            skipped.append({"index": i, "id": dataset.sample_id(i), "reason": str(exc)})
            continue
        gt = boxes.get(sample.id)
        if gt is None or not gt.boxes:
            skipped.append({"index": i, "id": sample.id, "reason": "no usable box"})
            continue
        try:
            r, low = detection_rows_for_image(
                capture, _image(sample, dataset.config, dev), gt, settings=cfg.audit,
                score_threshold=float(cfg.model.score_threshold or 0.0),
                n_classes=len(classes), fill=fill,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - only the model's own errors are skipped
            if isinstance(exc, ConfigError | ModelRuntimeError) or not raised_by_model(
                exc, capture.model
            ):
                raise
            reason = f"the model raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            failures.append(reason)
            if len(failures) > cfg.audit.max_failed_batches:
                raise ModelRuntimeError(
                    f"the model {capture.model_name!r} raised on {len(failures)} images (more "
                    f"than [audit] max_failed_batches = {cfg.audit.max_failed_batches}); "
                    f"first: {failures[0]}"
                ) from exc
            skipped.append({"index": i, "id": sample.id, "reason": reason})
            capture.tensors = []
            continue
        for row in r:
            row.update(id=sample.id, index=i, label_name=classes[row["label"]],
                       has_mask=True)  # fmt: skip
        rows.extend(r)
        n_items = len(r) // len(cfg.audit.methods)
        for m in cfg.audit.methods:
            maps[m].append(low[m])
        ids += [f"{sample.id}#{row['kind']}{row['box']}" for row in r[:n_items]]
        idx += [i] * n_items
    cams = {m: np.concatenate(v) if v else np.zeros((0, 1, 1), np.float32)
            for m, v in maps.items()}  # fmt: skip
    return pa.Table.from_pylist(rows) if rows else pa.table({}), cams, ids, idx, skipped


def run_detection(
    cfg: AuditConfig,
    dataset: Any,
    run_dir: Path,
    *,
    lock: RunLock,
    trust_model_code: bool | None,
    resume: bool,
    pdf: bool,
    progress: bool | None,
    render: bool,
    command: str | None,
    spec: ShardSpec | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Audit the detector of ``cfg`` on ``dataset`` into ``run_dir`` (lock already held).

    ``spec``: the shard of this process (``--shard I/N`` or a torchrun rank; module
    docstring); a ``"shard"`` job and torchrun ranks other than 0 return after writing their
    batches (``result`` None, ``passed`` True)."""
    from auditor.audit.detection_finish import finish_detection
    from auditor.audit.runner import AuditOutcome, _plan_batches, _setup_device, _start_manifest

    spec = spec or ShardSpec()

    if cfg.audit.intervention_fill not in ("mean", "black"):
        raise ConfigError(
            f"[audit] intervention_fill = {cfg.audit.intervention_fill!r} is not supported for "
            f"detection (use 'mean' or 'black')"
        )
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    classes = tuple(dataset.classes)
    boxes = read_coco_boxes(cfg.data.annotations, classes, cfg.data.input_size)
    loaded = load_detector(replace(cfg.model, trust_model_code=bool(
        trust_model_code or cfg.model.trust_model_code)), classes, cfg.data)  # fmt: skip
    dev, resume = _setup_device(cfg.audit, spec, resume)
    model = loaded.module
    s = cfg.audit
    fill = (torch.tensor(cfg.data.mean, dtype=torch.float32) if s.intervention_fill == "mean"
            else torch.zeros(3))[:, None, None].to(dev)  # fmt: skip
    store = RunStore(run_dir)
    n = len(dataset) if s.limit is None else min(s.limit, len(dataset))
    chunks = [list(range(k, min(n, k + s.batch_size))) for k in range(0, n, s.batch_size)]
    orig = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(dev)
    try:
        with preserved_training_flags(model, eval=True):
            capture = DetectorCapture(model, _layer_name(cfg.model), loaded.name)
            fp = _fingerprints(cfg, loaded.sha256, dataset.annotation_sha256(), capture.layer)
            model_info = {
                "name": loaded.name, "sha256": loaded.sha256, "source": loaded.source,
                "parameters": loaded.parameters, "target_layer": capture.layer,
            }  # fmt: skip
            provenance = {"fingerprints": fp, "model": model_info,
                          "started": started.isoformat(timespec="seconds")}  # fmt: skip
            todo, _ = _plan_batches(store, spec, fp, provenance, len(chunks), resume)
            manifest = _start_manifest(store, spec, s, n, len(chunks), fp, provenance,
                                       model_info, cfg, overrides, started)  # fmt: skip
            if cfg.source is not None and spec.index == 0:
                atomic_write_bytes(run_dir / "config.toml", Path(cfg.source).read_bytes())
            failures: list[str] = []
            t_loop = time.perf_counter()
            for b in todo:
                rows, cams, ids, idx, skipped = _batch(
                    capture, dataset, chunks[b], boxes, cfg, dev, fill, failures
                )
                store.write_batch(b, rows, cams, ids, idx, skipped)
                log.info("detection batch %d/%d written", b + 1, len(chunks))
            loop_s = time.perf_counter() - t_loop
            grid = _probe_grid(capture, dataset, chunks, dev)
    finally:
        model.to(orig)
    model_info["target_layer_explained"] = grid
    total_s = _complete_shard(store, spec, manifest, model_info, loop_s, len(todo))
    if total_s is None:  # a shard job, or a torchrun rank other than 0: done
        return AuditOutcome(run_dir=run_dir, result=None, passed=True)
    return finish_detection(
        run_dir, store, cfg=cfg, dataset=dataset, classes=classes, model_info=model_info,
        started=started, t0=t0, loop_s=total_s, pdf=pdf, render=render, command=command,
    )  # fmt: skip


def _complete_shard(
    store: RunStore,
    spec: ShardSpec,
    manifest: dict[str, Any],
    model_info: Mapping[str, Any],
    loop_s: float,
    n_done: int,
) -> float | None:
    """Mark this process's shard record complete (with the model record and the layer's
    explanation, which ``auditor finalize`` reads). Returns the loop time to report, or
    ``None`` when this process does not finish the run (a ``--shard`` job; a torchrun rank
    other than 0, after the barrier). Rank 0 checks that every rank's shard is complete."""
    from auditor.audit.distributed import barrier, check_complete, manifest_path

    manifest.update(status="complete", model=dict(model_info), loop_s=round(loop_s, 3),
                    finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    atomic_write_json(manifest_path(store.shards, spec), manifest)
    if spec.mode == "shard":
        log.info("shard %s complete: %d batch(es) written", spec.label, n_done)
        return None
    if spec.mode != "torchrun":
        return loop_s
    barrier()  # every rank's batches are on disk
    if spec.index != 0:
        return None
    manifests, _ = check_complete(store.shards, completed_batches=store.completed_batches())
    store.write_provenance(manifests[0]["provenance"])
    return max(float(m.get("loop_s") or 0.0) for m in manifests)


def _layer_name(cfg: ModelConfig) -> str | None:
    layer = cfg.target_layer
    if isinstance(layer, tuple):
        if len(layer) != 1:
            raise ConfigError(
                f"[model] target_layer: a detection audit explains one layer, got {list(layer)}"
            )
        return layer[0]
    return layer


def _probe_grid(capture: DetectorCapture, dataset: Any, chunks: Sequence[Sequence[int]],
                dev: torch.device) -> str:  # fmt: skip
    """The layer explanation (from the last forward, or one probe forward on resume)."""
    if capture.grid is None:
        for chunk in chunks:
            for i in chunk:
                try:
                    sample = dataset.load(i)
                except SampleSkipped:
                    continue
                with torch.no_grad():
                    capture.run(_image(sample, dataset.config, dev), grad=False)
                capture.tensors = []
                break
            if capture.grid is not None:
                break
    return capture.grid.explain() if capture.grid is not None else "no image was evaluated"
