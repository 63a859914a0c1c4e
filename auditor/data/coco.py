"""COCO instance annotations (Lin et al., 2014, "Microsoft COCO: Common Objects in Context").

One sample per entry of ``images``. Its classification label is chosen among its annotations
by ``label_rule``: ``"largest"`` (default; largest ``area``, falling back to the bbox area
``w * h``; ties -> first in file order) or ``"first"`` (first annotation in file order). The
mask is the union of the instances of that category (``mask_instances = "label"``, default)
or of all instances (``"all"``). Instance masks come from polygons or RLE (pycocotools); an
instance without segmentation contributes its ``bbox`` ``[x, y, w, h]`` rasterised as the box
``(x, y, x + w, y + h)``. Classes default to the category names in category-id order. Images
with no annotation are skipped with a reason.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from auditor.data.base import Record, canonical_sha256
from auditor.data.config import DataConfig
from auditor.data.images import BadSample, sha256_bytes
from auditor.data.transforms import rasterise_boxes
from auditor.errors import DataError

if TYPE_CHECKING:
    from auditor.data.base import FileDataset

__all__ = ["CocoAnnotation", "read_coco"]


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _instance_mask(
    ann: dict[str, Any], i: int, height: int, width: int
) -> tuple[np.ndarray | None, list[str]]:
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if seg:
        try:
            if isinstance(seg, list):
                polys = []
                for poly in seg:
                    if (
                        not isinstance(poly, list)
                        or len(poly) < 6
                        or len(poly) % 2
                        or not all(_is_num(v) and math.isfinite(v) for v in poly)
                    ):
                        return None, [f"instance {i} rejected: malformed polygon"]
                    polys.append([float(v) for v in poly])
                rles = mask_utils.frPyObjects(polys, height, width)
                rle = mask_utils.merge(rles)
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if list(seg["size"]) != [height, width]:
                    return None, [
                        f"instance {i} rejected: RLE size {seg['size']} != image "
                        f"[{height}, {width}]"
                    ]
                counts = seg["counts"]
                if isinstance(counts, list):
                    if not all(isinstance(c, int) and c >= 0 for c in counts):
                        return None, [f"instance {i} rejected: malformed RLE counts"]
                    if sum(counts) != height * width:
                        return None, [f"instance {i} rejected: RLE counts do not sum to h*w"]
                    rle = mask_utils.frPyObjects(seg, height, width)
                elif isinstance(counts, str):
                    rle = {"size": [height, width], "counts": counts.encode("ascii")}
                else:
                    return None, [f"instance {i} rejected: malformed RLE counts"]
            else:
                return None, [f"instance {i} rejected: unknown segmentation type"]
            with warnings.catch_warnings():  # pycocotools + numpy 2 copy= deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = mask_utils.decode(rle)
            return decoded.astype(bool), []
        except (ValueError, TypeError, UnicodeEncodeError, OverflowError) as exc:
            return None, [f"instance {i} rejected: cannot decode segmentation ({exc})"]
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox):
        x, y, w, h = (float(v) for v in bbox)
        mask, notes, accepted = rasterise_boxes([(x, y, x + w, y + h)], height, width)
        notes_i = [f"instance {i}: {n}" for n in notes]
        return (mask if accepted else None), notes_i
    return None, [f"instance {i} rejected: no segmentation and no valid bbox"]


@dataclass(frozen=True)
class CocoAnnotation:
    """The instances of one COCO image that make its mask (JSON text: frozen and picklable)."""

    instances_json: str
    width: int
    height: int

    def rasterise(
        self, dataset: FileDataset, label: str, height: int, width: int
    ) -> tuple[np.ndarray, tuple[str, ...], str]:
        if (height, width) != (self.height, self.width):
            raise BadSample(
                f"COCO width/height {self.width}x{self.height} != image file size {width}x{height}"
            )
        instances = json.loads(self.instances_json)
        mask = np.zeros((height, width), dtype=bool)
        notes: list[str] = []
        used = 0
        for i, ann in enumerate(instances):
            m, n = _instance_mask(ann, i, height, width)
            notes.extend(n)
            if m is not None:
                mask |= m
                used += 1
        if used == 0:
            raise BadSample("no usable COCO instance: " + "; ".join(notes))
        if not mask.any():
            notes.append("mask is empty (no object pixel)")
        return mask, tuple(notes), canonical_sha256(instances)


def _area(ann: dict[str, Any]) -> float:
    area = ann.get("area")
    if isinstance(area, int | float) and not isinstance(area, bool) and math.isfinite(area):
        return float(area)
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox):
        return float(bbox[2]) * float(bbox[3])
    return 0.0


def read_coco(config: DataConfig) -> tuple[list[Record], tuple[str, ...], str]:
    """Index a COCO json; returns ``(records, category names in id order, json sha256)``."""
    path = config.annotations
    if path is None:
        raise DataError("[data] annotations: not set (the COCO json file)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read COCO file: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: line 1: COCO file must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: missing or invalid list {key!r}")
    categories: dict[Any, str] = {}
    for cat in doc["categories"]:
        if (
            not isinstance(cat, dict)
            or not isinstance(cat.get("id"), int | str)
            or not isinstance(cat.get("name"), str)
        ):
            raise DataError(f"{path}: invalid category entry {cat!r}")
        categories[cat["id"]] = cat["name"]
    ids = list(categories)
    if all(isinstance(k, int) for k in ids):
        ids.sort()
    names = [categories[k] for k in ids]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate category names {sorted(names)!r}")
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in doc["annotations"]:
        if isinstance(ann, dict) and isinstance(ann.get("image_id"), int | str):
            by_image[ann["image_id"]].append(ann)
    records: list[Record] = []
    seen: set[Any] = set()
    for entry in doc["images"]:
        if not isinstance(entry, dict):
            raise DataError(f"{path}: invalid image entry {entry!r}")
        file_name = entry.get("file_name")
        image_id = entry.get("id")
        rid = file_name if isinstance(file_name, str) and file_name else f"image id {image_id}"
        error: str | None = None
        label: str | None = None
        annotation = None
        width, height = entry.get("width"), entry.get("height")
        anns = by_image.get(image_id, [])
        if not isinstance(image_id, int | str):
            error = f"COCO image entry with invalid id {image_id!r}"
        elif image_id in seen:
            error = f"duplicate COCO image id {image_id!r}"
        elif not isinstance(file_name, str) or not file_name:
            error = "COCO image entry without file_name"
        elif not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            error = f"COCO image entry with invalid width/height {width!r}x{height!r}"
        elif not anns:
            error = "no annotation in COCO file"
        else:
            chosen = max(anns, key=_area) if config.label_rule == "largest" else anns[0]
            cat = chosen.get("category_id")
            if not isinstance(cat, int | str) or cat not in categories:
                error = f"annotation with unknown category_id {cat!r}"
            else:
                label = categories[cat]
                keep = (
                    anns
                    if config.mask_instances == "all"
                    else [a for a in anns if a.get("category_id") == cat]
                )
                fields = ("segmentation", "bbox", "category_id", "iscrowd")
                instances = [{k: a[k] for k in fields if k in a} for a in keep]
                annotation = CocoAnnotation(
                    json.dumps(instances, sort_keys=True), int(width), int(height)
                )
        if isinstance(image_id, int | str):
            seen.add(image_id)
        records.append(Record(rid, file_name or "", label, annotation, error))
    if not records:
        raise DataError(f"{path}: no images")
    if all(r.error is not None for r in records):
        raise DataError(f"{path}: no usable image; first problem: {records[0].error}")
    return records, tuple(names), sha256_bytes(data)
