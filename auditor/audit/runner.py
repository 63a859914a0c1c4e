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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # torch is imported where a model runs: finalize/report never load it
    import torch

from auditor._version import __version__
from auditor.analysis.finalize import AuditOutcome, FinalizeInputs, cluster_analysis
from auditor.analysis.finalize import finalize as finalize_inputs
from auditor.audit import interrupt
from auditor.audit.batch import STORED_INPUT_MAP_SIDE, BatchAuditor
from auditor.audit.distributed import (
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
from auditor.audit.heap import kept_heap
from auditor.audit.modelstate import preserved_training_flags
from auditor.audit.provenance import library_versions
from auditor.audit.store import (
    MAIN_LOCK,
    RunLock,
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    claim_run_dir,
    sweep_temp_files,
)
from auditor.config import (
    AuditConfig,
    AuditSettings,
    GateRule,
    check_device_available,
    check_gates,
    to_jsonable,
    with_overrides,
)
from auditor.errors import AuditorInputError, ConfigError, DataError, ModelRuntimeError
from auditor.results import (
    AuditResult,
    SanityCheck,
    SanityResult,
    SanityStatus,
)

log = logging.getLogger("auditor")

# moved to auditor.analysis.finalize / auditor.audit.provenance; re-exported here
_cluster_analysis = cluster_analysis
_BatchAuditor = BatchAuditor
__all__ = [  # the star-import of the deprecated `auditor.runner`; finalize's names included
    "STORED_INPUT_MAP_SIDE",
    "AuditOutcome",
    "FinalizeInputs",
    "audit",
    "finalize",
    "finalize_run",
    "library_versions",
    "raised_by_model",
    "run_audit",
    "write_junit",
]


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    from auditor.progress import bar  # a bar on a terminal, lines elsewhere (issue 23)

    return bar(total, desc, enabled)


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


def raised_by_model(exc: BaseException, model: torch.nn.Module) -> bool:
    """Whether ``exc`` was raised inside the forward of one of ``model``'s module types.

    The traceback is walked for a frame whose ``self`` is an ``nn.Module`` of a type the
    model is made of (the engine may run a copy of the model, so types, not objects, are
    compared). Errors raised elsewhere (cam-auditor's own code) are bugs: not skipped.
    """
    import torch

    types = {type(m) for m in model.modules()}
    return any(
        isinstance(owner, torch.nn.Module) and type(owner) in types for owner in _frame_owners(exc)
    )


def _frame_owners(exc: BaseException) -> Iterator[object]:
    """The ``self`` of each frame of ``exc``'s traceback (``None`` for a plain function)."""
    tb = exc.__traceback__
    while tb is not None:
        yield tb.tb_frame.f_locals.get("self")
        tb = tb.tb_next


def _raised_by_reshape(exc: BaseException) -> bool:
    """Whether ``exc`` came from a configured :class:`auditor.cam.layers.Reshape` (a
    ``[model] reshape`` whose grid or prefix tokens do not fit the target layer: bad input)."""
    from auditor.cam.layers import Reshape

    return isinstance(exc, ValueError) and any(
        isinstance(owner, Reshape) for owner in _frame_owners(exc)
    )


def _model_failure(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


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

    ``shard``: compute only shard I of N (``--shard I/N``, :mod:`auditor.audit.distributed`) under
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
    from auditor.models import load_model

    where = cfg.source.name if cfg.source is not None else "<config>"
    check_device_available(cfg.audit.device, "--device" if cfg.audit.device else where)
    dataset = _open_dataset(cfg)
    # gates naming classes are checked against the dataset's class list before the model loads
    check_gates(cfg.gates, settings=cfg.audit, classes=dataset.classes, source=where)
    if cfg.model.task == "detection":  # issue 26: the detector loop, same run directory
        from auditor.audit.detection import run_detection

        return run_detection(
            cfg, dataset, out, lock=lock, trust_model_code=trust_model_code, resume=resume,
            pdf=cfg.report.pdf if pdf is None else pdf, progress=progress, render=render,
            command=command, spec=spec, overrides=overrides,
        )  # fmt: skip
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
    for the whole call (:class:`auditor.audit.store.RunLock`; a second audit into it raises
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
    import torch

    s = settings or AuditSettings()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    run_dir = Path(out)
    store = RunStore(run_dir)
    dev, resume = _setup_device(s, spec, resume)
    check_gates(tuple(gates), settings=s, classes=list(dataset.classes), source="gates")
    torch.manual_seed(s.seed)
    classes = list(dataset.classes)
    model_info = _model_info(model, model_info, classes)

    orig_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(dev)
    try:
        # every forward of the audit (interventions included) sees the eval model
        with preserved_training_flags(model, eval=True):
            engine, grid = _build_engine(model, dataset, layer, reshape, s, dev)
            model_info["target_layer"] = ",".join(engine.layer_names)
            model_info["cam_grid"] = [list(g) for g in grid]  # the interpretability check
            _describe_layers(model_info, engine)

            n_total = len(dataset)
            n = n_total if s.limit is None else min(s.limit, n_total)
            indices = list(range(n))
            chunks = [indices[k : k + s.batch_size] for k in range(0, n, s.batch_size)]
            decode = _gpu_decode_decision(dataset, dev, indices)
            num_workers = s.num_workers
            if decode is not None:
                log.info("image decoding: %s", decode.reason)
                if decode.enabled:
                    dataset.decode_device = dev
                    if num_workers:
                        log.info(
                            "gpu_decode: decoding in the main process (num_workers %d -> 0: "
                            "CUDA is not usable in forked DataLoader workers)",
                            num_workers,
                        )
                        num_workers = 0
            fingerprints = {
                "config_sha256": config.sha256 if config else "python-api",
                "model_sha256": model_info["sha256"],
                "annotation_sha256": dataset.annotation_sha256(),
                # `aggregation` only changes how finalisation reads the shards: not a fingerprint
                "settings": hashlib.sha256(
                    repr({k: v for k, v in to_jsonable(s).items() if k != "aggregation"}).encode()
                ).hexdigest(),
                "tool_version": __version__,
            }
            provenance = {
                "fingerprints": fingerprints,
                "versions": library_versions(),
                "model": model_info,
                "started": started.isoformat(timespec="seconds"),
            }
            if decode is not None:
                provenance["gpu_decode"] = decode.to_json()
            todo_batches, first_missing = _plan_batches(
                store, spec, fingerprints, provenance, len(chunks), resume
            )
            manifest = _start_manifest(
                store,
                spec,
                s,
                n,
                len(chunks),
                fingerprints,
                provenance,
                model_info,
                config,
                overrides,
                started,
            )
            if config is not None and config.source is not None and spec.index == 0:
                atomic_write_bytes(run_dir / "config.toml", Path(config.source).read_bytes())
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
            worker = _batch_worker(model, engine, s, classes, dev, dataset, n)
            # the sanity check runs once, in shard 0, which records it for finalisation
            sanity = (
                _sanity(
                    run_dir, model, dataset, s, engine.layer_names, dev, n, reshape=engine.reshape
                )
                if spec.index == 0
                else None
            )
            t_loop = time.perf_counter()
            with kept_heap():
                _audit_batches(
                    worker,
                    store,
                    dataset,
                    todo_batches,
                    [chunks[b] for b in todo_batches],
                    s,
                    dev,
                    model,
                    model_info["name"],
                    progress,
                    num_workers=num_workers,
                )
            loop_s = time.perf_counter() - t_loop
            if engine.replica_status:
                log.info(
                    "Score-CAM: %d masked forwards; inference copy %s",
                    engine.masked_forwards,
                    engine.replica_status,
                )
    finally:
        model.to(orig_device)
    manifest.update(
        status="complete",
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        loop_s=round(loop_s, 3),
        sanity=None if sanity is None else sanity.to_json(),
    )
    atomic_write_json(manifest_path(store.shards, spec), manifest)

    if spec.mode == "shard":
        log.info("shard %s complete: %d batch(es) written", spec.label, len(todo_batches))
        return AuditOutcome(run_dir=run_dir, result=None, passed=True)
    if spec.mode == "torchrun":
        barrier()  # every rank's batches are on disk
        if spec.index != 0:
            return AuditOutcome(run_dir=run_dir, result=None, passed=True)
        # rank 0 finalises under its writer lock: the other ranks of the group only wait
        manifests, _ = check_complete(store.shards, completed_batches=store.completed_batches())
        store.write_provenance(manifests[0]["provenance"])
        loop_s = max(float(m.get("loop_s") or 0.0) for m in manifests)

    return finalize_inputs(
        FinalizeInputs(
            run_dir=run_dir,
            store=store,
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
            transplant=_transplant_hook(model, engine, dataset, s, dev, spec),
        )
    )


def _transplant_hook(
    model: torch.nn.Module, engine: Any, dataset: Any, s: AuditSettings, dev: Any, spec: ShardSpec
) -> Any:
    """The transplant intervention's finalisation hook (issue 22), or ``None`` when it does not
    run here (``[audit] transplant = false``, a ``--shard`` job)."""
    if not s.transplant or spec.mode == "shard":
        return None
    from auditor.audit.transplant import make_transplant

    return make_transplant(model, engine, dataset, s, dev)


def _setup_device(s: AuditSettings, spec: ShardSpec, resume: bool) -> tuple[torch.device, bool]:
    """The audit's device (one GPU per local rank under torchrun) and whether to resume."""
    import torch

    check_device_available(s.device, "device")
    dev = torch.device(s.device)
    if spec.mode == "torchrun":
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", spec.local_rank)  # one GPU per local rank
        init_process_group(spec, dev.type)
        resume = resume or restarted_by_torchrun()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev, resume


def _model_info(
    model: torch.nn.Module, model_info: dict[str, Any] | None, classes: Sequence[str]
) -> dict[str, Any]:
    """The model's provenance: name, source, sha256 of its state dict, parameters, classes."""
    from auditor.models import state_dict_sha256

    info = dict(model_info or {})
    info.setdefault("name", type(model).__name__)
    info.setdefault("source", f"python:{type(model).__module__}.{type(model).__qualname__}")
    if "sha256" not in info:
        info["sha256"] = state_dict_sha256(model)
    info.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    info["num_classes"] = len(classes)
    return info


def _build_engine(
    model: torch.nn.Module,
    dataset: Any,
    layer: str | Sequence[str] | None,
    reshape: Any,
    s: AuditSettings,
    dev: torch.device,
) -> tuple[Any, tuple[tuple[int, int], ...]]:
    """The CAM engine of the audit (target layer auto-detected on a seeded probe batch) and
    each target layer's grid ``(h, w)`` at the input size."""
    import torch

    from auditor.cam import CamEngine
    from auditor.cam.applicability import check_applicability

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
            autocast={"bfloat16": torch.bfloat16, "float16": torch.float16}.get(s.autocast or ""),
            reshape=_reshape_fn(reshape),
            example=example,
            seed=int(s.seed),
        )
        # every method x model check before the first batch (exit 2 naming what fails)
        found = check_applicability(engine, example, len(dataset.classes), s.max_forwards_per_image)
        log.info("cost estimate: %s", found.describe())
        return engine, found.grid
    except AuditorInputError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        # the applicability probe runs the reshape on the real layer output: name the key
        where = (
            "[model] reshape"
            if reshape is not None and "reshape" in str(exc)
            else ("[model]/[audit]")
        )
        raise ConfigError(f"{where}: {exc}") from exc
    except Exception as exc:
        # the dry forward that finds the target layer failed inside the model (an input size
        # or channel count the model does not take): bad input, not a bug of ours
        if not raised_by_model(exc, model):
            raise
        raise ModelRuntimeError(
            f"[model]: the model fails on a probe input of shape {list(example.shape)} "
            f"([data] input_size = {list(dataset.config.input_size)}, channels = {channels}): "
            f"{_model_failure(exc)}"
        ) from exc


def _plan_batches(
    store: RunStore,
    spec: ShardSpec,
    fingerprints: Mapping[str, Any],
    provenance: Mapping[str, Any],
    n_batches: int,
    resume: bool,
) -> tuple[list[int], int]:
    """The batches this process still has to compute, and how many of its batches are done.

    Single process: the first missing batch and everything after it run again (the store is
    prepared and the provenance written). Shards: the owned batches without a shard file.
    """
    if spec.mode == "single":
        done = store.prepare(dict(fingerprints), resume=resume)
        store.write_provenance(dict(provenance))
        first_missing = next((b for b in range(n_batches) if b not in done), n_batches)
        return list(range(first_missing, n_batches)), first_missing
    store.shards.mkdir(parents=True, exist_ok=True)
    check_compatible(store.shards, spec, dict(fingerprints), resume=resume)
    done = store.completed_batches()
    if resume:  # a truncated or corrupt batch of this shard is computed again (as documented)
        for b in sorted(done):
            problem = store.batch_problem(b) if spec.owns(b) else None
            if problem:
                log.warning("--resume: batch %d is recomputed: %s", b, problem)
                done.discard(b)
    todo_batches = owned_todo(spec, n_batches, done)
    return todo_batches, len(spec.batches(n_batches)) - len(todo_batches)


def _start_manifest(
    store: RunStore,
    spec: ShardSpec,
    s: AuditSettings,
    n: int,
    n_batches: int,
    fingerprints: Mapping[str, Any],
    provenance: Mapping[str, Any],
    model_info: Mapping[str, Any],
    config: AuditConfig | None,
    overrides: Mapping[str, Any] | None,
    started: datetime,
) -> dict[str, Any]:
    """Write this process's shard manifest with status ``running``; return it."""
    manifest: dict[str, Any] = {
        "shard": spec.label,
        "mode": spec.mode,
        "status": "running",
        "fingerprints": fingerprints,
        "n_samples": n,
        "n_batches": n_batches,
        "batch_size": s.batch_size,
        "batches": spec.batches(n_batches),
        "config_path": str(Path(config.source).resolve())
        if config is not None and config.source is not None
        else None,
        "overrides": dict(overrides or {}),
        "model": model_info,
        "methods_info": _recorded_methods_info(s.methods),
        "provenance": provenance,
        "started": started.isoformat(timespec="seconds"),
    }
    atomic_write_json(manifest_path(store.shards, spec), manifest)
    return manifest


def _recorded_methods_info(methods: Sequence[str]) -> dict[str, Any]:
    """The methods' :class:`~auditor.results.MethodInfo` JSON, recorded in the shard manifest so
    that ``auditor finalize`` writes summary.json's ``methods_info`` without torch."""
    from auditor.cam.methods import METHODS  # the audit loop has torch loaded
    from auditor.results import method_info

    return {m: method_info(METHODS[m]).to_json() for m in methods}


def _open_dataset(cfg: AuditConfig) -> Any:
    """The run's dataset: label sets for ``[model] output = "sigmoid"`` (issue 26; never
    guessed), else the classifier's reader."""
    if cfg.model.output == "sigmoid":
        from auditor.data.multilabel import open_multilabel_dataset

        return open_multilabel_dataset(cfg.data)
    from auditor.data import open_dataset

    return open_dataset(cfg.data)


def _batch_worker(
    model: torch.nn.Module,
    engine: Any,
    s: AuditSettings,
    classes: Sequence[str],
    dev: torch.device,
    dataset: Any,
    n: int,
) -> Any:
    """The batch processor: the classifier's, or the multi-label one for a dataset of label
    sets (:mod:`auditor.audit.multilabel`; faithfulness is not run there)."""
    from auditor.data.multilabel import is_multilabel

    if is_multilabel(dataset):
        from auditor.audit.multilabel import MultiLabelBatchAuditor

        if s.faithfulness_samples:
            log.info("faithfulness: not computed for multi-label (sigmoid) runs")
        return MultiLabelBatchAuditor(
            model, engine, s, classes, dev, dataset.config.mean, dataset.config.std
        )
    return BatchAuditor(
        model,
        engine,
        s,
        classes,
        dev,
        _seeded_subset(n, s.faithfulness_samples, s.seed),
        dataset.config.mean,
        dataset.config.std,
    )


def _audit_batches(
    worker: Any,
    store: RunStore,
    dataset: Any,
    todo_batches: Sequence[int],
    todo: Sequence[Sequence[int]],
    s: AuditSettings,
    dev: torch.device,
    model: torch.nn.Module,
    model_name: str,
    progress: bool | None,
    *,
    num_workers: int | None = None,
) -> None:
    """The loop: each batch computed and written as a shard; the model's own errors skip it.

    ``num_workers``: DataLoader workers (default ``s.num_workers``; 0 when the images are
    decoded on the CUDA device, ``[data] gpu_decode``).

    More than ``max_failed_batches`` failing batches raise :class:`ModelRuntimeError`.
    """
    failures: list[str] = []
    bar = _progress(sum(len(c) for c in todo), progress, "auditing")
    try:
        with interrupt.batch_loop():  # a first Ctrl-C stops after the batch being computed
            _batch_loop(
                worker,
                store,
                dataset,
                todo_batches,
                todo,
                s,
                dev,
                model,
                model_name,
                failures,
                bar,
                num_workers,
            )
    except Exception:
        if interrupt.requested():  # e.g. a DataLoader worker that got the Ctrl-C too
            raise KeyboardInterrupt from None
        raise
    finally:
        bar.close()


def _batch_loop(
    worker: Any,
    store: RunStore,
    dataset: Any,
    todo_batches: Sequence[int],
    todo: Sequence[Sequence[int]],
    s: AuditSettings,
    dev: torch.device,
    model: torch.nn.Module,
    model_name: str,
    failures: list[str],
    bar: Any,
    num_workers: int | None,
) -> None:
    """The body of :func:`_audit_batches`; stops between batches after a Ctrl-C."""
    from auditor.data import iter_batches

    flat = [i for c in todo for i in c]
    # only the globally last chunk can be short, so re-chunking the concatenation of
    # this shard's chunks gives back exactly those chunks
    for batch_no, batch in zip(
        todo_batches,
        iter_batches(
            dataset,
            flat,
            s.batch_size,
            num_workers=s.num_workers if num_workers is None else num_workers,
            pin_memory=dev.type == "cuda",
        ),
        strict=True,
    ):
        skip_rows = _empty_skip_rows(batch)
        ids, idx = list(batch.ids), list(batch.indices)
        if len(batch):
            try:
                rows, cams = worker.process(batch, batch_no)
                if hasattr(worker, "cam_keys"):  # multi-label: maps keyed per pair
                    ids, idx = worker.cam_keys(batch)
            except Exception as exc:  # noqa: BLE001 - only the model's own errors
                if _raised_by_reshape(exc):  # [model] reshape does not fit the layer
                    raise ConfigError(f"[model] reshape: {_model_failure(exc)}") from exc
                if not raised_by_model(exc, model):
                    raise
                failures.append(_model_failure(exc))
                log.warning(
                    "batch %d: the model raised %s; its %d samples are skipped",
                    batch_no,
                    failures[-1],
                    len(batch),
                )
                if len(failures) > s.max_failed_batches:
                    raise ModelRuntimeError(
                        f"the model {model_name!r} raised on "
                        f"{len(failures)} batches (more than [audit] "
                        f"max_failed_batches = {s.max_failed_batches}); first: "
                        f"{failures[0]}"
                    ) from exc
                reason = f"the model raised {failures[-1]}"
                skip_rows += [{"index": i, "id": sid, "reason": reason} for i, sid in zip(idx, ids)]
                rows, cams, ids, idx = pa.table({}), {}, [], []
        else:
            rows, cams = pa.table({}), {}
        store.write_batch(batch_no, rows, cams, ids, idx, skip_rows)
        bar.update(len(batch) + len(batch.skipped))
        interrupt.stop_if_requested()


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


def finalize_run(
    run_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    pdf: bool | None = None,
    render: bool = True,
    command: str | None = None,
    aggregation: str | None = None,
) -> AuditOutcome:
    """``auditor finalize RUN_DIR``: combine the shards of a run directory into its results.

    ``aggregation`` ("auto", "exact", "streaming") overrides the config's
    ``[audit] aggregation`` (it changes how the shards are read, not what they hold, so the
    config fingerprint still matches).

    Takes the run directory's main lock (refused while a shard writer is alive, naming it),
    checks that every shard ``I/N`` is present and complete and that all were made with the
    same config, model, annotations, settings and tool version (naming what is missing or
    differs), then writes samples.parquet, summary.json, gallery, JUnit and the reports as a
    single-process run would. The config is read from where the shards were started
    (recorded in their shard records) unless ``config_path`` is given; its fingerprint must
    match. No model is loaded: the sanity check is the one shard 0 recorded.
    """
    root = Path(run_dir)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such directory"
        raise AuditorInputError(f"RUN_DIR {root}: {what}")
    if not (root / "shards").is_dir():  # before the lock, which would leave locks/ behind
        raise AuditorInputError(
            f"RUN_DIR {root}: no shards/ folder (not a run directory, or no shard job has "
            f"started yet)"
        )
    with RunLock(root, command=command):
        sweep_temp_files(root)
        return _finalize_locked(root, config_path, pdf, render, command, aggregation)


def _finalize_locked(
    root: Path,
    config_path: str | Path | None,
    pdf: bool | None,
    render: bool,
    command: str | None,
    aggregation: str | None = None,
) -> AuditOutcome:
    from auditor.config import load_config

    t0 = time.perf_counter()
    store = RunStore(root)
    manifests, n_shards = check_complete(store.shards, completed_batches=store.completed_batches())
    _check_batches(store, n_shards)
    first = manifests[0]
    src = Path(config_path) if config_path is not None else first.get("config_path")
    if not src:
        raise AuditorInputError(
            f"RUN_DIR {root}: the shards were made through the Python API (no config file); "
            f"pass --config CONFIG.toml"
        )
    if not Path(src).is_file():
        if config_path is not None:
            raise AuditorInputError(f"--config {src}: no such config file")
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
    dataset = _open_dataset(cfg)
    if dataset.annotation_sha256() != first["fingerprints"].get("annotation_sha256"):
        raise AuditorInputError(
            f"the dataset's annotations changed since the shards were made ({src})"
        )
    if aggregation is not None:
        if aggregation not in ("auto", "exact", "streaming"):
            raise AuditorInputError(
                f"--aggregation must be 'auto', 'exact' or 'streaming', got {aggregation!r}"
            )
        cfg = replace(cfg, audit=replace(cfg.audit, aggregation=aggregation))
    store.write_provenance(first["provenance"])
    started = min(datetime.fromisoformat(m["started"]) for m in manifests if m.get("started"))
    if cfg.model.task == "detection":  # issue 26: the detection rows, same finish as one process
        from auditor.audit.detection_finish import finish_detection

        return finish_detection(  # type: ignore[no-any-return]
            root, store, cfg=cfg, dataset=dataset, classes=tuple(dataset.classes),
            model_info=dict(first["model"]), started=started, t0=t0,
            loop_s=max(float(m.get("loop_s") or 0.0) for m in manifests),
            pdf=cfg.report.pdf if pdf is None else pdf, render=render, command=command,
        )  # fmt: skip
    return finalize_inputs(
        FinalizeInputs(
            run_dir=root,
            store=store,
            dataset=dataset,
            classes=list(dataset.classes),
            settings=cfg.audit,
            gates=cfg.gates,
            model_info=dict(first["model"]),
            methods_info=first.get("methods_info"),
            config=cfg,
            sanity=None if first.get("sanity") is None else SanityCheck.from_json(first["sanity"]),
            started=started,
            t0=t0,
            loop_s=max(float(m.get("loop_s") or 0.0) for m in manifests),
            pdf=cfg.report.pdf if pdf is None else pdf,
            render=render,
            command=command,
        )
    )


def _check_batches(store: RunStore, n_shards: int) -> None:
    """Refuse (exit 2) a run directory with a truncated, overwritten or missing shard file,
    naming it and the shard job to rerun: cheap checks (Parquet footers, CAM archive
    directories, skip lists), so finalisation never fails half-way with an internal error or
    silently drops a batch's skipped samples."""
    for b in store.batch_numbers():
        problem = store.batch_problem(b, deep=False)
        if problem:
            shard = f" --shard {b % n_shards}/{n_shards}" if n_shards > 1 else ""
            raise DataError(
                f"{store.root}: batch {b} cannot be finalised: {problem}; recompute it with "
                f"`auditor run CONFIG --out DIR{shard} --resume`"
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
) -> SanityCheck:
    """Adebayo et al. 2018 model-randomisation check on the first ``sanity_samples`` images.

    What is randomised: see :func:`_randomise` (default: the modules after the target layer and
    the block that contains it; ``[audit] sanity_randomise = "head"``: only those after). The
    result always carries its :class:`~auditor.results.SanityStatus` (run or not, why not,
    what was randomised) so that the report says why it did not run, never a silent null.
    Stored in ``sanity.json`` (:meth:`SanityCheck.to_json`) so that a resumed run reuses it.
    """
    import json

    path = run_dir / "sanity.json"
    reason = _sanity_skip_reason(s, dataset, n)
    if reason is not None:
        return _sanity_not_run(reason)
    if path.is_file():  # also reads the records of older runs
        return SanityCheck.from_json(json.loads(path.read_text("utf-8")))
    from auditor.cam import METHODS
    from auditor.data import iter_batches

    # each method declares on its registration whether the check runs it (`sanity_check`)
    methods = [m for m in s.methods if METHODS[m].sanity_check]
    if not methods:
        out = _sanity_not_run(
            "only perturbation methods (Score-CAM/Ablation-CAM) were requested; the check "
            "runs on gradient and activation methods"
        )
        atomic_write_json(path, out.to_json())
        return out
    batch = next(
        iter(iter_batches(dataset, list(range(min(n, s.sanity_samples))), s.sanity_samples))
    )
    if not len(batch):
        return _sanity_not_run("the first samples could not be read")
    images = batch.images.to(dev)
    targets = _sanity_targets(model, batch, images)
    try:
        head, res = _randomise(model, images, targets, methods, layers[0], s, reshape)
    except (ValueError, RuntimeError, TypeError) as exc:
        out = _sanity_not_run(str(exc).splitlines()[0][:300])
        atomic_write_json(path, out.to_json())
        return out
    out = _sanity_record(res, head, layers[0])
    atomic_write_json(path, out.to_json())
    return out


def _sanity_not_run(reason: str) -> SanityCheck:
    """The sanity record of a check that did not run, with its reason (logged too)."""
    (log.info if "config" in reason else log.warning)("sanity check not run: %s", reason)
    return SanityCheck.not_run(reason)


def _sanity_skip_reason(s: AuditSettings, dataset: Any, n: int) -> str | None:
    """Why the sanity check does not run on this audit, or ``None`` when it does."""
    if not s.sanity_check:
        return "disabled in the config ([audit] sanity_check = false)"
    if s.sanity_samples == 0:
        return "[audit] sanity_samples = 0"
    if n == 0:
        return "no sample to run it on"
    return None


def _sanity_targets(model: torch.nn.Module, batch: Any, images: torch.Tensor) -> torch.Tensor:
    """The labels the randomisation check explains: the batch's labels; for a multi-label
    batch (issue 26) each image's first label it carries (the lowest label index), or, for an
    image without any label, the label its sigmoid head scores highest (one inference
    forward). The same targets go to the trained and the randomised model."""
    import torch

    sets = getattr(batch, "label_sets", None)
    if sets is None:
        return batch.labels.to(images.device)
    first = torch.where(
        sets.any(1), sets.float().argmax(1), torch.full_like(sets[:, 0], -1, dtype=torch.long)
    )
    if bool((first < 0).any()):
        with torch.no_grad():
            top = model(images).float().argmax(1).cpu()
        first = torch.where(first < 0, top, first)
    return first.to(images.device)


def _randomise(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    methods: Sequence[str],
    layer: str,
    s: AuditSettings,
    reshape: Any,
) -> tuple[list[str], Mapping[str, Any]]:
    """The modules the check re-initialised, and its result per method
    (:func:`auditor.metrics.sanity.randomisation_sanity_check`).

    ``[audit] sanity_randomise = "cascade"`` (default): the modules after ``layer`` that
    compute the logits (:func:`~auditor.metrics.sanity.downstream_of`) and the block that
    contains ``layer`` (:func:`~auditor.metrics.sanity.target_block`), so that the layer's
    activations are re-drawn too; ``"head"``: only the modules after ``layer``."""
    import functools

    from auditor.cam import compute_cams
    from auditor.metrics.sanity import downstream_of, randomisation_sanity_check

    head = downstream_of(model, layer, images[:2])
    if not head:
        raise ValueError(
            f"no module with parameters runs after the target layer {layer!r}: nothing to randomise"
        )
    res = randomisation_sanity_check(
        model,
        images,
        labels,
        methods,
        layer,
        seed=s.seed,
        head=head,
        randomise=s.sanity_randomise,
        compute=functools.partial(compute_cams, reshape=reshape),
    )
    randomised = next(iter(res.values())).randomised if res else tuple(head)
    return list(randomised), res


def _sanity_record(res: Mapping[str, Any], head: Sequence[str], layer: str) -> SanityCheck:
    """``sanity.json``: each method's similarity, threshold and verdict, and the status
    naming what was randomised."""
    return SanityCheck(
        SanityStatus.ran(_randomised_reason(res, head, layer), tuple(head)),
        {
            m: SanityResult(
                similarity=r.similarity,
                threshold=r.threshold,
                trustworthy=r.trustworthy,
                n=r.n,
                randomised=tuple(r.randomised),
                extra={"randomise": r.randomise},
            )
            for m, r in res.items()
        },
    )


def _randomised_reason(res: Mapping[str, Any], head: Sequence[str], layer: str) -> str:
    """The sanity status's sentence saying what was re-initialised."""
    if any(getattr(r, "randomise", "head") == "cascade" for r in res.values()):
        return (
            f"randomised the {len(head)} module(s) from the logits down to the block that "
            f"contains {layer!r} (cascading randomisation)"
        )
    return f"randomised the {len(head)} module(s) that compute the logits from {layer!r}"


def finalize(run_dir: Path, store: RunStore, **kw: Any) -> AuditOutcome:
    """Deprecated keyword form of :func:`auditor.analysis.finalize.finalize`:
    ``finalize(FinalizeInputs(run_dir=run_dir, store=store, **kw))``."""
    return finalize_inputs(FinalizeInputs(run_dir=run_dir, store=store, **kw))


def write_junit(path: Path, result: AuditResult | Mapping[str, Any]) -> None:
    """Deprecated location: see :func:`auditor.export.write_junit`."""
    from auditor.export import write_junit as _write

    _write(path, result)


def _gpu_decode_decision(dataset: Any, dev: torch.device, indices: list[int]) -> Any | None:
    """``[data] gpu_decode`` decided for this audit (:mod:`auditor.data.gpu_decode`), or None
    for a dataset that is not file-based (a Python :class:`EvalDataset` decodes itself).

    Raises:
        ConfigError: ``gpu_decode = true`` on a device that is not CUDA.
    """
    from auditor.data.gpu_decode import resolve_gpu_decode

    cfg: Any = getattr(dataset, "config", None)
    if not hasattr(dataset, "decode_device") or not hasattr(cfg, "gpu_decode"):
        return None
    setting = cfg.gpu_decode
    first = None
    if setting is not False and dev.type == "cuda" and indices:
        first = dataset.image_bytes(indices[0])
    try:
        return resolve_gpu_decode(
            setting,
            dev,
            first,
            size=tuple(cfg.input_size),
            mode=cfg.resize,
            max_pixels=cfg.max_image_pixels,
        )
    except ValueError as exc:
        msg = str(exc)
        raise ConfigError(msg if "gpu_decode" in msg else f"[data] gpu_decode: {msg}") from exc
