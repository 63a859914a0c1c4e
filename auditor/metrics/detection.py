"""Box geometry and detection matching for detection audits (issue 26); numpy, no torch.

* :func:`box_iou`: intersection over union of axis-aligned boxes ``(x0, y0, x1, y1)``
  (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge", eq. 1):
  ``IoU(A, B) = |A ∩ B| / |A ∪ B|``; 0 for disjoint boxes; a degenerate (empty) box has IoU 0
  with everything (its union may be non-zero, its intersection is 0).
* :func:`match_detections`: greedy, class-aware matching as in the PASCAL VOC / COCO
  evaluation: detections at or above the score threshold are visited by decreasing score
  (ties: lower index first); each takes the still unmatched ground-truth box of its class with
  the highest IoU, if that IoU is >= the IoU threshold (ties: lower index first). A
  ground-truth box matched to nothing is a miss (recall), a detection matched to nothing a
  false positive (precision).
* :func:`box_masks`: the pixels of an ``H x W`` grid whose centres lie in each box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Matching", "box_iou", "box_masks", "match_detections"]


def _boxes(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"`{name}` must have shape [N, 4] (x0, y0, x1, y1), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite, got {arr.tolist()}")
    return arr


def box_iou(a: object, b: object) -> np.ndarray:
    """``[N, M]`` IoU of boxes ``a`` ``[N, 4]`` and ``b`` ``[M, 4]`` (``x0, y0, x1, y1``).

    E.g. ``(0, 0, 2, 2)`` and ``(1, 1, 3, 3)``: intersection 1, union 4 + 4 - 1 = 7, IoU 1/7.
    """
    x, y = _boxes("a", a), _boxes("b", b)
    area_x = np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    area_y = np.clip(y[:, 2] - y[:, 0], 0, None) * np.clip(y[:, 3] - y[:, 1], 0, None)
    lt = np.maximum(x[:, None, :2], y[None, :, :2])
    rb = np.minimum(x[:, None, 2:], y[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_x[:, None] + area_y[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


@dataclass(frozen=True)
class Matching:
    """The outcome of :func:`match_detections` for one image.

    ``gt_match[i]``: index of the detection matched to ground-truth box ``i``, or -1;
    ``gt_iou[i]``: its IoU (NaN if unmatched); ``det_match[j]``: index of the ground-truth
    box matched to detection ``j``, or -1 (also -1 for detections below the score threshold);
    ``kept[j]``: detection ``j`` is at or above the score threshold.
    """

    gt_match: np.ndarray
    gt_iou: np.ndarray
    det_match: np.ndarray
    kept: np.ndarray

    @property
    def false_positives(self) -> np.ndarray:
        """Indices of kept detections matched to no ground-truth box."""
        return np.flatnonzero(self.kept & (self.det_match < 0))


def match_detections(
    gt_boxes: object,
    gt_labels: object,
    det_boxes: object,
    det_labels: object,
    det_scores: object,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> Matching:
    """Greedy class-aware matching of detections to ground truth (see the module docstring)."""
    if not (isinstance(iou_threshold, int | float) and 0 < iou_threshold <= 1):
        raise ValueError(f"`iou_threshold` must be in (0, 1], got {iou_threshold!r}")
    if not (isinstance(score_threshold, int | float) and math.isfinite(score_threshold)):
        raise ValueError(f"`score_threshold` must be a finite number, got {score_threshold!r}")
    gb, db = _boxes("gt_boxes", gt_boxes), _boxes("det_boxes", det_boxes)
    gl = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    dl = np.asarray(det_labels, dtype=np.int64).reshape(-1)
    ds = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if gl.size != len(gb):
        raise ValueError(f"`gt_labels` must have {len(gb)} entries, got {gl.size}")
    if dl.size != len(db) or ds.size != len(db):
        raise ValueError(
            f"`det_labels` and `det_scores` must have {len(db)} entries, got {dl.size}, {ds.size}"
        )
    gt_match = np.full(len(gb), -1, np.int64)
    gt_iou = np.full(len(gb), np.nan)
    det_match = np.full(len(db), -1, np.int64)
    kept = np.isfinite(ds) & (ds >= score_threshold)
    iou = box_iou(db, gb)
    order = sorted(np.flatnonzero(kept).tolist(), key=lambda j: (-ds[j], j))
    for j in order:
        cand = (gl == dl[j]) & (gt_match < 0)
        if not cand.any():
            continue
        ious = np.where(cand, iou[j], -1.0)
        i = int(np.argmax(ious))  # first index among ties
        if ious[i] >= iou_threshold:
            gt_match[i], gt_iou[i], det_match[j] = j, ious[i], i
    return Matching(gt_match, gt_iou, det_match, kept)


def box_masks(boxes: object, height: int, width: int) -> np.ndarray:
    """bool ``[N, H, W]``: pixel ``(r, c)`` is in box ``(x0, y0, x1, y1)`` when its centre
    ``(c + 0.5, r + 0.5)`` satisfies ``x0 <= c + 0.5 < x1`` and ``y0 <= r + 0.5 < y1``
    (an integer box ``(1, 2, 3, 5)`` covers columns 1..2 and rows 2..4)."""
    b = _boxes("boxes", boxes)
    cx = np.arange(width) + 0.5
    cy = np.arange(height) + 0.5
    inx = (cx[None, :] >= b[:, 0:1]) & (cx[None, :] < b[:, 2:3])  # [N, W]
    iny = (cy[None, :] >= b[:, 1:2]) & (cy[None, :] < b[:, 3:4])  # [N, H]
    return iny[:, :, None] & inx[:, None, :]
