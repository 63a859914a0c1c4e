"""The audit loop: batches → CAMs → metrics → shards, then analysis, gallery and report.

Per batch (nothing is held for the whole dataset):

1. decode (``auditor.data.iter_batches``, optionally in worker processes);
2. ONE forward + ONE partial backward for every gradient method (``auditor.cam.CamEngine``),
   whose logits also give the prediction and confidence;
3. localisation metrics on the batch (``auditor.metrics.localisation_metrics``);
4. interventions (only-foreground, only-background, mixed-random backgrounds: three plain
   inference forwards) and, on a seeded subset, faithfulness (deletion/insertion, average drop);
5. one shard written atomically (rows + low-resolution CAMs + skips).

A run killed at any point keeps every completed batch; ``resume=True`` continues it and, since
every random choice is seeded per batch, ends with exactly the results of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from auditor._version import __version__
from auditor.analysis import FindingRules, analyse, evaluate_gates
from auditor.config import AuditConfig, AuditSettings, GateRule, to_jsonable, with_overrides
from auditor.distributed import (
    ShardSpec,
    barrier,
    check_compatible,
    check_complete,
    init_process_group,
    manifest_path,
    owned_todo,
    restarted_by_torchrun,
    torchrun_env,
)
from auditor.errors import AuditorInputError, ConfigError
from auditor.export import write_findings_csv, write_per_class_csv
from auditor.store import (
    MAIN_LOCK,
    RunLock,
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    claim_run_dir,
    sweep_temp_files,
)

log = logging.getLogger("auditor")

SCHEMA_VERSION = 1
INTERVENTION_COLUMNS = tuple(
    f"{k}_{v}" for k in ("only_fg", "only_bg", "mixed_rand") for v in ("correct", "confidence")
)
FAITHFULNESS_COLUMNS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")


@dataclass
class AuditOutcome:
    """What :func:`run_audit` returns: the run directory, the summary and the gate verdict."""

    run_dir: Path
    summary: dict[str, Any]
    passed: bool
    report: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def library_versions() -> dict[str, str]:
    """Versions of Python and every library the result depends on (provenance)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "cam-auditor",
        "torch",
        "torchvision",
        "numpy",
        "pillow",
        "pyarrow",
        "scipy",
        "scikit-learn",
        "matplotlib",
        "jinja2",
        "weasyprint",
        "pycocotools",
        "safetensors",
        "defusedxml",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(
        total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, smoothing=0.1
    )


def _seeded_subset(n: int, k: int, seed: int) -> set[int]:
    if k <= 0 or n == 0:
        return set()
    g = np.random.default_rng(seed + 7919)
    return set(g.permutation(n)[: min(k, n)].tolist())


def _reshape_fn(value: Any) -> Any:
    """A config/API reshape (``None``/"auto", "vit", "swin", a table, a callable) for the
    engine; ``None`` means "auto" here: inferred from the layer's output."""
    from auditor.cam.layers import parse_reshape

    if value is None:
        return "auto"
    return parse_reshape(value, "[model] reshape")


class _BatchAuditor:
    """Turns one :class:`auditor.data.Batch` into a row table and low-resolution CAMs."""

    def __init__(
        self,
        model: torch.nn.Module,
        engine: Any,
        settings: AuditSettings,
        classes: Sequence[str],
        device: torch.device,
        faith_subset: set[int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.model = model
        self.engine = engine
        self.s = settings
        self.classes = list(classes)
        self.device = device
        self.faith_subset = faith_subset
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)

    def _forward_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of an inference forward (on the engine's validated copy)."""
        return torch.softmax(self.engine.forward_logits(x, autocast=False), dim=1)

    def process(self, batch: Any, batch_no: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
        from auditor.metrics import localisation_metrics

        s = self.s
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        masks = batch.masks.to(self.device, non_blocking=True)
        has_mask = batch.has_mask.to(self.device, non_blocking=True)
        n_cls = len(self.classes)
        targets: Any = labels if s.target == "label" else "predicted"
        with self.engine:
            cb = self.engine.run(images, targets)
        logits = cb.logits.float()
        if logits.shape[1] != n_cls:
            raise AuditorInputError(
                f"the model returns {logits.shape[1]} logits but the dataset has {n_cls} "
                f"classes ({', '.join(self.classes[:5])}…): set [data] classes or "
                f"[model] num_classes to match"
            )
        probs = torch.softmax(logits, dim=1)
        tgt = cb.targets.to(self.device)
        pred = probs.argmax(1)
        conf = probs.gather(1, tgt.view(-1, 1)).squeeze(1)
        size = (images.shape[-2], images.shape[-1])
        up = cb.upsampled(size)

        cols: dict[str, Any] = {}
        b = len(batch)
        base = {
            "index": np.asarray(batch.indices, np.int64),
            "id": list(batch.ids),
            "label": batch.labels.numpy().astype(np.int64),
            "label_name": [self.classes[i] for i in batch.labels.tolist()],
            "target": tgt.cpu().numpy().astype(np.int64),
            "pred": pred.cpu().numpy().astype(np.int64),
            "correct": (pred == labels).cpu().numpy(),
            "confidence": conf.cpu().numpy().astype(np.float64),
            "pred_confidence": probs.max(1).values.cpu().numpy().astype(np.float64),
            "has_mask": batch.has_mask.numpy(),
            "mask_area": batch.masks.flatten(1).float().mean(1).numpy().astype(np.float64),
            "image_sha256": list(batch.image_sha256),
            "mask_sha256": [m or "" for m in batch.mask_sha256],
            "notes": ["; ".join(n) for n in batch.notes],
        }
        base["mask_area"] = np.where(base["has_mask"], base["mask_area"], np.nan)

        # interventions: three inference forwards on edited images (Xiao et al. 2021)
        iv: dict[str, np.ndarray] = {}
        if s.interventions and bool(has_mask.any()):
            from auditor.metrics.interventions import mixed_random, only_background, only_foreground

            fill_value = (-self.mean / self.std) if s.intervention_fill == "black" else None
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + batch_no)
            edited = {
                "only_fg": only_foreground(
                    images, masks, fill=s.intervention_fill, fill_value=fill_value
                ),
                "only_bg": only_background(
                    images, masks, fill=s.intervention_fill, fill_value=fill_value
                ),
            }
            mixed, perm = mixed_random(images, masks, g)
            edited["mixed_rand"] = mixed
            hm = batch.has_mask.numpy()
            for key, x in edited.items():
                p = self._forward_probs(x)
                correct = (p.argmax(1) == labels).cpu().numpy().astype(float)
                cconf = p.gather(1, tgt.view(-1, 1)).squeeze(1).cpu().numpy().astype(np.float64)
                valid = hm.copy()
                if key == "mixed_rand":
                    pv = perm.cpu().numpy()
                    valid &= pv >= 0
                    valid &= hm[np.clip(pv, 0, None)]  # the donor background needs a mask too
                iv[f"{key}_correct"] = np.where(valid, correct, np.nan)
                iv[f"{key}_confidence"] = np.where(valid, cconf, np.nan)

        # faithfulness on the seeded subset (Petsiuk et al. 2018; Chattopadhay et al. 2018)
        faith: dict[str, dict[str, np.ndarray]] = {}
        sel = [j for j, i in enumerate(batch.indices) if i in self.faith_subset]
        if sel:
            from auditor.metrics.faithfulness import faithfulness_metrics

            res = faithfulness_metrics(
                self.model,
                images,
                up,
                tgt,
                steps=s.faithfulness_steps,
                subset=sel,
                forward_batch_size=max(64, s.score_batch_size or 0),
            )
            faith = {
                m: {k: v.cpu().numpy().astype(np.float64) for k, v in d.items()}
                for m, d in res.items()
            }

        tables = []
        nan_col = np.full(b, np.nan)
        low_res: dict[str, np.ndarray] = {}
        for method in s.methods:
            metrics, status = localisation_metrics(
                up[method],
                masks,
                has_mask=has_mask,
                pointing_tolerance=s.pointing_tolerance,
                iou_threshold=s.iou_threshold,
                border_width=s.border_width,
            )
            cols = dict(base)
            cols["method"] = [method] * b
            cols["status"] = list(status)
            cols["cam_status"] = list(cb.status[method])
            for name, values in metrics.items():
                cols[name] = values.double().cpu().numpy()
            # a fixed schema in every shard: columns of analyses that did not apply are NaN
            if s.interventions:
                for key in INTERVENTION_COLUMNS:
                    cols[key] = iv.get(key, nan_col)
            if s.faithfulness_samples > 0:
                cols["faithfulness_subset"] = np.isin(
                    np.asarray(batch.indices), np.asarray(sorted(self.faith_subset), dtype=np.int64)
                )
                for key in FAITHFULNESS_COLUMNS:
                    cols[key] = faith.get(method, {}).get(key, nan_col)
            tables.append(pa.table(cols))
            cam = cb.cams[method].float()
            peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
            low_res[method] = (cam / peak).cpu().numpy()
        table = pa.concat_tables(tables) if tables else pa.table({})
        return table, low_res


def _empty_skip_rows(batch: Any) -> list[dict[str, Any]]:
    return [{"index": i, "id": sid, "reason": reason} for i, sid, reason in batch.skipped]


def run_audit(
    config: AuditConfig,
    out: str | Path,
    *,
    limit: int | None = None,
    device: str | None = None,
    resume: bool = False,
    pdf: bool | None = None,
    progress: bool | None = None,
    trust_model_code: bool | None = None,
    render: bool = True,
    command: str | None = None,
    shard: ShardSpec | None = None,
) -> AuditOutcome:
    """Audit the model and data described by ``config`` into the run directory ``out``.

    Order of checks (each failure is an :class:`auditor.errors.AuditorInputError`, CLI exit
    2): the overrides (``device``, ``limit``); the run directory (claimed and locked before
    anything heavy runs); the dataset's class list against the gates; only then the model.

    ``shard``: compute only shard I of N (``--shard I/N``, :mod:`auditor.distributed`) under
    the writer lock ``locks/shard-I-of-N.lock``; under torchrun the rank is the shard.
    ``None``: torchrun's rank when started by torchrun, else the whole run (main lock).
    """
    cfg = with_overrides(config, device=device, limit=limit)
    run_dir = Path(out)
    spec = shard or torchrun_env() or ShardSpec()
    claim_run_dir(run_dir)
    lock = (
        RunLock(run_dir, command=command)
        if spec.mode == "single"
        else RunLock.for_shard(run_dir, spec.index, spec.count, command=command)
    )
    with lock:
        if lock.name == MAIN_LOCK:
            sweep_temp_files(run_dir)
        return _run_locked(
            cfg,
            run_dir,
            lock,
            trust_model_code,
            resume,
            pdf,
            progress,
            render,
            command,
            spec,
            {"device": device, "limit": limit},
        )


def _run_locked(
    cfg: AuditConfig,
    out: Path,
    lock: RunLock,
    trust_model_code: bool | None,
    resume: bool,
    pdf: bool | None,
    progress: bool | None,
    render: bool,
    command: str | None,
    spec: ShardSpec,
    overrides: dict[str, Any],
) -> AuditOutcome:
    from auditor.data import open_dataset
    from auditor.models import load_model

    dataset = open_dataset(cfg.data)
    loaded = load_model(
        cfg.model,
        num_classes=len(dataset.classes),
        trust_model_code=trust_model_code,
        in_channels=getattr(cfg.data, "channels", None),
    )
    return audit(
        loaded.module,
        dataset,
        out,
        settings=cfg.audit,
        gates=cfg.gates,
        layer=cfg.model.target_layer,
        reshape=cfg.model.reshape,
        model_info={
            "name": loaded.name,
            "sha256": loaded.sha256,
            "source": loaded.source,
            "parameters": loaded.parameters,
        },
        config=cfg,
        resume=resume,
        pdf=cfg.report.pdf if pdf is None else pdf,
        progress=progress,
        render=render,
        command=command,
        lock=lock,
        shard=spec,
        overrides=overrides,
    )


def audit(
    model: torch.nn.Module,
    dataset: Any,
    out: str | Path,
    *,
    settings: AuditSettings | None = None,
    gates: Sequence[GateRule] = (),
    layer: str | Sequence[str] | None = None,
    reshape: Any = None,
    model_info: dict[str, Any] | None = None,
    config: AuditConfig | None = None,
    resume: bool = False,
    pdf: bool = True,
    progress: bool | None = None,
    render: bool = True,
    command: str | None = None,
    lock: RunLock | None = None,
    shard: ShardSpec | None = None,
    overrides: dict[str, Any] | None = None,
) -> AuditOutcome:
    """Audit an in-memory ``model`` on an :class:`auditor.data.EvalDataset` (Python API path).

    ``layer=None`` auto-detects the target layer (:func:`auditor.cam.layers.detect_target_layer`);
    ``reshape`` is ``None``/``"auto"`` (inferred from the layer), ``"vit"``, ``"swin"``, a
    table ``{"kind": "tokens", "prefix_tokens": 1, "grid": [14, 14]}`` or a callable such as
    :func:`auditor.cam.vit_reshape` (``vit_reshape(num_prefix_tokens=0)`` included).

    The model leaves as it came: the engine removes its hooks and restores train/eval flags.
    The run directory is claimed (a non-empty folder of other files is refused) and locked
    for the whole call (:class:`auditor.store.RunLock`; a second audit into it raises
    :class:`auditor.errors.RunLockedError`); pass ``lock`` to use a lock the caller already
    holds (a shard job's writer lock, or the main lock taken before loading the model).
    ``shard``: see :func:`run_audit`; a ``"shard"`` job returns after writing its batches
    (``passed`` True, empty summary: ``auditor finalize`` makes the summary), as does a
    torchrun rank other than 0.
    """
    run_dir = Path(out)
    spec = shard or torchrun_env() or ShardSpec()
    own = lock is None
    if lock is None:
        claim_run_dir(run_dir)
        lock = (
            RunLock(run_dir, command=command)
            if spec.mode == "single"
            else RunLock.for_shard(run_dir, spec.index, spec.count, command=command)
        )
    lock.acquire()
    try:
        if lock.name == MAIN_LOCK:
            sweep_temp_files(run_dir)
        return _audit_locked(
            model,
            dataset,
            run_dir,
            settings=settings,
            gates=gates,
            layer=layer,
            reshape=reshape,
            model_info=model_info,
            config=config,
            resume=resume,
            pdf=pdf,
            progress=progress,
            render=render,
            command=command,
            spec=spec,
            overrides=overrides,
        )
    finally:
        if own:
            lock.release()


def _audit_locked(
    model: torch.nn.Module,
    dataset: Any,
    out: Path,
    *,
    settings: AuditSettings | None,
    gates: Sequence[GateRule],
    layer: str | Sequence[str] | None,
    reshape: Any,
    model_info: dict[str, Any] | None,
    config: AuditConfig | None,
    resume: bool,
    pdf: bool,
    progress: bool | None,
    render: bool,
    command: str | None,
    spec: ShardSpec,
    overrides: dict[str, Any] | None,
) -> AuditOutcome:
    from auditor.cam import CamEngine
    from auditor.models import state_dict_sha256

    s = settings or AuditSettings()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    run_dir = Path(out)
    store = RunStore(run_dir)
    dev = torch.device(s.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AuditorInputError(f"--device {s.device}: CUDA is not available on this machine")
    if spec.mode == "torchrun":
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", spec.local_rank)  # one GPU per local rank
        init_process_group(spec, dev.type)
        resume = resume or restarted_by_torchrun()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.manual_seed(s.seed)
    classes = list(dataset.classes)
    model_info = dict(model_info or {})
    model_info.setdefault("name", type(model).__name__)
    model_info.setdefault("source", f"python:{type(model).__module__}.{type(model).__qualname__}")
    if "sha256" not in model_info:
        model_info["sha256"] = state_dict_sha256(model)
    model_info.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    model_info["num_classes"] = len(classes)

    flags = {m: m.training for m in model.modules()}
    orig_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(dev)
    model.eval()  # every forward of the audit (interventions included) sees the eval model
    try:
        channels = int(getattr(dataset.config, "channels", 3) or 3)
        gen = torch.Generator().manual_seed(s.seed)
        example = torch.randn(2, channels, *dataset.config.input_size, generator=gen).to(dev)
        try:
            engine = CamEngine(
                model,
                layer,
                s.methods,
                score_batch_size=s.score_batch_size,
                inference_copy=s.inference_copy,
                capture_copy=s.inference_copy,
                autocast={"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
                    s.autocast or ""
                ),
                reshape=_reshape_fn(reshape),
                example=example,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"[model]/[audit]: {exc}") from exc
        model_info["target_layer"] = ",".join(engine.layer_names)
        _describe_layers(model_info, engine)

        n_total = len(dataset)
        n = n_total if s.limit is None else min(s.limit, n_total)
        indices = list(range(n))
        chunks = [indices[k : k + s.batch_size] for k in range(0, n, s.batch_size)]
        fingerprints = {
            "config_sha256": config.sha256 if config else "python-api",
            "model_sha256": model_info["sha256"],
            "annotation_sha256": dataset.annotation_sha256(),
            "settings": hashlib.sha256(repr(to_jsonable(s)).encode()).hexdigest(),
            "tool_version": __version__,
        }
        provenance = {
            "fingerprints": fingerprints,
            "versions": library_versions(),
            "model": model_info,
            "started": started.isoformat(timespec="seconds"),
        }
        if spec.mode == "single":
            done = store.prepare(fingerprints, resume=resume)
            store.write_provenance(provenance)
            # the first missing batch and everything after it run again
            first_missing = next((b for b in range(len(chunks)) if b not in done), len(chunks))
            todo_batches = list(range(first_missing, len(chunks)))
        else:
            store.shards.mkdir(parents=True, exist_ok=True)
            check_compatible(store.shards, spec, fingerprints, resume=resume)
            done = store.completed_batches()
            todo_batches = owned_todo(spec, len(chunks), done)
            first_missing = len(spec.batches(len(chunks))) - len(todo_batches)
        manifest = {
            "shard": spec.label,
            "mode": spec.mode,
            "status": "running",
            "fingerprints": fingerprints,
            "n_samples": n,
            "n_batches": len(chunks),
            "batch_size": s.batch_size,
            "batches": spec.batches(len(chunks)),
            "config_path": str(Path(config.source).resolve())
            if config is not None and config.source is not None
            else None,
            "overrides": dict(overrides or {}),
            "model": model_info,
            "provenance": provenance,
            "started": started.isoformat(timespec="seconds"),
        }
        atomic_write_json(manifest_path(store.shards, spec), manifest)
        if config is not None and config.source is not None and spec.index == 0:
            atomic_write_bytes(run_dir / "config.toml", Path(config.source).read_bytes())
        todo = [chunks[b] for b in todo_batches]
        log.info(
            "model %s (sha256 %s…), target layer %s, methods %s, device %s",
            model_info["name"],
            model_info["sha256"][:12],
            model_info["target_layer"],
            ",".join(s.methods),
            dev,
        )
        log.info(
            "%d of %d samples in %d batches of %d; %d batch(es) already done%s",
            n,
            n_total,
            len(chunks),
            s.batch_size,
            first_missing,
            " (resumed)" if first_missing else "",
        )
        worker = _BatchAuditor(
            model,
            engine,
            s,
            classes,
            dev,
            _seeded_subset(n, s.faithfulness_samples, s.seed),
            dataset.config.mean,
            dataset.config.std,
        )
        # the sanity check runs once, in shard 0 (a resumed or finalising run reads sanity.json)
        sanity = (
            _sanity(run_dir, model, dataset, s, engine.layer_names, dev, n, reshape=engine.reshape)
            if spec.index == 0
            else None
        )
        from auditor.data import iter_batches

        t_loop = time.perf_counter()
        bar = _progress(sum(len(c) for c in todo), progress, "auditing")
        try:
            flat = [i for c in todo for i in c]
            # only the globally last chunk can be short, so re-chunking the concatenation of
            # this shard's chunks gives back exactly those chunks
            for batch_no, batch in zip(
                todo_batches,
                iter_batches(
                    dataset,
                    flat,
                    s.batch_size,
                    num_workers=s.num_workers,
                    pin_memory=dev.type == "cuda",
                ),
                strict=True,
            ):
                if len(batch):
                    rows, cams = worker.process(batch, batch_no)
                else:
                    rows, cams = pa.table({}), {}
                store.write_batch(
                    batch_no,
                    rows,
                    cams,
                    list(batch.ids),
                    list(batch.indices),
                    _empty_skip_rows(batch),
                )
                bar.update(len(batch) + len(batch.skipped))
        finally:
            bar.close()
        loop_s = time.perf_counter() - t_loop
        if engine.replica_status:
            log.info(
                "Score-CAM: %d masked forwards; inference copy %s",
                engine.masked_forwards,
                engine.replica_status,
            )
    finally:
        model.to(orig_device)
        for module, flag in flags.items():
            module.training = flag
    manifest.update(
        status="complete",
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        loop_s=round(loop_s, 3),
    )
    atomic_write_json(manifest_path(store.shards, spec), manifest)

    if spec.mode == "shard":
        log.info("shard %s complete: %d batch(es) written", spec.label, len(todo_batches))
        return AuditOutcome(run_dir=run_dir, summary={}, passed=True)
    if spec.mode == "torchrun":
        barrier()  # every rank's batches are on disk
        if spec.index != 0:
            return AuditOutcome(run_dir=run_dir, summary={}, passed=True)
        # rank 0 finalises under its writer lock: the other ranks of the group only wait
        manifests, _ = check_complete(store.shards, completed_batches=store.completed_batches())
        store.write_provenance(manifests[0]["provenance"])
        loop_s = max(float(m.get("loop_s") or 0.0) for m in manifests)
        sanity = _read_sanity(run_dir)

    return finalize(
        run_dir,
        store,
        dataset=dataset,
        classes=classes,
        settings=s,
        gates=gates,
        model_info=model_info,
        config=config,
        sanity=sanity,
        started=started,
        t0=t0,
        loop_s=loop_s,
        pdf=pdf,
        render=render,
        command=command,
    )


def _describe_layers(model_info: dict[str, Any], engine: Any) -> None:
    """Additive summary fields: which layer, which reshape, and why."""
    from auditor.cam.layers import describe_reshape

    choices = list(engine.layer_choices)
    model_info["reshape"] = describe_reshape(engine.reshape)
    if choices:
        model_info["target_layer_reason"] = "; ".join(
            (f"{c.name}: " if len(choices) > 1 else "") + c.reason for c in choices
        )
        model_info["target_layer_shape"] = [list(c.shape) for c in choices if c.shape] or None
        model_info["target_layer_family"] = choices[0].family
    else:
        model_info["target_layer_reason"] = "set by the user"


def _read_sanity(run_dir: Path) -> dict[str, Any] | None:
    import json

    path = run_dir / "sanity.json"
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def finalize_run(
    run_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    pdf: bool | None = None,
    render: bool = True,
    command: str | None = None,
) -> AuditOutcome:
    """``auditor finalize RUN_DIR``: combine the shards of a run directory into its results.

    Takes the run directory's main lock (refused while a shard writer is alive, naming it),
    checks that every shard ``I/N`` is present and complete and that all were made with the
    same config, model, annotations, settings and tool version (naming what is missing or
    differs), then writes samples.parquet, summary.json, gallery, JUnit and the reports as a
    single-process run would. The config is read from where the shards were started
    (recorded in their shard records) unless ``config_path`` is given; its fingerprint must
    match. No model is loaded.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise AuditorInputError(f"RUN_DIR {root}: no such directory")
    with RunLock(root, command=command):
        sweep_temp_files(root)
        return _finalize_locked(root, config_path, pdf, render, command)


def _finalize_locked(
    root: Path,
    config_path: str | Path | None,
    pdf: bool | None,
    render: bool,
    command: str | None,
) -> AuditOutcome:
    from auditor.config import load_config
    from auditor.data import open_dataset

    t0 = time.perf_counter()
    store = RunStore(root)
    manifests, _ = check_complete(store.shards, completed_batches=store.completed_batches())
    first = manifests[0]
    src = Path(config_path) if config_path is not None else first.get("config_path")
    if not src:
        raise AuditorInputError(
            f"RUN_DIR {root}: the shards were made through the Python API (no config file); "
            f"pass --config CONFIG.toml"
        )
    if not Path(src).is_file():
        raise AuditorInputError(
            f"config {src} (recorded by the shards) is not there any more: pass --config"
        )
    cfg = load_config(Path(src))
    ov = first.get("overrides") or {}
    cfg = with_overrides(cfg, device=ov.get("device"), limit=ov.get("limit"))
    if cfg.sha256 != first["fingerprints"].get("config_sha256"):
        raise AuditorInputError(
            f"config {src} differs from the one the shards were made with "
            f"(sha256 {cfg.sha256[:12]}… vs "
            f"{str(first['fingerprints'].get('config_sha256'))[:12]}…)"
        )
    dataset = open_dataset(cfg.data)
    if dataset.annotation_sha256() != first["fingerprints"].get("annotation_sha256"):
        raise AuditorInputError(
            f"the dataset's annotations changed since the shards were made ({src})"
        )
    store.write_provenance(first["provenance"])
    started = min(datetime.fromisoformat(m["started"]) for m in manifests if m.get("started"))
    return finalize(
        root,
        store,
        dataset=dataset,
        classes=list(dataset.classes),
        settings=cfg.audit,
        gates=cfg.gates,
        model_info=dict(first["model"]),
        config=cfg,
        sanity=_read_sanity(root),
        started=started,
        t0=t0,
        loop_s=max(float(m.get("loop_s") or 0.0) for m in manifests),
        pdf=cfg.report.pdf if pdf is None else pdf,
        render=render,
        command=command,
    )


def _sanity(
    run_dir: Path,
    model: torch.nn.Module,
    dataset: Any,
    s: AuditSettings,
    layers: Sequence[str],
    dev: torch.device,
    n: int,
    reshape: Any = None,
) -> dict[str, Any]:
    """Adebayo et al. 2018 model-randomisation check on the first ``sanity_samples`` images.

    What is randomised: every parameterised module that produces the logits from the target
    layer's output (:func:`auditor.metrics.sanity.downstream_of`: for a CNN the classifier, for
    a transformer the blocks after the layer and the head). The result always carries
    ``"_status": {"run", "reason", "randomised"}`` so that the report says why it did not run,
    never a silent null. Stored in ``sanity.json`` so that a resumed run reuses it.
    """
    import functools
    import json

    def not_run(reason: str) -> dict[str, Any]:
        log.warning("sanity check not run: %s", reason)
        return {"_status": {"run": False, "reason": reason, "randomised": []}}

    path = run_dir / "sanity.json"
    if not s.sanity_check:
        return not_run("disabled in the config ([audit] sanity_check = false)")
    if s.sanity_samples == 0:
        return not_run("[audit] sanity_samples = 0")
    if n == 0:
        return not_run("no sample to run it on")
    if path.is_file():
        stored: dict[str, Any] = json.loads(path.read_text("utf-8"))
        if "_skipped" in stored and "_status" not in stored:  # older runs
            stored["_status"] = {"run": False, "reason": stored["_skipped"], "randomised": []}
        return stored
    from auditor.cam import compute_cams
    from auditor.data import iter_batches
    from auditor.metrics.sanity import downstream_of, randomisation_sanity_check

    methods = [m for m in s.methods if m not in ("scorecam", "ablationcam")]
    if not methods:
        out = not_run(
            "only perturbation methods (Score-CAM/Ablation-CAM) were requested; the check "
            "runs on gradient and activation methods"
        )
        atomic_write_json(path, out)
        return out
    batch = next(
        iter(iter_batches(dataset, list(range(min(n, s.sanity_samples))), s.sanity_samples))
    )
    if not len(batch):
        return not_run("the first samples could not be read")
    images = batch.images.to(dev)
    try:
        head = downstream_of(model, layers[0], images[:2])
        if not head:
            raise ValueError(
                f"no module with parameters runs after the target layer {layers[0]!r}: "
                "nothing to randomise"
            )
        res = randomisation_sanity_check(
            model,
            images,
            batch.labels.to(dev),
            methods,
            layers[0],
            seed=s.seed,
            head=head,
            compute=functools.partial(compute_cams, reshape=reshape),
        )
    except (ValueError, RuntimeError, TypeError) as exc:
        out = not_run(str(exc).splitlines()[0][:300])
        atomic_write_json(path, out)
        return out
    out = {
        m: {
            "similarity": r.similarity,
            "threshold": r.threshold,
            "trustworthy": r.trustworthy,
            "n": r.n,
            "randomised": list(r.randomised),
        }
        for m, r in res.items()
    }
    out["_status"] = {
        "run": True,
        "reason": f"randomised the {len(head)} module(s) that compute the logits from "
        f"{layers[0]!r}",
        "randomised": list(head),
    }
    atomic_write_json(path, out)
    return out


def _cluster_analysis(
    cams: dict[int, np.ndarray], table: pa.Table, classes: Sequence[str], s: AuditSettings
) -> dict[str, Any]:
    """SpRAy per class on the stored low-resolution CAMs of the primary method."""
    from auditor.metrics.clusters import spray_clusters

    if not s.clusters or table.num_rows == 0:
        return {}
    prim = table.filter(pc.equal(table.column("method"), s.primary))
    idx = prim.column("index").to_numpy()
    labels = prim.column("label").to_numpy()
    bf = prim.column("background_focus").to_numpy(zero_copy_only=False).astype(float)
    ids = prim.column("id").to_pylist()
    out: dict[str, Any] = {}
    for ci, name in enumerate(classes):
        sel = np.flatnonzero(labels == ci)
        sel = np.asarray([j for j in sel if int(idx[j]) in cams])
        if len(sel) < 6:
            continue
        maps = np.stack([cams[int(idx[j])] for j in sel])
        bfc = bf[sel]
        res = spray_clusters(
            maps, background_focus=bfc if np.isfinite(bfc).any() else None, seed=s.seed
        )
        clusters = []
        for cl in res.clusters:
            clusters.append(
                {
                    "id": int(cl.id),
                    "size": int(cl.size),
                    "background_focus": None
                    if cl.mean_background_focus is None or not np.isfinite(cl.mean_background_focus)
                    else float(cl.mean_background_focus),
                    "exemplars": [ids[int(sel[e])] for e in cl.exemplars],
                    "outlier": int(cl.id) in set(int(x) for x in res.outlier_clusters),
                    "gallery": [],
                }
            )
        out[name] = {"k": int(res.k), "eigengap": float(res.eigengap), "clusters": clusters}
    return out


def finalize(
    run_dir: Path,
    store: RunStore,
    *,
    dataset: Any,
    classes: Sequence[str],
    settings: AuditSettings,
    gates: Sequence[GateRule],
    model_info: dict[str, Any],
    config: AuditConfig | None,
    sanity: dict[str, Any] | None,
    started: datetime,
    t0: float,
    loop_s: float,
    pdf: bool,
    render: bool,
    command: str | None,
) -> AuditOutcome:
    """Aggregate the shards, write samples.parquet, summary.json, gallery, junit, report."""
    s = settings
    t_an = time.perf_counter()
    table = store.read_rows()
    log.info("aggregating %d rows from %s", table.num_rows, store.shards)
    skipped = store.read_skipped()
    if table.num_rows:
        store.write_samples(table)
    # the primary method's low-resolution CAMs, read once for clusters and gallery (tiny:
    # h×w float32 per sample)
    primary_cams = store.load_cams(s.primary) if table.num_rows else {}
    clusters = _cluster_analysis(primary_cams, table, classes, s)
    sanity_clean = {k: v for k, v in (sanity or {}).items() if not k.startswith("_")}
    if table.num_rows:
        stats = analyse(
            table,
            classes=classes,
            methods=s.methods,
            settings=s,
            rules=FindingRules(),
            clusters=clusters,
            sanity=sanity_clean,
        )
    else:
        stats = {
            "overall": {"n": 0, "accuracy": None, "accuracy_ci": [None, None], "metrics": {}},
            "classes": {},
            "findings": [],
            "rules": {},
            "confusion": None,
            "method_agreement": None,
            "faithfulness": None,
        }

    from auditor.cam import METHODS
    from auditor.metrics.registry import METRICS

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
    for sk in skipped:
        h.update(f"skipped\0{sk['id']}\n".encode())
    annotated = bool(prim.num_rows and any(prim.column("has_mask").to_pylist()))
    finished = datetime.now(timezone.utc)
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "cam-auditor", "version": __version__},
        "run": {
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - t0, 3),
            "timings": {
                "audit_loop_s": round(loop_s, 3),
                "analysis_s": round(time.perf_counter() - t_an, 3),
            },
            "config_sha256": config.sha256 if config else None,
            "seed": s.seed,
            "device": s.device,
            "command": command,
            "versions": library_versions(),
            "config": to_jsonable(config.raw) if config else to_jsonable(s),
        },
        "title": config.report.title if config else "Model attention audit",
        "model": model_info,
        "dataset": {
            "name": getattr(dataset.config, "source", None)
            and Path(str(dataset.config.manifest or dataset.config.root)).name,
            "format": dataset.config.format,
            "sha256": h.hexdigest(),
            "annotation_sha256": dataset.annotation_sha256(),
            "n_samples": len(dataset),
            "n_evaluated": int(prim.num_rows),
            "n_skipped": len(skipped),
            "annotated": annotated,
            "input_size": list(dataset.config.input_size),
            "classes": list(classes),
            "skipped": [{"id": sk["id"], "reason": sk["reason"]} for sk in skipped],
        },
        "methods": list(s.methods),
        "primary_method": s.primary,
        "methods_info": {m: _method_info(METHODS[m]) for m in s.methods},
        "metrics_info": {k: to_jsonable(v) for k, v in METRICS.items()},
        **stats,
        "sanity": sanity_clean or None,
        "sanity_status": (sanity or {}).get("_status")
        or {"run": False, "reason": "not run", "randomised": []},
        "clusters": clusters or None,
        "settings": to_jsonable(s),
    }
    summary["gates"] = evaluate_gates(summary, gates)
    summary["gallery"] = _gallery(run_dir, primary_cams, dataset, table, summary, s)
    atomic_write_json(run_dir / "summary.json", summary)
    write_junit(run_dir / "junit.xml", summary)
    write_per_class_csv(summary, run_dir / "classes.csv")
    write_findings_csv(summary, run_dir / "findings.csv")
    if summary["dataset"]["n_evaluated"] == 0:
        reasons = "; ".join(f"{d['id']}: {d['reason']}" for d in summary["dataset"]["skipped"][:3])
        raise AuditorInputError(
            f"no sample could be evaluated ({len(skipped)} skipped"
            + (f", e.g. {reasons}" if reasons else "")
            + f"); see {run_dir / 'summary.json'}"
        )
    report: dict[str, Path] = {}
    if render:
        from auditor.report import render_report

        report = render_report(
            run_dir,
            html=True,
            pdf=pdf,
            templates=config.report.templates if config else None,
            pdf_timeout_s=config.report.pdf_timeout_s if config else 600,
        )
    return AuditOutcome(
        run_dir=run_dir, summary=summary, passed=summary["gates"]["passed"], report=report
    )


def _method_info(method: Any) -> dict[str, Any]:
    doc = (getattr(method, "__doc__", None) or getattr(method, "description", "") or "").strip()
    info = {
        "title": getattr(method, "title", None) or getattr(method, "name", ""),
        "formula": getattr(method, "formula", "") or "",
        "reference": getattr(method, "reference", "") or "",
        "description": doc.split("\n\n")[0] if doc else "",
    }
    return info


def _gallery(
    run_dir: Path,
    cams: dict[int, np.ndarray],
    dataset: Any,
    table: pa.Table,
    summary: dict[str, Any],
    s: AuditSettings,
) -> dict[str, list[dict[str, Any]]]:
    """Choose and draw gallery panels: flagged classes (highest background focus first) and,
    for contrast, the class with the lowest risk (highest energy in the object)."""
    from auditor.report import cluster_panel, gallery_panel

    if table.num_rows == 0 or s.gallery_per_class == 0:
        return {}
    gdir = run_dir / "gallery"
    gdir.mkdir(exist_ok=True)
    classes = summary["classes"]
    prim = table.filter(pc.equal(table.column("method"), s.primary))
    cols = {
        c: prim.column(c).to_numpy(zero_copy_only=False)
        for c in (
            "index",
            "id",
            "label",
            "pred",
            "confidence",
            "background_focus",
            "energy_in_mask",
        )
    }
    names = list(summary["dataset"]["classes"])
    flagged = [c for c, v in classes.items() if v["flagged"]]
    ranked = sorted((c for c in classes if classes[c]["n"]), key=lambda c: classes[c]["risk"])
    contrast = [c for c in ranked if c not in flagged][:1]
    chosen: list[tuple[str, str]] = [(c, "flagged") for c in flagged[:20]] + [
        (c, "contrast") for c in contrast
    ]
    out: dict[str, list[dict[str, Any]]] = {}
    for cname, why in chosen:
        ci = names.index(cname)
        sel = np.flatnonzero(cols["label"] == ci)
        key = cols["background_focus"].astype(float)[sel]
        key = np.where(np.isfinite(key), key, -np.inf)
        order = sel[np.argsort(-key if why == "flagged" else key, kind="stable")]
        picks = order[: s.gallery_per_class]
        entries = []
        for rank, j in enumerate(picks):
            i = int(cols["index"][j])
            if i not in cams:
                continue
            image, mask = dataset.load_display(i)
            bfv = float(cols["background_focus"][j])
            png = gallery_panel(
                image,
                mask,
                cams[i],
                title=str(cols["id"][j]),
                subtitle=f"label {cname} · predicted {names[int(cols['pred'][j])]} · "
                f"background focus {bfv:.0%}"
                if np.isfinite(bfv)
                else "",
            )
            fname = f"gallery/{_slug(cname)}-{rank}.png"
            atomic_write_bytes(run_dir / fname, png)
            entries.append(
                {
                    "id": str(cols["id"][j]),
                    "file": fname,
                    "label": cname,
                    "pred": names[int(cols["pred"][j])],
                    "confidence": float(cols["confidence"][j]),
                    "energy_in_mask": _num(cols["energy_in_mask"][j]),
                    "background_focus": _num(bfv),
                    "why": "highest background focus"
                    if why == "flagged"
                    else "lowest-risk class, for contrast",
                }
            )
        out[cname] = entries
    # cluster exemplar panels
    id_to_index = {str(a): int(b) for a, b in zip(cols["id"], cols["index"])}
    for cname, res in (summary.get("clusters") or {}).items():
        if len(res["clusters"]) < 2:
            continue
        for cl in res["clusters"][:6]:
            wanted = [id_to_index[e] for e in cl["exemplars"] if e in id_to_index][:4]
            ex = [(dataset.load_display(i)[0], cams[i]) for i in wanted if i in cams]
            if not ex:
                continue
            mean_map = np.mean([c for _, c in ex], axis=0)
            png = cluster_panel(
                mean_map, ex, title=f"{cname}: cluster {cl['id']} ({cl['size']} images)"
            )
            fname = f"gallery/cluster-{_slug(cname)}-{cl['id']}.png"
            atomic_write_bytes(run_dir / fname, png)
            cl["gallery"] = [fname]
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _slug(name: str) -> str:
    safe = "".join(ch if ch.isalnum() else "-" for ch in name)[:40].strip("-") or "class"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def write_junit(path: Path, summary: dict[str, Any]) -> None:
    """Gate results as JUnit XML: one test case per rule × class, failures for failed gates."""
    from xml.sax.saxutils import quoteattr

    results = summary.get("gates", {}).get("results", [])
    failures = sum(1 for r in results if not r["passed"])
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="cam-auditor" tests="{len(results)}" failures="{failures}">',
        f"  <testsuite name={quoteattr('gates: ' + str(summary.get('model', {}).get('name')))} "
        f'tests="{len(results)}" failures="{failures}" errors="0">',
    ]
    for r in results:
        name = r["rule"] + (f"[{r['class']}]" if r.get("class") is not None else "")
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        lines.append(f'    <testcase classname="cam-auditor.gates" name={quoteattr(name)}>')
        if not r["passed"]:
            msg = (
                f"{r['quantity']} ({r['stat']}) = {value}, {r['bound']} allowed "
                f"{r['threshold']}" + (f" ({r['note']})" if r.get("note") else "")
            )
            lines.append(f"      <failure message={quoteattr(msg)}/>")
        lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>", ""]
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))
