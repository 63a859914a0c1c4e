"""One batch of the audit loop: images → the samples rows of every method + low-resolution maps.

:class:`BatchAuditor` does one job per step, in this order:

1. :meth:`~BatchAuditor._predict`: ONE capture (``auditor.cam.CamEngine``): logits →
   prediction, confidence, the non-finite-logits flag, the maps upsampled to the input;
2. :meth:`~BatchAuditor._base_columns`: the per-sample columns every method's rows share;
3. :meth:`~BatchAuditor._interventions`: only-foreground / only-background / mixed-random
   backgrounds (Xiao et al. 2021), three inference forwards;
4. :meth:`~BatchAuditor._faithfulness`: deletion/insertion and average drop on the seeded
   subset (Petsiuk et al. 2018; Chattopadhay et al. 2018);
5. :meth:`~BatchAuditor._method_rows`: localisation (+ ``@metric``) metrics per method, the
   fixed row schema, the stored low-resolution map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from auditor.audit.status import sample_status
from auditor.audit.store import (
    ALTERNATIVE_FILL_COLUMNS,
    FAITHFULNESS_COLUMNS,
    INTERVENTION_COLUMNS,
    rows_table,
)
from auditor.config import AuditSettings
from auditor.errors import AuditorInputError

if TYPE_CHECKING:  # torch is imported where a model runs
    import torch

__all__ = ["STORED_INPUT_MAP_SIDE", "BatchAuditor", "BatchAuditorBase", "stored_map"]

STORED_INPUT_MAP_SIDE = 56
"""Largest side of a stored map of an input-resolution method (``fullgrad``): its maps are
area-averaged (``adaptive_avg_pool2d``) to at most this size in ``shards/cams-*.npz``, so a
224x224 map costs 6 KB per image (float16) rather than 100 KB. Metrics always read the
full-resolution map; the stored one serves the gallery, clusters and ``load_run(...).cams``."""


@dataclass(frozen=True)
class _Predicted:
    """The capture of one batch and what the rows read from it (all on the device)."""

    capture: Any  # the engine's CapturedBatch: .cams, .status, .targets, .logits
    up: Any  # {method: maps [B, H, W] at the input's size}
    targets: torch.Tensor  # [B] the class explained per sample
    pred: torch.Tensor  # [B] argmax, -1 where the logits were not finite
    conf: torch.Tensor  # [B] probability of the target class (NaN: non-finite logits)
    probs: torch.Tensor  # [B, C] softmax of the logits
    finite: torch.Tensor  # [B] bool: every logit finite
    bad_logits: np.ndarray  # [B] bool (host): some logit NaN/Inf


class BatchAuditorBase:
    """What every batch processor holds: the model, its CAM engine, the ``[audit]`` settings,
    the class names, the device and the input normalisation (``mean``/``std`` as ``[C]``
    float32 tensors on the device, for fills given in pixel units)."""

    def __init__(
        self,
        model: torch.nn.Module,
        engine: Any,
        settings: AuditSettings,
        classes: Sequence[str],
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        import torch

        self.model = model
        self.engine = engine
        self.s = settings
        self.classes = list(classes)
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)


class BatchAuditor(BatchAuditorBase):
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
        super().__init__(model, engine, settings, classes, device, mean, std)
        self.faith_subset = faith_subset

    def _forward_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of an inference forward (on the engine's validated copy)."""
        import torch

        return torch.softmax(self.engine.forward_logits(x, autocast=False), dim=1)

    def process(self, batch: Any, batch_no: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """The rows (one per sample × method, :func:`auditor.audit.store.samples_schema`) and
        ``{method: low-resolution maps [B, h, w] / their peak}`` of ``batch``."""
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        masks = batch.masks.to(self.device, non_blocking=True)
        pr = self._predict(images, labels)
        base = self._base_columns(batch, pr, labels)
        iv = self._interventions(batch, batch_no, images, masks, labels, pr)
        faith = self._faithfulness(batch, images, pr)
        return self._method_rows(batch, masks, base, iv, faith, pr)

    def _predict(self, images: torch.Tensor, labels: torch.Tensor) -> _Predicted:
        """ONE capture of the batch; its logits give prediction and confidence.

        NaN/Inf logits are no prediction: pred -1 (never argmax's class 0), incorrect,
        confidence NaN, every metric NaN, status "nonfinite_logits" (counted, and a finding
        when frequent).
        """
        import torch

        n_cls = len(self.classes)
        targets: Any = labels if self.s.target == "label" else "predicted"
        with self.engine:
            cb = self.engine.run(images, targets)
        logits = cb.logits.float()
        if logits.shape[1] != n_cls:
            raise AuditorInputError(
                f"the model returns {logits.shape[1]} logits but the dataset has {n_cls} "
                f"classes ({', '.join(self.classes[:5])}…): set [data] classes or "
                f"[model] num_classes to match"
            )
        finite = torch.isfinite(logits).all(1)
        probs = torch.softmax(logits, dim=1)
        tgt = cb.targets.to(self.device)
        pred = torch.where(finite, probs.argmax(1), -1)
        conf = probs.gather(1, tgt.view(-1, 1)).squeeze(1)
        conf = torch.where(finite, conf, float("nan"))
        up = cb.upsampled((images.shape[-2], images.shape[-1]))
        bad = (~finite).cpu().numpy()
        return _Predicted(cb, up, tgt, pred, conf, probs, finite, bad)

    def _base_columns(self, batch: Any, pr: _Predicted, labels: torch.Tensor) -> dict[str, Any]:
        """The per-sample columns shared by every method's rows."""
        import torch

        from auditor.audit.probabilities import probability_columns

        base = {
            "index": np.asarray(batch.indices, np.int64),
            "id": list(batch.ids),
            "label": batch.labels.numpy().astype(np.int64),
            "label_name": [self.classes[i] for i in batch.labels.tolist()],
            "target": pr.targets.cpu().numpy().astype(np.int64),
            "pred": pr.pred.cpu().numpy().astype(np.int64),
            "correct": (pr.pred == labels).cpu().numpy(),
            "confidence": pr.conf.cpu().numpy().astype(np.float64),
            "pred_confidence": torch.where(pr.finite, pr.probs.max(1).values, float("nan"))
            .cpu()
            .numpy()
            .astype(np.float64),
            **probability_columns(pr.probs, labels, pr.finite),  # issue 24: group AUROC
            "has_mask": batch.has_mask.numpy(),
            "mask_area": batch.masks.flatten(1).float().mean(1).numpy().astype(np.float64),
            "image_sha256": list(batch.image_sha256),
            "mask_sha256": [m or "" for m in batch.mask_sha256],
            "notes": ["; ".join(n) for n in batch.notes],
        }
        base["mask_area"] = np.where(base["has_mask"], base["mask_area"], np.nan)
        return base

    def _interventions(
        self,
        batch: Any,
        batch_no: int,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        pr: _Predicted,
    ) -> dict[str, np.ndarray]:
        """Three inference forwards on edited images (Xiao et al. 2021): only the object, only
        the background, the object on another sample's background; NaN where not defined."""
        import torch

        s = self.s
        if not (s.interventions and bool(batch.has_mask.any())):
            return {}
        from auditor.metrics.interventions import mixed_random, only_background, only_foreground

        fill_value = (-self.mean / self.std) if s.intervention_fill == "black" else None
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + batch_no)
        fill = s.intervention_fill
        edited = {
            "only_fg": only_foreground(images, masks, fill=fill, fill_value=fill_value),
            "only_bg": only_background(images, masks, fill=fill, fill_value=fill_value),
        }
        mixed, perm = mixed_random(images, masks, g)
        edited["mixed_rand"] = mixed
        # an intervention needs both regions: an empty mask leaves "only the background"
        # equal to the whole image (and "only the object" blank), a mask covering the whole
        # image the reverse; their outcomes would read as background dependence (NaN)
        area = batch.masks.flatten(1).float().mean(1).numpy()
        hm = batch.has_mask.numpy() & (area > 0) & (area < 1)
        iv: dict[str, np.ndarray] = {}
        for key, x in edited.items():
            p = self._forward_probs(x)
            correct = (p.argmax(1) == labels).cpu().numpy().astype(float)
            cconf = p.gather(1, pr.targets.view(-1, 1)).squeeze(1).cpu().numpy().astype(np.float64)
            # no outcome where either forward gave non-finite logits (never argmax's 0)
            valid = hm.copy() & ~pr.bad_logits & torch.isfinite(p).all(1).cpu().numpy()
            if key == "mixed_rand":
                pv = perm.cpu().numpy()
                valid &= pv >= 0
                valid &= hm[np.clip(pv, 0, None)]  # the donor background needs a mask too
            iv[f"{key}_correct"] = np.where(valid, correct, np.nan)
            iv[f"{key}_confidence"] = np.where(valid, cconf, np.nan)
            if key in ("only_bg", "only_fg"):
                pred_edit = p.argmax(1).cpu().numpy().astype(np.int64)
                iv[f"{key}_pred"] = np.where(valid, pred_edit, -1)
        if s.intervention_alternatives:
            iv.update(self._alternative_fills(images, masks, hm & ~pr.bad_logits, batch_no))
        return iv

    def _alternative_fills(
        self, images: torch.Tensor, masks: torch.Tensor, ok: np.ndarray, batch_no: int
    ) -> dict[str, np.ndarray]:
        """The predicted class of the only-bg / only-fg images under each alternative fill
        (:data:`auditor.metrics.interventions.ALTERNATIVE_FILLS` other than the configured
        one); -1 where not run. Read by :mod:`auditor.analysis.fill_choice` when the
        configured fill collapses (issue 22). Two inference forwards per fill."""
        import torch

        from auditor.metrics.interventions import (
            ALTERNATIVE_FILLS,
            only_background,
            only_foreground,
        )

        out: dict[str, np.ndarray] = {}
        seed = self.s.seed * 1_000_003 + batch_no
        for fill in ALTERNATIVE_FILLS:
            if fill == self.s.intervention_fill:
                continue
            for key, edit in (("only_bg", only_background), ("only_fg", only_foreground)):
                p = self._forward_probs(edit(images, masks, fill=fill, seed=seed))
                valid = ok & torch.isfinite(p).all(1).cpu().numpy()
                pred = p.argmax(1).cpu().numpy().astype(np.int64)
                out[f"{key}_pred_{fill}"] = np.where(valid, pred, -1)
        return out

    def _faithfulness(
        self, batch: Any, images: torch.Tensor, pr: _Predicted
    ) -> dict[str, dict[str, np.ndarray]]:
        """Deletion/insertion and average drop (Petsiuk et al. 2018; Chattopadhay et al. 2018)
        of the batch's samples in the seeded subset: ``{method: {column: [B]}}``."""
        sel = [j for j, i in enumerate(batch.indices) if i in self.faith_subset]
        if not sel:
            return {}
        from auditor.metrics.faithfulness import faithfulness_metrics

        res = faithfulness_metrics(
            self.model,
            images,
            pr.up,
            pr.targets,
            steps=self.s.faithfulness_steps,
            subset=sel,
            forward_batch_size=max(64, self.s.score_batch_size or 0),
        )
        return {
            m: {k: v.cpu().numpy().astype(np.float64) for k, v in d.items()} for m, d in res.items()
        }

    def _method_rows(
        self,
        batch: Any,
        masks: torch.Tensor,
        base: dict[str, Any],
        iv: dict[str, np.ndarray],
        faith: dict[str, dict[str, np.ndarray]],
        pr: _Predicted,
    ) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """Per method: the localisation and ``@metric`` metrics, the rows in the fixed schema
        and the stored low-resolution map (divided by its peak)."""
        from auditor.audit.store import samples_schema
        from auditor.metrics import localisation_metrics
        from auditor.metrics.registry import registered_metrics, sample_metric_names

        s, b = self.s, len(batch)
        has_mask = batch.has_mask.to(self.device, non_blocking=True)
        schema = samples_schema(
            sample_metric_names(),
            interventions=s.interventions,
            faithfulness=s.faithfulness_samples > 0,
        )
        nan_col = np.full(b, np.nan)
        tables = []
        low_res: dict[str, np.ndarray] = {}
        for method in s.methods:
            metrics, status = localisation_metrics(
                pr.up[method],
                masks,
                has_mask=has_mask,
                pointing_tolerance=s.pointing_tolerance,
                iou_threshold=s.iou_threshold,
                border_width=s.border_width,
            )
            metrics.update(registered_metrics(pr.up[method], masks, has_mask))
            cols = dict(base)
            cols["method"] = [method] * b
            cam_status = list(pr.capture.status[method])
            cols["status"] = sample_status(status, cam_status, pr.bad_logits)
            cols["cam_status"] = cam_status
            for name, values in metrics.items():
                cols[name] = np.where(pr.bad_logits, np.nan, values.double().cpu().numpy())
            # a fixed schema in every shard: columns of analyses that did not apply are NaN
            if s.interventions:
                for key in INTERVENTION_COLUMNS:
                    cols[key] = iv.get(key, nan_col)
                # the class the background alone is predicted as (-1: not run for the sample)
                cols["only_bg_pred"] = iv.get("only_bg_pred", np.full(b, -1, np.int64))
                for key in ALTERNATIVE_FILL_COLUMNS:  # only_fg_pred and the alternative fills
                    cols[key] = iv.get(key, np.full(b, -1, np.int64))
            if s.faithfulness_samples > 0:
                cols["faithfulness_subset"] = np.isin(
                    np.asarray(batch.indices), np.asarray(sorted(self.faith_subset), dtype=np.int64)
                )
                for key in FAITHFULNESS_COLUMNS:
                    cols[key] = faith.get(method, {}).get(key, nan_col)
            tables.append(rows_table(cols, schema))
            cam = stored_map(method, pr.capture.cams[method].float())
            peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
            low_res[method] = (cam / peak).cpu().numpy()
        table = pa.concat_tables(tables) if tables else pa.table({})
        return table, low_res


def stored_map(method: str, cam: torch.Tensor) -> torch.Tensor:
    """The map kept in the shard: layer-resolution maps as computed, input-resolution maps
    (``CamMethod.resolution == "input"``) area-pooled to :data:`STORED_INPUT_MAP_SIDE`."""
    import torch

    from auditor.cam import METHODS

    h, w = int(cam.shape[-2]), int(cam.shape[-1])
    side = STORED_INPUT_MAP_SIDE
    if METHODS[method].resolution != "input" or max(h, w) <= side:
        return cam
    return torch.nn.functional.adaptive_avg_pool2d(cam[:, None], (min(h, side), min(w, side)))[:, 0]
