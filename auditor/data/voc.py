"""Pascal VOC layout (Everingham et al., 2010, "The PASCAL Visual Object Classes (VOC)
Challenge").

``root/Annotations/<stem>.xml`` (parsed with defusedxml: DTDs and entities are refused, so
billion-laughs and external-entity files are rejected without expansion), images in
``root/JPEGImages/<filename>``, masks in ``root/SegmentationClass/<stem>.png`` (palette index
= class index in ``voc_seg_classes``, 1-based; 0 = background; 255 = void) or
``root/SegmentationObject/<stem>.png`` (palette index = object number in the XML, 1-based).
``split = "val"`` reads the stems from ``ImageSets/Segmentation/val.txt`` (or
``ImageSets/Main/val.txt``); without it, every XML file in ``Annotations``.

Label: the object with the largest box area (ties: first in the XML). Mask (``voc_mask``):
``"auto"`` = SegmentationClass when the PNG exists, boxes otherwise; ``"class"``;
``"object"``; ``"boxes"`` (VOC boxes are 1-based inclusive: ``xmin..xmax`` becomes
``x0 = xmin - 1, x1 = xmax`` in the exclusive 0-based convention). ``mask_instances``:
``"label"`` (objects of the label's class) or ``"all"``.

Void (255): VOC marks a ~5 px band around every object outline, and "difficult" regions, as
void. ``voc_void = "foreground"`` (default) adds to the mask the void connected components
(8-connectivity) that touch it - the outline band of the object itself, where a blurry CAM
that looks at the object legitimately spills; ``"background"`` leaves all void out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from scipy import ndimage

from auditor.data.base import Record, canonical_sha256, read_mask_file
from auditor.data.config import DataConfig
from auditor.data.images import BadSample, sha256_bytes
from auditor.data.safety import safe_join
from auditor.data.transforms import rasterise_boxes
from auditor.errors import DataError, UnsafePathError

if TYPE_CHECKING:
    from auditor.data.base import FileDataset

__all__ = ["VOC_CLASSES", "VocAnnotation", "VocObject", "parse_voc_xml", "read_voc"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_MAX_XML_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: name and box in 0-based exclusive pixels (NaN when missing)."""

    name: str
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        area = (x1 - x0) * (y1 - y0)
        return area if area == area and area > 0 else 0.0


def _text(el: Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def parse_voc_xml(data: bytes) -> tuple[str | None, tuple[VocObject, ...]]:
    """Parse a VOC XML safely; returns ``(filename or None, objects)``.

    Raises:
        BadSample: unsafe XML (DTD, entities, external references) or malformed XML.
    """
    try:
        root = safe_fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise BadSample(f"unsafe XML rejected ({type(exc).__name__}): not expanded") from exc
    except (ParseError, ValueError) as exc:
        raise BadSample(f"invalid XML: {exc}") from exc
    filename = _text(root.find("filename")) or None
    objects = []
    for obj in root.findall("object"):
        name = _text(obj.find("name"))
        bb = obj.find("bndbox")
        coords = [_float(_text(bb.find(k))) if bb is not None else float("nan")
                  for k in ("xmin", "ymin", "xmax", "ymax")]  # fmt: skip
        xmin, ymin, xmax, ymax = coords
        objects.append(VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax)))
    return filename, tuple(objects)


@dataclass(frozen=True)
class VocAnnotation:
    """Mask of one VOC sample: from a segmentation PNG or from the XML boxes."""

    stem: str
    objects: tuple[VocObject, ...]
    mode: str  # "class" | "object" | "boxes"

    def _wanted(self, dataset: FileDataset, label: str) -> list[int]:
        if dataset.config.mask_instances == "all":
            return list(range(len(self.objects)))
        return [i for i, o in enumerate(self.objects) if o.name == label]

    def rasterise(
        self, dataset: FileDataset, label: str, height: int, width: int
    ) -> tuple[np.ndarray, tuple[str, ...], str]:
        cfg = dataset.config
        if self.mode == "boxes":
            boxes = [self.objects[i].box for i in self._wanted(dataset, label)]
            mask, notes, accepted = rasterise_boxes(boxes, height, width)
            if accepted == 0:
                raise BadSample("no valid box: " + "; ".join(notes))
            return mask, notes, canonical_sha256({"boxes": [list(b) for b in boxes]})
        folder = "SegmentationClass" if self.mode == "class" else "SegmentationObject"
        values, notes_t, sha = read_mask_file(dataset, f"{folder}/{self.stem}.png")
        seg_notes: list[str] = list(notes_t)
        if self.mode == "class":
            names = cfg.voc_seg_classes or VOC_CLASSES
            if cfg.mask_instances == "all":
                mask = (values > 0) & (values != 255)
            elif label in names:
                mask = values == names.index(label) + 1
            else:
                raise BadSample(f"label {label!r} not in voc_seg_classes (palette order)")
        else:
            ids = [i + 1 for i in self._wanted(dataset, label)]
            mask = np.isin(values, ids)
        void = values == 255
        if void.any() and cfg.voc_void == "foreground" and mask.any():
            components, _ = ndimage.label(void, structure=np.ones((3, 3), dtype=bool))
            touching = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))
            keep = np.unique(components[touching & void])
            added = np.isin(components, keep[keep > 0])
            mask = mask | added
            n_added = int(added.sum())
            seg_notes.append(f"{n_added} void (255) pixels touching the object counted as object")
        if not mask.any():
            seg_notes.append("mask is empty (no object pixel)")
        return mask, tuple(seg_notes), sha


def _stems(config: DataConfig) -> list[str]:
    root = config.root
    if config.split is not None:
        subdirs = ("Main", "Segmentation") if config.voc_mask == "boxes" else (
            "Segmentation", "Main")  # fmt: skip
        for sub in subdirs:
            path = root / "ImageSets" / sub / f"{config.split}.txt"
            if path.is_file():
                try:
                    lines = path.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as exc:
                    raise DataError(f"{path}: cannot read split file: {exc}") from exc
                return [line.split()[0] for line in lines if line.strip()]
        raise DataError(
            f"[data] split: no ImageSets/Segmentation/{config.split}.txt or "
            f"ImageSets/Main/{config.split}.txt under {root}"
        )
    folder = root / "Annotations"
    if not folder.is_dir():
        raise DataError(f"{root}: no Annotations folder (Pascal VOC layout expected)")
    return sorted(p.stem for p in folder.glob("*.xml"))


def read_voc(config: DataConfig) -> tuple[list[Record], str]:
    """Index a VOC folder; returns ``(records, sha256 of the (stem, xml sha256) list)``."""
    stems = _stems(config)
    if not stems:
        raise DataError(f"{config.root}: no VOC annotation (Annotations/*.xml) found")
    records: list[Record] = []
    listing: list[list[str]] = []
    for stem in stems:
        try:
            xml_path = safe_join(config.root, f"Annotations/{stem}.xml")
            data = xml_path.read_bytes() if xml_path.is_file() else None
            if data is None:
                raise BadSample(f"annotation file not found: Annotations/{stem}.xml")
            if len(data) > _MAX_XML_BYTES:
                raise BadSample(f"annotation file too large: {len(data)} bytes")
            listing.append([stem, sha256_bytes(data)])
            filename, objects = parse_voc_xml(data)
            filename = filename or f"{stem}.jpg"
            named = [o for o in objects if o.name]
            if not named:
                raise BadSample("no <object> in the VOC annotation")
            best = max(named, key=lambda o: o.area)  # first on ties
            mode = config.voc_mask
            if mode == "auto":
                has_png = (config.root / "SegmentationClass" / f"{stem}.png").is_file()
                mode = "class" if has_png else "boxes"
            annotation = VocAnnotation(stem, objects, mode)
            records.append(
                Record(f"JPEGImages/{filename}", f"JPEGImages/{filename}", best.name, annotation)
            )
        except UnsafePathError as exc:
            records.append(Record(stem, stem, None, None, str(exc)))
        except OSError as exc:
            records.append(Record(stem, stem, None, None, f"cannot read annotation: {exc}"))
        except BadSample as exc:
            records.append(Record(stem, stem, None, None, exc.reason))
    if all(r.error is not None for r in records):
        raise DataError(f"{config.root}: no usable VOC annotation; first: {records[0].error}")
    return records, canonical_sha256({"voc": listing})
