"""Generators of tiny datasets, the same images and objects written in every format.

Used by ``tests/test_data_*.py`` and ``scripts/make_fixtures.py``. Everything is
deterministic (seeded) and small (images of a few dozen pixels).
"""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VOC_INDEX = {"cat": 8, "dog": 12}  # 1-based palette indices of the standard VOC classes


@dataclass(frozen=True)
class Item:
    """One fixture image: name stem, label, size and its object rectangle(s)."""

    stem: str
    label: str
    width: int
    height: int
    boxes: tuple[tuple[int, int, int, int], ...]  # x0, y0, x1, y1 (x1/y1 exclusive)

    @property
    def name(self) -> str:
        return f"{self.stem}.png"

    def mask(self) -> np.ndarray:
        m = np.zeros((self.height, self.width), dtype=bool)
        for x0, y0, x1, y1 in self.boxes:
            m[y0:y1, x0:x1] = True
        return m


#: Five images; ``dog_2`` has two boxes whose union is its object; sizes differ.
ITEMS: tuple[Item, ...] = (
    Item("cat_1", "cat", 40, 30, ((5, 4, 25, 20),)),
    Item("dog_2", "dog", 32, 32, ((2, 2, 12, 20), (12, 8, 30, 20))),
    Item("cat_3", "cat", 48, 24, ((30, 3, 46, 22),)),
    Item("dog_4", "dog", 30, 40, ((0, 10, 30, 40),)),
    Item("cat_5", "cat", 36, 36, ((10, 10, 26, 26),)),
)


def image_array(item: Item, seed: int = 0) -> np.ndarray:
    """Deterministic RGB noise with a brighter object: uint8 [H, W, 3]."""
    rng = np.random.default_rng(zlib.crc32(item.stem.encode()) + seed)
    arr = rng.integers(0, 120, size=(item.height, item.width, 3), dtype=np.uint8)
    arr[item.mask()] += 100
    return arr


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def write_images(folder: Path, items: tuple[Item, ...] = ITEMS) -> None:
    for item in items:
        write_png(folder / item.name, image_array(item))


def make_csv_masks(base: Path) -> dict[str, Any]:
    """CSV manifest with mask PNGs (0/255)."""
    root = base / "csv_masks"
    write_images(root / "images")
    rows = []
    for item in ITEMS:
        write_png(root / "masks" / item.name, item.mask().astype(np.uint8) * 255)
        rows.append([f"images/{item.name}", item.label, f"masks/{item.name}"])
    _write_csv(root / "manifest.csv", ["image", "label", "mask"], rows)
    return {"manifest": str(root / "manifest.csv")}


def make_csv_boxes(base: Path) -> dict[str, Any]:
    """CSV manifest with box rows (several rows per image = several boxes)."""
    root = base / "csv_boxes"
    write_images(root / "images")
    rows = []
    for item in ITEMS:
        for box in item.boxes:
            rows.append([f"images/{item.name}", item.label, *box])
    _write_csv(root / "manifest.csv", ["image", "label", "x0", "y0", "x1", "y1"], rows)
    return {"manifest": str(root / "manifest.csv")}


def make_jsonl(base: Path) -> dict[str, Any]:
    """JSONL manifest: boxes for even items, mask files for odd ones."""
    root = base / "jsonl"
    write_images(root / "images")
    lines = []
    for i, item in enumerate(ITEMS):
        obj: dict[str, Any] = {"image": f"images/{item.name}", "label": item.label}
        if i % 2 == 0:
            obj["boxes"] = [list(b) for b in item.boxes]
        else:
            write_png(root / "masks" / item.name, item.mask().astype(np.uint8))
            obj["mask"] = f"masks/{item.name}"
        lines.append(json.dumps(obj))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"manifest": str(root / "manifest.jsonl")}


def make_imagefolder(base: Path) -> dict[str, Any]:
    root = base / "imagefolder" / "images"
    masks = base / "imagefolder" / "masks"
    for item in ITEMS:
        write_png(root / item.label / item.name, image_array(item))
        write_png(masks / item.label / item.name, item.mask().astype(np.uint8) * 255)
    return {"format": "imagefolder", "root": str(root), "masks_dir": str(masks)}


def make_coco(base: Path) -> dict[str, Any]:
    """COCO json: RLE (compressed), polygons, uncompressed RLE and bbox-only instances."""
    from pycocotools import mask as mask_utils

    root = base / "coco"
    write_images(root / "images")
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    images, anns = [], []
    for i, item in enumerate(ITEMS):
        images.append(
            {
                "id": i + 1,
                "file_name": f"images/{item.name}",
                "width": item.width,
                "height": item.height,
            }
        )
        cat = 1 if item.label == "cat" else 2
        kind = i % 4
        for box in item.boxes:
            x0, y0, x1, y1 = box
            m = np.zeros((item.height, item.width), dtype=np.uint8)
            m[y0:y1, x0:x1] = 1
            ann: dict[str, Any] = {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": cat,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
                "area": float((x1 - x0) * (y1 - y0)),
            }
            if kind == 0:
                rle = mask_utils.encode(np.asfortranarray(m))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            elif kind == 1:
                ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            elif kind == 2:
                ann["segmentation"] = {
                    "size": [item.height, item.width],
                    "counts": _uncompressed_rle(m),
                }
                ann["iscrowd"] = 1
            anns.append(ann)
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    return {"format": "coco", "root": str(root), "annotations": str(root / "annotations.json")}


def _uncompressed_rle(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return [int(c) for c in counts]


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple]]) -> str:
    """A VOC annotation; ``objects`` boxes are 0-based exclusive, written 1-based inclusive."""
    parts = [
        f"<annotation><filename>{filename}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def write_palette_png(path: Path, indices: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = np.random.default_rng(0).integers(0, 256, size=768, dtype=np.uint8)
    im.putpalette(palette.tobytes())
    im.save(path)
    return path


def make_voc(base: Path) -> dict[str, Any]:
    """VOC: SegmentationClass PNGs for the first three items, boxes for the others."""
    root = base / "voc"
    write_images(root / "JPEGImages")
    for i, item in enumerate(ITEMS):
        xml = voc_xml(item.name, item.width, item.height, [(item.label, b) for b in item.boxes])
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{item.stem}.xml").write_text(xml, encoding="utf-8")
        if i < 3:
            idx = item.mask().astype(np.uint8) * VOC_INDEX[item.label]
            write_palette_png(root / "SegmentationClass" / f"{item.stem}.png", idx)
    return {"format": "voc", "root": str(root)}


def make_trimap(base: Path) -> dict[str, Any]:
    root = base / "trimap"
    write_images(root / "images")
    for item in ITEMS:
        tri = np.where(item.mask(), 1, 2).astype(np.uint8)
        write_png(root / "annotations" / "trimaps" / item.name, tri)
    return {"format": "trimap", "root": str(root)}


MAKERS = {
    "csv_masks": make_csv_masks,
    "csv_boxes": make_csv_boxes,
    "jsonl": make_jsonl,
    "imagefolder": make_imagefolder,
    "coco": make_coco,
    "voc": make_voc,
    "trimap": make_trimap,
}


def make_all(base: Path) -> dict[str, dict[str, Any]]:
    """Write every format under ``base``; returns ``{name: [data] table}``."""
    return {name: maker(base) for name, maker in MAKERS.items()}


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
