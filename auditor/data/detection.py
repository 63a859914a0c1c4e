"""Ground-truth boxes of a COCO file for detection audits (issue 26).

The images are read by the shared COCO reader (:func:`auditor.data.open_dataset`: the same
path checks, decoding, ``input_size`` resize and normalisation); this module adds every
instance's box and category. A COCO ``bbox`` ``[x, y, w, h]`` in original pixels becomes
``(x0, y0, x1, y1) = (x, y, x + w, y + h)`` scaled by ``input_size / (width, height)`` (the
``"direct"`` resize the image gets) and clipped to the image. Crowd instances (``iscrowd =
1``) are not boxes to find (COCO's convention) and are left out; a box that is not four finite
numbers with ``w, h > 0`` is left out with a note naming the image.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.errors import DataError

__all__ = ["GroundTruth", "read_coco_boxes"]


@dataclass(frozen=True)
class GroundTruth:
    """The boxes of one image in input pixels: ``boxes[i] = (x0, y0, x1, y1)``, x1/y1
    exclusive, ``labels[i]`` the class index (order of the dataset's classes)."""

    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    notes: tuple[str, ...] = ()


def _box(bbox: Any, sx: float, sy: float, h: int, w: int) -> tuple[float, ...] | None:
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return None
    x, y, bw, bh = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
        return None
    x0, y0 = max(0.0, x * sx), max(0.0, y * sy)
    x1, y1 = min(float(w), (x + bw) * sx), min(float(h), (y + bh) * sy)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def read_coco_boxes(
    path: Path, classes: tuple[str, ...], input_size: tuple[int, int]
) -> dict[str, GroundTruth]:
    """``{file_name: GroundTruth}`` of a COCO instances file (ids = the dataset's sample ids).

    ``classes`` is the dataset's class list (category names); a category outside it is an
    error naming the file (its boxes could be neither matched nor counted).
    """
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO boxes: {exc}") from exc
    names = {c["id"]: c["name"] for c in doc.get("categories", []) if isinstance(c, dict)}
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({str(n) for n in names.values() if n not in index})
    if unknown:
        raise DataError(
            f"{path}: categories {unknown!r} are not in [data] classes {list(classes)!r}"
        )
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in doc.get("annotations", []):
        if isinstance(ann, dict):
            by_image[ann.get("image_id")].append(ann)
    h_in, w_in = input_size
    out: dict[str, GroundTruth] = {}
    for entry in doc.get("images", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            continue  # the shared reader skips it with its reason
        width, height = entry.get("width"), entry.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            continue
        sx, sy = w_in / width, h_in / height
        boxes, labels, notes = [], [], []
        for k, ann in enumerate(by_image.get(entry.get("id"), [])):
            if ann.get("iscrowd") in (1, True):
                continue
            cat = ann.get("category_id")
            if cat not in names:
                notes.append(f"instance {k}: unknown category_id {cat!r} (left out)")
                continue
            box = _box(ann.get("bbox"), sx, sy, h_in, w_in)
            if box is None:
                notes.append(f"instance {k}: invalid bbox {ann.get('bbox')!r} (left out)")
                continue
            boxes.append(box)
            labels.append(index[names[cat]])
        out[entry["file_name"]] = GroundTruth(tuple(boxes), tuple(labels), tuple(notes))  # type: ignore[arg-type]
    return out
