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
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # torch is imported where a model runs: finalize/report never load it
    import torch

from auditor._version import __version__
from auditor.analysis import FindingRules, analyse, evaluate_gates
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
from auditor.audit.status import sample_status
from auditor.audit.store import (
    FAITHFULNESS_COLUMNS,
    INTERVENTION_COLUMNS,
    MAIN_LOCK,
    RunLock,
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    claim_run_dir,
    rows_table,
    samples_schema,
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
from auditor.export import write_findings_csv, write_per_class_csv
from auditor.format import slugify
from auditor.results import (
    AuditResult,
    ClassClusters,
    DatasetInfo,
    Finding,
    GalleryPanel,
    ModelInfo,
    RunInfo,
    SubgroupDetail,
    freeze,
    method_info,
)

log = logging.getLogger("auditor")


@dataclass
class AuditOutcome:
    """What :func:`run_audit` returns: the run directory, the typed result and the verdict."""

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
        import torch

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
        import torch

        return torch.softmax(self.engine.forward_logits(x, autocast=False), dim=1)

    def process(self, batch: Any, batch_no: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
        import torch

        from auditor.metrics import localisation_metrics
        from auditor.metrics.registry import registered_metrics, sample_metric_names

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
        # NaN/Inf logits are no prediction: pred -1 (never argmax's class 0), incorrect,
        # confidence NaN, every metric NaN, status "nonfinite_logits" (counted, and a finding
        # when frequent)
        finite_logits = torch.isfinite(logits).all(1)
        probs = torch.softmax(logits, dim=1)
        tgt = cb.targets.to(self.device)
        pred = torch.where(finite_logits, probs.argmax(1), -1)
        conf = probs.gather(1, tgt.view(-1, 1)).squeeze(1)
        conf = torch.where(finite_logits, conf, float("nan"))
        size = (images.shape[-2], images.shape[-1])
        up = cb.upsampled(size)
        bad_logits = (~finite_logits).cpu().numpy()

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
            "pred_confidence": torch.where(finite_logits, probs.max(1).values, float("nan"))
            .cpu()
            .numpy()
            .astype(np.float64),
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
            # an intervention needs both regions: an empty mask leaves "only the background"
            # equal to the whole image (and "only the object" blank), a mask covering the whole
            # image the reverse; their outcomes would read as background dependence (NaN)
            area = batch.masks.flatten(1).float().mean(1).numpy()
            hm = batch.has_mask.numpy() & (area > 0) & (area < 1)
            for key, x in edited.items():
                p = self._forward_probs(x)
                correct = (p.argmax(1) == labels).cpu().numpy().astype(float)
                cconf = p.gather(1, tgt.view(-1, 1)).squeeze(1).cpu().numpy().astype(np.float64)
                # no outcome where either forward gave non-finite logits (never argmax's 0)
                valid = hm.copy() & ~bad_logits & torch.isfinite(p).all(1).cpu().numpy()
                if key == "mixed_rand":
                    pv = perm.cpu().numpy()
                    valid &= pv >= 0
                    valid &= hm[np.clip(pv, 0, None)]  # the donor background needs a mask too
                iv[f"{key}_correct"] = np.where(valid, correct, np.nan)
                iv[f"{key}_confidence"] = np.where(valid, cconf, np.nan)
                if key == "only_bg":
                    pred_bg = p.argmax(1).cpu().numpy().astype(np.int64)
                    iv["only_bg_pred"] = np.where(valid, pred_bg, -1)

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
        schema = samples_schema(
            sample_metric_names(),
            interventions=s.interventions,
            faithfulness=s.faithfulness_samples > 0,
        )
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
            metrics.update(registered_metrics(up[method], masks, has_mask))
            cols = dict(base)
            cols["method"] = [method] * b
            cam_status = list(cb.status[method])
            cols["status"] = sample_status(status, cam_status, bad_logits)
            cols["cam_status"] = cam_status
            for name, values in metrics.items():
                cols[name] = np.where(bad_logits, np.nan, values.double().cpu().numpy())
            # a fixed schema in every shard: columns of analyses that did not apply are NaN
            if s.interventions:
                for key in INTERVENTION_COLUMNS:
                    cols[key] = iv.get(key, nan_col)
                # the class the background alone is predicted as (-1: not run for the sample)
                cols["only_bg_pred"] = iv.get("only_bg_pred", np.full(b, -1, np.int64))
            if s.faithfulness_samples > 0:
                cols["faithfulness_subset"] = np.isin(
                    np.asarray(batch.indices), np.asarray(sorted(self.faith_subset), dtype=np.int64)
                )
                for key in FAITHFULNESS_COLUMNS:
                    cols[key] = faith.get(method, {}).get(key, nan_col)
            tables.append(rows_table(cols, schema))
            cam = _stored_map(method, cb.cams[method].float())
            peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
            low_res[method] = (cam / peak).cpu().numpy()
        table = pa.concat_tables(tables) if tables else pa.table({})
        return table, low_res


STORED_INPUT_MAP_SIDE = 56
"""Largest side of a stored map of an input-resolution method (``fullgrad``): its maps are
area-averaged (``adaptive_avg_pool2d``) to at most this size in ``shards/cams-*.npz``, so a
224x224 map costs 6 KB per image (float16) rather than 100 KB. Metrics always read the
full-resolution map; the stored one serves the gallery, clusters and ``load_run(...).cams``."""


def _stored_map(method: str, cam: torch.Tensor) -> torch.Tensor:
    """The map kept in the shard: layer-resolution maps as computed, input-resolution maps
    (``CamMethod.resolution == "input"``) area-pooled to :data:`STORED_INPUT_MAP_SIDE`."""
    import torch

    from auditor.cam import METHODS

    h, w = int(cam.shape[-2]), int(cam.shape[-1])
    side = STORED_INPUT_MAP_SIDE
    if METHODS[method].resolution != "input" or max(h, w) <= side:
        return cam
    return torch.nn.functional.adaptive_avg_pool2d(cam[:, None], (min(h, side), min(w, side)))[:, 0]


def raised_by_model(exc: BaseException, model: torch.nn.Module) -> bool:
    """Whether ``exc`` was raised inside the forward of one of ``model``'s module types.

    The traceback is walked for a frame whose ``self`` is an ``nn.Module`` of a type the
    model is made of (the engine may run a copy of the model, so types, not objects, are
    compared). Errors raised elsewhere (cam-auditor's own code) are bugs: not skipped.
    """
    import torch

    types = {type(m) for m in model.modules()}
    return any(
        isinstance(owner, torch.nn.Module) and type(owner) in types
        for owner in _frame_owners(exc)
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
    from auditor.data import open_dataset
    from auditor.models import load_model

    where = cfg.source.name if cfg.source is not None else "<config>"
    check_device_available(cfg.audit.device, "--device" if cfg.audit.device else where)
    dataset = open_dataset(cfg.data)
    # gates naming classes are checked against the dataset's class list before the model loads
    check_gates(cfg.gates, settings=cfg.audit, classes=dataset.classes, source=where)
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
            engine = _build_engine(model, dataset, layer, reshape, s, dev)
            model_info["target_layer"] = ",".join(engine.layer_names)
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
        sanity=sanity,
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
) -> Any:
    """The CAM engine of the audit (target layer auto-detected on a seeded probe batch)."""
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
        found = check_applicability(
            engine, example, len(dataset.classes), s.max_forwards_per_image
        )
        log.info("cost estimate: %s", found.describe())
        return engine
    except AuditorInputError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        # the applicability probe runs the reshape on the real layer output: name the key
        where = "[model] reshape" if reshape is not None and "reshape" in str(exc) else (
            "[model]/[audit]"
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
        "provenance": provenance,
        "started": started.isoformat(timespec="seconds"),
    }
    atomic_write_json(manifest_path(store.shards, spec), manifest)
    return manifest


def _audit_batches(
    worker: _BatchAuditor,
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
    from auditor.data import iter_batches

    failures: list[str] = []
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
                    skip_rows += [
                        {"index": i, "id": sid, "reason": reason} for i, sid in zip(idx, ids)
                    ]
                    rows, cams, ids, idx = pa.table({}), {}, [], []
            else:
                rows, cams = pa.table({}), {}
            store.write_batch(batch_no, rows, cams, ids, idx, skip_rows)
            bar.update(len(batch) + len(batch.skipped))
    finally:
        bar.close()


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
    from auditor.data import open_dataset

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
    dataset = open_dataset(cfg.data)
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
    return finalize(
        root,
        store,
        dataset=dataset,
        classes=list(dataset.classes),
        settings=cfg.audit,
        gates=cfg.gates,
        model_info=dict(first["model"]),
        config=cfg,
        sanity=first.get("sanity"),
        started=started,
        t0=t0,
        loop_s=max(float(m.get("loop_s") or 0.0) for m in manifests),
        pdf=cfg.report.pdf if pdf is None else pdf,
        render=render,
        command=command,
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
        (log.info if "config" in reason else log.warning)("sanity check not run: %s", reason)
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

    def col(name: str) -> np.ndarray:
        """Column ``name`` as float64, nulls NaN (no Python object per sample)."""
        if name not in prim.column_names:
            return np.full(prim.num_rows, np.nan)
        a = pc.fill_null(pc.cast(prim.column(name), pa.float64()), np.nan)
        return np.asarray(a.to_numpy(), float)

    correct = col("correct")
    per_sample = {
        "background_focus": col("background_focus"),
        "border_focus": col("border_focus"),
        "entropy": col("entropy"),
        "correct": correct,
        "only_bg_hit": col("only_bg_correct"),
        "only_fg_drop": correct - col("only_fg_correct"),
    }
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
    from auditor.analysis.streamed import choose_aggregation, count_rows

    s = settings
    t_an = time.perf_counter()
    aggregation = choose_aggregation(
        s.aggregation, count_rows(store.shards, store.batch_numbers()), len(s.methods)
    )
    if aggregation == "streaming":
        return _finalize_streamed(
            run_dir, store, dataset=dataset, classes=classes, settings=s, gates=gates,
            model_info=model_info, config=config, sanity=sanity, started=started, t0=t0,
            loop_s=loop_s, pdf=pdf, render=render, command=command, t_an=t_an,
        )  # fmt: skip
    table = store.read_rows()
    log.info("aggregating %d rows from %s", table.num_rows, store.shards)
    # the primary method's low-resolution CAMs, read once for clusters and gallery (tiny:
    # h×w float32 per sample)
    primary_cams = store.load_cams(s.primary) if table.num_rows else {}
    clusters, membership = _cluster_analysis(
        primary_cams, table, classes, s, tuple(dataset.config.input_size)
    )
    if table.num_rows:
        # `cluster`: the primary method's cluster id within the sample's class (-1: none)
        cl_col = np.asarray(
            [membership.get(int(i), -1) for i in table.column("index").to_pylist()], np.int64
        )
        table = table.append_column("cluster", pa.array(cl_col, pa.int64()))
        store.write_samples(table)
    sanity_clean = {k: v for k, v in (sanity or {}).items() if not k.startswith("_")}
    if table.num_rows:
        result = analyse(
            table,
            classes=classes,
            methods=s.methods,
            settings=s,
            rules=FindingRules(),
            clusters=clusters,
            sanity=sanity_clean,
        )
    else:
        result = AuditResult(methods=tuple(s.methods), primary_method=s.primary)
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
    return _finish(
        run_dir, store, result, prim, h, primary_cams, dataset=dataset, classes=classes,
        settings=s, gates=gates, model_info=model_info, config=config, sanity=sanity,
        started=started, t0=t0, loop_s=loop_s, pdf=pdf, render=render, command=command,
        t_an=t_an, aggregation="exact",
    )  # fmt: skip


def _finalize_streamed(
    run_dir: Path, store: RunStore, *, dataset: Any, classes: Sequence[str],
    settings: AuditSettings, t_an: float, **kw: Any,
) -> AuditOutcome:  # fmt: skip
    """:func:`finalize` reading the shards one at a time (auditor.analysis.streamed)."""
    from auditor.analysis.streamed import StreamedRun

    s = settings
    log.info("aggregating the shards of %s one at a time (streaming)", store.shards)
    streamed = StreamedRun(store, classes=classes, settings=s)
    try:
        slim = streamed.slim
        clusters, membership = _cluster_analysis(
            streamed.cams, slim, classes, s, tuple(dataset.config.input_size)
        )
        if slim.num_rows:
            streamed.write_samples(membership)
            sanity_clean = {k: v for k, v in (kw["sanity"] or {}).items() if not k.startswith("_")}
            result = streamed.analyse(rules=FindingRules(), clusters=clusters, sanity=sanity_clean)
        else:
            result = AuditResult(methods=tuple(s.methods), primary_method=s.primary)
        return _finish(
            run_dir, store, result, slim, streamed.hasher, streamed.cams, dataset=dataset,
            classes=classes, settings=s, t_an=t_an, aggregation="streaming", **kw,
        )  # fmt: skip
    finally:
        streamed.close()


def _finish(
    run_dir: Path,
    store: RunStore,
    result: AuditResult,
    prim: pa.Table,
    h: Any,
    primary_cams: Mapping[int, np.ndarray],
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
    t_an: float,
    aggregation: str,
) -> AuditOutcome:
    """The rest of :func:`finalize` from the analysed result and the primary method's rows
    (provenance, gates, gallery, summary.json, JUnit, CSVs, report)."""
    s = settings
    table = prim
    skipped = store.read_skipped()
    from auditor.cam import METHODS
    from auditor.metrics.registry import METRICS

    for sk in skipped:
        h.update(f"skipped\0{sk['id']}\n".encode())
    annotated = bool(prim.num_rows and any(prim.column("has_mask").to_pylist()))
    n_nonfinite, nonfinite_finding = _nonfinite_finding(prim)
    if nonfinite_finding is not None:
        found = tuple(result.findings)
        nonfinite_finding = replace(nonfinite_finding, id=f"F{len(found) + 1}")
        result = result.replace(findings=(*found, nonfinite_finding))
    finished = datetime.now(timezone.utc)
    result = result.replace(
        tool=freeze({"name": "cam-auditor", "version": __version__}),
        run=RunInfo.from_json(
            {
                "started": started.isoformat(timespec="seconds"),
                "finished": finished.isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - t0, 3),
                "timings": {
                    "audit_loop_s": round(loop_s, 3),
                    "analysis_s": round(time.perf_counter() - t_an, 3),
                },
                "config_sha256": config.sha256 if config else None,
                "aggregation": aggregation,
                "seed": s.seed,
                "device": s.device,
                "command": command,
                "versions": library_versions(),
                "config": to_jsonable(config.raw) if config else to_jsonable(s),
            }
        ),
        title=config.report.title if config else "Model attention audit",
        model=ModelInfo.from_json(model_info),
        dataset=DatasetInfo.from_json(
            {
                "name": getattr(dataset.config, "source", None)
                and Path(str(dataset.config.manifest or dataset.config.root)).name,
                "format": dataset.config.format,
                "sha256": h.hexdigest(),
                "annotation_sha256": dataset.annotation_sha256(),
                "n_samples": len(dataset),
                "n_evaluated": int(prim.num_rows),
                "n_skipped": len(skipped),
                "n_nonfinite_logits": n_nonfinite,
                "annotated": annotated,
                "input_size": list(dataset.config.input_size),
                "classes": list(classes),
                "skipped": [{"id": sk["id"], "reason": sk["reason"]} for sk in skipped],
            }
        ),
        methods_info=MappingProxyType({m: method_info(METHODS[m]) for m in s.methods}),
        metrics_info=MappingProxyType(dict(METRICS)),
        settings=freeze(to_jsonable(s)),
        sanity_status=freeze(
            (sanity or {}).get("_status") or {"run": False, "reason": "not run", "randomised": []}
        ),
    )
    from auditor.analysis.groups.run import attach_groups, group_gates

    result = attach_groups(
        run_dir, result, data_config=dataset.config, classes=classes, settings=s,
        min_group_size=config.report.min_group_size if config else 10,
    )  # fmt: skip
    result = result.replace(gates=group_gates(result, evaluate_gates(result, gates), gates))
    result = _gallery(run_dir, primary_cams, dataset, table, result, s)
    atomic_write_json(run_dir / "summary.json", result.to_json())
    write_junit(run_dir / "junit.xml", result)
    write_per_class_csv(result, run_dir / "classes.csv")
    write_findings_csv(result, run_dir / "findings.csv")
    if result.dataset.n_evaluated == 0:
        reasons = "; ".join(f"{d['id']}: {d['reason']}" for d in result.dataset.skipped[:3])
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
    return AuditOutcome(run_dir=run_dir, result=result, passed=result.passed, report=report)


def _gallery(
    run_dir: Path,
    cams: Mapping[int, np.ndarray],
    dataset: Any,
    table: pa.Table,
    result: AuditResult,
    s: AuditSettings,
) -> AuditResult:
    """Draw the gallery panels chosen by :func:`auditor.analysis.gallery.choose_gallery` and
    the cluster exemplar panels; return the result with ``gallery`` and the clusters'
    ``gallery`` files filled in."""
    from auditor.analysis.gallery import choose_gallery
    from auditor.report import cluster_panel, gallery_panel

    if table.num_rows == 0 or s.gallery_per_class == 0:
        return result
    from auditor.progress import phase

    phase("gallery", "example panels per class")
    gdir = run_dir / "gallery"
    gdir.mkdir(exist_ok=True)
    out: dict[str, tuple[GalleryPanel, ...]] = {}
    for cname, picks in choose_gallery(result, table, s.gallery_per_class).items():
        entries = []
        for rank, pick in enumerate(picks):
            if pick.index not in cams:
                continue
            image, mask = dataset.load_display(pick.index)
            bfv = pick.panel.background_focus
            png = gallery_panel(
                image,
                mask,
                cams[pick.index],
                title=pick.panel.id,
                subtitle=f"label {cname} · predicted {pick.panel.pred} · background focus {bfv:.0%}"
                if bfv is not None
                else "",
            )
            fname = f"gallery/{slugify(cname)}-{rank}.png"
            atomic_write_bytes(run_dir / fname, png)
            entries.append(replace(pick.panel, file=fname))
        out[cname] = tuple(entries)
    # cluster exemplar panels
    prim = table.filter(pc.equal(table.column("method"), s.primary))
    # only the ids drawn below are looked up (a dict of every id is ~270 MB at 1M samples)
    wanted_ids: set[str] = set()
    for f in result.findings:
        if f.kind == "background_sufficiency" and f.cls is not None:
            wanted_ids.update(map(str, f.examples))
    for res in (result.clusters or {}).values():
        for cl in res.clusters:
            wanted_ids.update(map(str, cl.exemplars))
        for sg in res.subgroups or ():
            wanted_ids.update(map(str, sg.exemplars))
            wanted_ids.update(map(str, sg.rest_exemplars))
    hits = prim.filter(
        pc.is_in(
            pc.cast(prim.column("id"), pa.string()),
            value_set=pa.array(sorted(wanted_ids), pa.string()),
        )
    )
    id_to_index = {
        str(a): int(b)
        for a, b in zip(hits.column("id").to_pylist(), hits.column("index").to_pylist())
    }
    # background-sufficiency findings: the images whose background alone is called the class
    names = list(result.dataset.classes) or list(result.classes)
    id_to_pred = dict(zip(map(str, hits.column("id").to_pylist()), hits.column("pred").to_pylist()))
    for f in result.findings:
        if f.kind != "background_sufficiency" or f.cls is None:
            continue
        have = {g.id for g in out.get(f.cls, ())}
        extra_panels: list[GalleryPanel] = []
        for k, sid in enumerate([e for e in f.examples if e not in have][:4]):
            i = id_to_index.get(sid)
            if i is None or i not in cams:
                continue
            image, mask = dataset.load_display(i)
            png = gallery_panel(
                image,
                mask,
                cams[i],
                title=sid,
                subtitle=f"label {f.cls} · background alone predicted '{f.cls}'",
            )
            fname = f"gallery/{slugify(f.cls)}-sufficiency-{k}.png"
            atomic_write_bytes(run_dir / fname, png)
            extra_panels.append(
                GalleryPanel(
                    id=sid,
                    file=fname,
                    label=f.cls,
                    pred=names[int(id_to_pred[sid])]
                    if 0 <= int(id_to_pred.get(sid, -1)) < len(names)
                    else None,
                    why="background alone predicted as the class",
                )
            )
        if extra_panels:
            out[f.cls] = tuple(out.get(f.cls, ())) + tuple(extra_panels)
    clusters: dict[str, ClassClusters] = {}
    for cname, res in (result.clusters or {}).items():
        if len(res.clusters) < 2:
            clusters[cname] = res
            continue
        drawn = []
        for pos, cl in enumerate(res.clusters):
            wanted = [id_to_index[e] for e in cl.exemplars if e in id_to_index][:4]
            ex = [(dataset.load_display(i)[0], cams[i]) for i in wanted if i in cams]
            if pos >= 6 or not ex:
                drawn.append(cl)
                continue
            mean_map = np.mean([c for _, c in ex], axis=0)
            png = cluster_panel(mean_map, ex, title=f"{cname}: cluster {cl.id} ({cl.size} images)")
            fname = f"gallery/cluster-{slugify(cname)}-{cl.id}.png"
            atomic_write_bytes(run_dir / fname, png)
            drawn.append(replace(cl, gallery=(fname,)))
        clusters[cname] = replace(
            res,
            clusters=tuple(drawn),
            subgroups=_subgroup_panels(run_dir, cname, res.subgroups, id_to_index, dataset, cams),
        )
    return result.replace(
        gallery=MappingProxyType(out),
        clusters=MappingProxyType(clusters) if result.clusters is not None else None,
    )


def _nonfinite_finding(prim: pa.Table) -> tuple[int, Finding | None]:
    """Samples whose logits were NaN/Inf, and a finding when they are >= 1 % of the run."""
    if not prim.num_rows or "status" not in prim.column_names:
        return 0, None
    status = np.asarray(prim.column("status").to_pylist(), dtype=object)
    bad = status == "nonfinite_logits"
    n_bad, n = int(bad.sum()), int(prim.num_rows)
    if n_bad == 0 or n_bad / n < 0.01:
        return n_bad, None
    ids = [str(x) for x in np.asarray(prim.column("id").to_pylist(), dtype=object)[bad][:20]]
    return n_bad, Finding(
        kind="nonfinite_logits",
        severity="high" if n_bad / n >= 0.05 else "medium",
        title="The model returned NaN/Inf logits",
        message=(
            f"{n_bad} of {n} images ({n_bad / n:.0%}) got NaN/Inf logits from the model: "
            "no prediction, no map; they count as incorrect and their metrics are NaN"
        ),
        cls=None,
        evidence={"n": n_bad, "share": n_bad / n, "ids": ids},
        examples=tuple(ids[:4]),
    )


def _subgroup_panels(
    run_dir: Path,
    cname: str,
    subgroups: Sequence[SubgroupDetail] | None,
    id_to_index: Mapping[str, int],
    dataset: Any,
    cams: Mapping[int, np.ndarray],
) -> tuple[SubgroupDetail, ...] | None:
    """Draw each subgroup's exemplars and, beside them, the rest of its class's exemplars;
    return the subgroups with each ``gallery`` [members, rest] filled."""
    from auditor.report import cluster_panel

    if not subgroups:
        return None if subgroups is None else tuple(subgroups)
    out = []
    for sg in subgroups:
        files: list[str] = []
        for part, wanted_ids in (("members", sg.exemplars), ("rest", sg.rest_exemplars)):
            wanted = [id_to_index[e] for e in wanted_ids if e in id_to_index][:4]
            ex = [(dataset.load_display(i)[0], cams[i]) for i in wanted if i in cams]
            if not ex:
                continue
            n = sg.size if part == "members" else sg.class_size - sg.size
            title = (
                f"{cname}: subgroup, {n} images" if part == "members" else f"{cname}: the rest, {n}"
            )
            png = cluster_panel(np.mean([c for _, c in ex], axis=0), ex, title=title)
            fname = f"gallery/subgroup-{slugify(cname)}-{sg.cluster}-{part}.png"
            atomic_write_bytes(run_dir / fname, png)
            files.append(fname)
        out.append(replace(sg, gallery=tuple(files)))
    return tuple(out)


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
