"""The multi-label batch: one explanation per (image, label) from ONE shared capture (issue 26).

A sigmoid head (``[model] output = "sigmoid"``) scores every label independently:
``p_l = sigmoid(z_l)``; a label is predicted present when ``p_l >= [audit] threshold``.
Per batch the engine runs ONE capture forward with the targets ``[B, L]`` (every label of
every image: the engine's multi-target path, one partial backward per label) and returns
``L`` maps per image. Rows are written for every (image, label) pair, so that each label's
AUROC and average precision see every image's score:

* ``explained = "positive"``: the image carries the label; its map is measured against THAT
  label's mask (``energy_in_mask`` etc.), the interventions keep/remove that label's object
  and record the label's probability (only-object, only-background, mixed background);
* ``explained = "negative"``: one of the ``[audit] explain_negatives`` highest-scoring labels
  the image does NOT carry (false-positive evidence: where the model looks when it wrongly
  scores the label); its localisation metrics use the image's union mask when there is one;
* ``explained = ""``: the other labels: the score is kept for the statistics, the map is not
  stored.

Row keys: ``index = image_index * L + label``, ``id = "<image id>#<label>"`` (unique: the run
store, clusters and gallery stay keyed as for a classifier); ``image_index``, ``image_id``,
``positive``, ``explained`` and ``label_set`` are the additive columns
(:data:`MULTILABEL_COLUMNS`). ``correct`` is ``(p >= threshold) == positive``; ``pred`` is the
label when predicted present, else -1; ``confidence`` and ``pred_confidence`` are ``p``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from auditor.audit.batch import BatchAuditorBase
from auditor.audit.status import sample_status
from auditor.audit.store import (
    ALTERNATIVE_FILL_COLUMNS,
    INTERVENTION_COLUMNS,
    rows_table,
    samples_schema,
)
from auditor.errors import AuditorInputError

if TYPE_CHECKING:
    import torch

    from auditor.config import AuditSettings

__all__ = ["MULTILABEL_COLUMNS", "MultiLabelBatchAuditor", "multilabel_schema"]

#: Additive ``samples.parquet`` columns of a multi-label run (name, type, meaning).
MULTILABEL_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("image_index", pa.int64(), "position of the image in the dataset"),
    ("image_id", pa.string(), "id of the image (``id`` is ``<image id>#<label>``)"),
    ("positive", pa.bool_(), "the image carries the row's label"),
    ("explained", pa.string(), "'positive', 'negative' (a top-scoring absent label) or ''"),
    ("label_set", pa.string(), "the image's labels, ';'-separated"),
)


def multilabel_schema(metrics: Sequence[str], *, interventions: bool) -> pa.Schema:
    """A multi-label run's shard schema: the classifier's + :data:`MULTILABEL_COLUMNS`."""
    base = samples_schema(metrics, interventions=interventions, faithfulness=False)
    for name, kind, _ in MULTILABEL_COLUMNS:
        base = base.append(pa.field(name, kind))
    return base


def _require_label_sets(batch: Any) -> None:
    """A sigmoid run's batch must carry label sets (refused otherwise, never guessed)."""
    if batch.label_sets is None:
        raise AuditorInputError(
            '[model] output = "sigmoid" needs a multi-label dataset (label sets); this '
            "batch has single labels (open it with auditor.data.multilabel)"
        )


class MultiLabelBatchAuditor(BatchAuditorBase):
    """Turns one multi-label :class:`auditor.data.Batch` into rows and low-resolution maps.

    The same interface as the classifier's batch processor (``process``), plus
    :meth:`cam_keys`: the ids and indices of the stored maps of the last batch.
    """

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
        super().__init__(model, engine, settings, classes, device, mean, std)
        self._keys: tuple[list[str], list[int]] = ([], [])

    def cam_keys(self, batch: Any) -> tuple[list[str], list[int]]:
        """Row ids and indices of the maps :meth:`process` returned for ``batch``."""
        return self._keys

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-label sigmoid probabilities of an inference forward, in batches."""
        import torch

        out = []
        step = max(1, self.s.batch_size)
        for k in range(0, x.shape[0], step):
            logits = self.engine.forward_logits(x[k : k + step], autocast=False).float()
            out.append(torch.sigmoid(logits))
        return torch.cat(out) if out else torch.zeros((0, len(self.classes)), device=x.device)

    def _explained(self, sets: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``[B, L]`` strings: 'positive', 'negative' (top-k absent labels by score) or ''."""
        out = np.where(sets, "positive", "").astype(object)
        k = self.s.explain_negatives
        if k:
            for j in range(sets.shape[0]):
                neg = np.flatnonzero(~sets[j])
                order = neg[np.argsort(-np.nan_to_num(probs[j, neg], nan=-1.0), kind="stable")]
                out[j, order[:k]] = "negative"
        return out

    def _interventions(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, batch_no: int
    ) -> dict[str, np.ndarray]:
        """Only-object / only-background / mixed-background probability of each pair's label
        (Xiao et al. 2021, with that label's mask); ``*_correct`` = ``p >= threshold``."""
        import torch

        from auditor.metrics.interventions import mixed_random, only_background, only_foreground

        s = self.s
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
        area = masks.flatten(1).float().mean(1).cpu().numpy()
        ok = (area > 0) & (area < 1)
        out: dict[str, np.ndarray] = {}
        if s.intervention_alternatives:
            out.update(self._alternative_fills(images, masks, labels, ok, batch_no))
        for key, x in edited.items():
            p = self._probs(x).gather(1, labels.view(-1, 1)).squeeze(1).cpu().numpy()
            valid = ok & np.isfinite(p)
            if key == "mixed_rand":
                pv = perm.cpu().numpy()
                valid &= (pv >= 0) & ok[np.clip(pv, 0, None)]
            out[f"{key}_correct"] = np.where(valid, (p >= s.threshold).astype(float), np.nan)
            out[f"{key}_confidence"] = np.where(valid, p.astype(np.float64), np.nan)
        return out

    def _alternative_fills(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        ok: np.ndarray,
        batch_no: int,
    ) -> dict[str, np.ndarray]:
        """Each pair's label under the alternative fills (:data:`auditor.metrics.
        interventions.ALTERNATIVE_FILLS` other than the configured one), only-background and
        only-object: the label's index when predicted present (``p >= [audit] threshold``),
        ``L`` (the number of labels: absent) when not, -1 where not run. Read by
        :mod:`auditor.analysis.multilabel_fills` when the configured fill collapses. Two
        inference forwards per fill."""
        from auditor.metrics.interventions import (
            ALTERNATIVE_FILLS,
            only_background,
            only_foreground,
        )

        out: dict[str, np.ndarray] = {}
        seed = self.s.seed * 1_000_003 + batch_no
        lab = labels.cpu().numpy().astype(np.int64)
        absent = len(self.classes)
        for fill in ALTERNATIVE_FILLS:
            if fill == self.s.intervention_fill:
                continue
            for key, edit in (("only_bg", only_background), ("only_fg", only_foreground)):
                x = edit(images, masks, fill=fill, seed=seed)
                p = self._probs(x).gather(1, labels.view(-1, 1)).squeeze(1).cpu().numpy()
                pred = np.where(p >= self.s.threshold, lab, absent)
                out[f"{key}_pred_{fill}"] = np.where(ok & np.isfinite(p), pred, -1)
        return out

    def process(self, batch: Any, batch_no: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
        import torch

        from auditor.metrics import localisation_metrics
        from auditor.metrics.registry import registered_metrics, sample_metric_names

        _require_label_sets(batch)
        s, n_lab = self.s, len(self.classes)
        b = len(batch)
        images = batch.images.to(self.device)
        targets = torch.arange(n_lab, device=self.device).expand(b, n_lab)
        with self.engine:
            cb = self.engine.run(images, targets)
        logits = cb.logits.float()
        if logits.shape[1] != n_lab:
            raise AuditorInputError(
                f"the model returns {logits.shape[1]} logits but the dataset has {n_lab} labels "
                f"({', '.join(self.classes[:5])}…): set [data] classes or [model] num_classes"
            )
        finite = torch.isfinite(logits).all(1).cpu().numpy()
        probs = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
        probs[~finite] = np.nan
        sets = batch.label_sets.numpy()
        explained = self._explained(sets, probs)
        # pair p = (image j, label l), row-major: p = j * L + l
        lmasks = batch.label_masks.reshape(b * n_lab, *batch.label_masks.shape[-2:])
        lhas = batch.label_has_mask.reshape(-1).numpy()
        union_m = batch.masks.repeat_interleave(n_lab, 0)
        union_h = batch.has_mask.numpy().repeat(n_lab)
        pos = sets.reshape(-1)
        # positives: the label's own mask; others: the image's union mask (where the model
        # looks when it scores an absent label, against where the objects are)
        use_own = pos & lhas
        masks = torch.where(torch.from_numpy(use_own)[:, None, None], lmasks, union_m)
        has = np.where(pos, lhas, union_h)
        masks_d, has_d = masks.to(self.device), torch.from_numpy(has).to(self.device)
        base = self._pair_columns(batch, probs, sets, explained, masks, has)
        p_flat = base["confidence"]
        j_of = np.repeat(np.arange(b), n_lab)
        l_of = np.tile(np.arange(n_lab), b)
        iv = self._positive_interventions(images, masks, pos & has, l_of, j_of, batch_no)
        bad = np.repeat(~finite, n_lab)
        schema = multilabel_schema(sample_metric_names(), interventions=s.interventions)
        size = (images.shape[-2], images.shape[-1])
        keep = np.flatnonzero(explained.reshape(-1) != "")
        tables, low_res = [], {}
        for method in s.methods:
            cam = cb.cams[method].float().reshape(b * n_lab, *cb.cams[method].shape[-2:])
            up = _upsample(cam, size)
            metrics, status = localisation_metrics(
                up,
                masks_d,
                has_mask=has_d,
                pointing_tolerance=s.pointing_tolerance,
                iou_threshold=s.iou_threshold,
                border_width=s.border_width,
            )
            metrics.update(registered_metrics(up, masks_d, has_d))
            cols = dict(base)
            cols["method"] = [method] * len(p_flat)
            cam_status = list(cb.status[method])
            cols["status"] = sample_status(status, cam_status, bad)
            cols["cam_status"] = cam_status
            for name, values in metrics.items():
                cols[name] = np.where(bad, np.nan, values.double().cpu().numpy())
            if s.interventions:  # (see _positive_interventions)
                for key in (*INTERVENTION_COLUMNS, "only_bg_pred", *ALTERNATIVE_FILL_COLUMNS):
                    cols[key] = iv[key]
            tables.append(rows_table(cols, schema))
            kept = _stored_map(method, cam[torch.from_numpy(keep).to(cam.device)])
            peak = kept.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1) if len(keep) else 1.0
            low_res[method] = (kept / peak).cpu().numpy()
        self._keys = ([base["id"][int(k)] for k in keep], [int(base["index"][k]) for k in keep])
        return pa.concat_tables(tables), low_res

    def _pair_columns(
        self,
        batch: Any,
        probs: np.ndarray,
        sets: np.ndarray,
        explained: np.ndarray,
        masks: torch.Tensor,
        has: np.ndarray,
    ) -> dict[str, Any]:
        """The method-independent columns of one row per (image j, label l), p = j * L + l."""
        b, n_lab = len(batch), len(self.classes)
        pos = sets.reshape(-1)
        p_flat = probs.reshape(-1)
        j_of = np.repeat(np.arange(b), n_lab)
        l_of = np.tile(np.arange(n_lab), b)
        img_idx = np.asarray(batch.indices, np.int64)[j_of]
        names = [self.classes[int(x)] for x in l_of]
        img_ids = [batch.ids[int(j)] for j in j_of]
        predicted = p_flat >= self.s.threshold
        return {
            "index": img_idx * n_lab + l_of,
            "id": [f"{i}#{n}" for i, n in zip(img_ids, names)],
            "label": l_of.astype(np.int64),
            "label_name": names,
            "target": l_of.astype(np.int64),
            "pred": np.where(predicted, l_of, -1).astype(np.int64),
            "correct": np.where(np.isfinite(p_flat), predicted == pos, False),
            "confidence": p_flat,
            "pred_confidence": p_flat,
            "label_confidence": p_flat,
            # the single-label ranking of exclusive classes: not written (null) for sigmoid rows
            "top_classes": [None] * len(p_flat),
            "top_probs": [None] * len(p_flat),
            "has_mask": has,
            "mask_area": np.where(has, masks.flatten(1).float().mean(1).numpy(), np.nan),
            "image_sha256": [batch.image_sha256[int(j)] for j in j_of],
            "mask_sha256": [batch.mask_sha256[int(j)] or "" for j in j_of],
            "notes": ["; ".join(batch.notes[int(j)]) for j in j_of],
            "image_index": img_idx,
            "image_id": img_ids,
            "positive": pos,
            "explained": [str(e) for e in explained.reshape(-1)],
            "label_set": [
                ";".join(self.classes[int(x)] for x in np.flatnonzero(sets[int(j)])) for j in j_of
            ],
        }

    def _positive_interventions(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        run: np.ndarray,
        l_of: np.ndarray,
        j_of: np.ndarray,
        batch_no: int,
    ) -> dict[str, np.ndarray]:
        """Intervention columns for every pair (all of ``INTERVENTION_COLUMNS``,
        ``only_bg_pred`` and ``ALTERNATIVE_FILL_COLUMNS``); run for positive pairs with a label
        mask."""
        import torch

        n = len(run)
        out = {key: np.full(n, np.nan) for key in INTERVENTION_COLUMNS}
        # the single-label "predicted as class c" (only_bg_pred, only_fg_pred) has no
        # multi-label meaning (labels are not exclusive): not run (-1); the label's
        # probability is in *_confidence. The alternative fills (``<k>_pred_<fill>``): the
        # label (present) or L (absent), -1 where not run (auditor.analysis.multilabel_fills)
        for key in ("only_bg_pred", *ALTERNATIVE_FILL_COLUMNS):
            out[key] = np.full(n, -1, np.int64)
        sel = np.flatnonzero(run)
        if not self.s.interventions or sel.size == 0:
            return out
        dev = images.device
        res = self._interventions(
            images[torch.from_numpy(j_of[sel]).to(dev)],
            masks[torch.from_numpy(sel)].to(dev),
            torch.from_numpy(l_of[sel]).to(dev),
            batch_no,
        )
        for key, values in res.items():
            out[key][sel] = values
        return out


def _stored_map(method: str, cam: torch.Tensor) -> torch.Tensor:
    """The stored low-resolution map (the classifier's rule: :data:`STORED_INPUT_MAP_SIDE`)."""
    from auditor.audit.batch import stored_map

    return stored_map(method, cam)


def _upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from auditor.cam.outputs import upsample_cams

    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    return upsample_cams(cam, size)
