"""The per-sample class probabilities the group statistics need (issue 24).

Per-class one-vs-rest AUROC and calibration need ``p_c(x)`` for every class ``c`` and sample
``x``, not only the predicted class's probability. ``samples.parquet`` stores it additively:

* ``label_confidence``: the softmax probability of the true label (NaN where the logits are
  not finite);
* ``top_classes`` / ``top_probs``: the classes with the highest probabilities and those
  probabilities, in decreasing order: every class (the full vector) when the model has at
  most :data:`FULL_PROBS_MAX_CLASSES` classes, else the :data:`TOP_K` largest. Null where the
  logits are not finite.

With the top-k only, ``p_c(x)`` of a class outside ``x``'s top-k (and not its label) is known
only to lie below ``x``'s k-th probability: :mod:`auditor.analysis.groups.auroc` then gives a
lower bound of the AUROC and says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FULL_PROBS_MAX_CLASSES", "TOP_K", "probability_columns"]

FULL_PROBS_MAX_CLASSES = 32
"""Models with at most this many classes store the whole probability vector."""
TOP_K = 10
"""Otherwise the ``TOP_K`` largest probabilities are stored (plus the label's)."""


def probability_columns(probs: Any, labels: Any, finite: Any) -> dict[str, Any]:
    """``label_confidence``, ``top_classes`` and ``top_probs`` of one batch.

    Args:
        probs: softmax probabilities, Tensor[B, C].
        labels: true class indices, Tensor[B] (long).
        finite: Tensor[B] bool, the rows whose logits are finite (others: NaN / null).
    """
    import torch

    if probs.ndim != 2 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"`probs` must be [B, C] and `labels` [B], got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    n_cls = int(probs.shape[1])
    k = n_cls if n_cls <= FULL_PROBS_MAX_CLASSES else TOP_K
    lab = probs.gather(1, labels.view(-1, 1).to(probs.device)).squeeze(1)
    lab = torch.where(finite, lab, float("nan"))
    top = probs.topk(k, dim=1)
    ok = finite.cpu().numpy()
    idx = top.indices.cpu().numpy().astype(np.int32)
    val = top.values.float().cpu().numpy().astype(np.float32)
    return {
        "label_confidence": lab.double().cpu().numpy(),
        "top_classes": [idx[i].tolist() if ok[i] else None for i in range(len(ok))],
        "top_probs": [val[i].tolist() if ok[i] else None for i in range(len(ok))],
    }
