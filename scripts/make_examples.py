"""Generate the data of the "bring your own data" example audits, one per data format.

Usage::

    python scripts/make_examples.py              # data next to example_audits/formats/*/config.toml
    python scripts/make_examples.py --out DIR    # copy the configs into DIR/<example>/ + data

Every example audits the shipped demo model (``auditor.demo:build_model`` +
``demo-shortcut.pt``, 64x64 input, classes circle/square/triangle/cross) on the demo's own
evaluation images (``auditor.demo.generate_arrays(n_per_class, seed=1234)``: the same pixels
as ``auditor demo``), written in the conventions of each format (``docs/data-formats.md``):

================  ===========================================================================
example           what is written into ``<example>/data/``
================  ===========================================================================
csv-masks         ``manifest.csv`` (image, label, mask) + binary mask PNGs (0/255)
csv-boxes         ``manifest.csv`` (image, label, x0, y0, x1, y1): the mask's bounding box
jsonl             ``manifest.jsonl`` with several ``boxes`` per image (bounding boxes of 4
                  horizontal bands of the mask: a staircase approximation of the shape)
imagefolder       ``images/<class>/<file>.png`` + ``masks/<class>/<file>.png``
coco              ``annotations.json``: compressed RLE (``pycocotools.mask.encode``) for even
                  images, polygons (the traced pixel outline) for odd ones
voc               ``Annotations/*.xml`` (1-based inclusive boxes), ``SegmentationObject`` and
                  ``SegmentationClass`` palette PNGs with a 255 void ring around the object,
                  ``ImageSets/Segmentation/val.txt``
trimap            Oxford-IIIT Pet layout: ``images/<class>_<n>.png``,
                  ``annotations/trimaps/<class>_<n>.png`` (1 pet, 2 background, 3 boundary)
                  and ``annotations/test.txt``
torchvision-      the csv-masks data + ``resnet18-random.safetensors``: a torchvision ResNet-18
resnet18          with ``num_classes = 4`` and random (seeded) weights, saved as safetensors
================  ===========================================================================

The csv-masks, imagefolder, coco and voc examples encode exactly the same masks (the COCO
polygons are verified to decode to the mask pixel for pixel, else RLE is used), so their
per-sample ``energy_in_mask`` agree; box-based and trimap examples differ by design.
Everything is deterministic: the same bytes on every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auditor import demo  # noqa: E402

EXAMPLES_DIR = REPO / "example_audits" / "formats"
#: The demo's evaluation set (``auditor.demo.write_dataset`` uses the same seed).
SEED = 1234
N_PER_CLASS = 8
CLASSES: tuple[str, ...] = demo.CLASSES
#: 1-based palette index of each class in the SegmentationClass PNGs (voc_seg_classes order).
VOC_VOID = 255
VOID_WIDTH = 2
JSONL_BANDS = 4

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# helpers


def _name(i: int, label: int) -> str:
    """File name of sample ``i``: sorted names follow the generation order."""
    return f"{i:04d}_{CLASSES[label]}.png"


def _save_png(path: Path, array: np.ndarray, palette: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        image = Image.fromarray(array)
    else:  # palette PNG: the pixel values are the indices
        indices = np.ascontiguousarray(array, dtype=np.uint8)
        image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
        image.putpalette(palette)
    image.save(path, optimize=False)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the nonzero pixels of ``mask`` (``x1``/``y1`` exclusive).

    Raises:
        ValueError: ``mask`` is empty or not 2-D.
    """
    if mask.ndim != 2:
        raise ValueError(f"`mask` must have shape [H, W], got {tuple(mask.shape)}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("`mask` is empty: it has no bounding box")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def band_boxes(mask: np.ndarray, bands: int = JSONL_BANDS) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of ``bands`` horizontal slices of the object: a staircase of boxes whose
    union contains the object (several boxes per image, as in a detection annotation)."""
    if bands < 1:
        raise ValueError(f"`bands` must be >= 1, got {bands}")
    x0, y0, x1, y1 = bounding_box(mask)
    edges = np.linspace(y0, y1, bands + 1).round().astype(int)
    boxes = []
    for top, bottom in zip(edges[:-1], edges[1:]):
        if bottom <= top:
            continue
        part = np.zeros_like(mask, dtype=bool)
        part[top:bottom] = mask[top:bottom]
        if part.any():
            boxes.append(bounding_box(part))
    return boxes


def outline_polygon(mask: np.ndarray) -> list[float] | None:
    """The outline of a simply connected mask as one COCO polygon ``[x0, y0, x1, y1, ...]``.

    Vertices lie on pixel corners (pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``), so the
    polygon covers exactly the mask pixels. Returns ``None`` when the mask is empty or is not a
    single region whose outline is one unambiguous loop (several regions, holes, or pixels that
    touch only by a corner): the caller then falls back to RLE.
    """
    m = np.pad(mask.astype(bool), 1)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(a: tuple[int, int], b: tuple[int, int]) -> None:
        edges.setdefault(a, []).append(b)

    # clockwise on screen (y down): object on the right of every directed edge
    for r, c in zip(*np.nonzero(m)):
        y, x = int(r) - 1, int(c) - 1  # coordinates of the unpadded image
        if not m[r - 1, c]:
            add((x, y), (x + 1, y))
        if not m[r, c + 1]:
            add((x + 1, y), (x + 1, y + 1))
        if not m[r + 1, c]:
            add((x + 1, y + 1), (x, y + 1))
        if not m[r, c - 1]:
            add((x, y + 1), (x, y))
    if not edges or any(len(v) != 1 for v in edges.values()):
        return None
    start = min(edges)
    loop = [start]
    point = edges[start][0]
    while point != start:
        loop.append(point)
        point = edges[point][0]
        if len(loop) > len(edges):
            return None
    if len(loop) != len(edges):  # more than one loop: several regions or a hole
        return None
    # keep the corners only (drop vertices in the middle of a straight run)
    n = len(loop)
    corners = [
        p
        for i, p in enumerate(loop)
        if (loop[i - 1][0] - p[0], loop[i - 1][1] - p[1])
        != (p[0] - loop[(i + 1) % n][0], p[1] - loop[(i + 1) % n][1])
    ]
    return [float(v) for p in corners for v in p]


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (chessboard distance) outside ``mask``."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=width)
    return grown & ~mask


def _inner_edge(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool))


def _palette() -> bytes:
    """VOC-like palette: index k gets a distinct colour, 255 (void) is light grey."""
    pal = np.zeros((256, 3), np.uint8)
    for k in range(1, 255):
        pal[k] = ((k * 97) % 256, (k * 57 + 80) % 256, (k * 151 + 40) % 256)
    pal[VOC_VOID] = (224, 224, 192)
    return pal.tobytes()


# --------------------------------------------------------------------------------------------
# writers, one per example (each gets the folder ``<example>/data`` and the arrays)


def write_csv_masks(data: Path, arrays: Arrays) -> None:
    """CSV manifest with one binary mask PNG (0/255) per image."""
    images, masks, labels = arrays
    rows = []
    for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
        name = _name(i, int(label))
        _save_png(data / "images" / name, img)
        _save_png(data / "masks" / name, mask.astype(np.uint8) * 255)
        rows.append([f"images/{name}", CLASSES[label], f"masks/{name}"])
    _write_csv(data / "manifest.csv", ["image", "label", "mask"], rows)


def write_csv_boxes(data: Path, arrays: Arrays) -> None:
    """CSV manifest with one box row per image: the bounding box of the object mask."""
    images, masks, labels = arrays
    rows = []
    for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
        name = _name(i, int(label))
        _save_png(data / "images" / name, img)
        rows.append([f"images/{name}", CLASSES[label], *bounding_box(mask)])
    _write_csv(data / "manifest.csv", ["image", "label", "x0", "y0", "x1", "y1"], rows)


def write_jsonl(data: Path, arrays: Arrays) -> None:
    """JSONL manifest, several boxes per image (:func:`band_boxes`)."""
    images, masks, labels = arrays
    lines = []
    for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
        name = _name(i, int(label))
        _save_png(data / "images" / name, img)
        obj = {
            "id": Path(name).stem,
            "image": f"images/{name}",
            "label": CLASSES[label],
            "boxes": [list(b) for b in band_boxes(mask)],
        }
        lines.append(json.dumps(obj))
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_imagefolder(data: Path, arrays: Arrays) -> None:
    """torchvision ImageFolder layout plus a parallel masks folder."""
    images, masks, labels = arrays
    for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
        name, cls = _name(i, int(label)), CLASSES[label]
        _save_png(data / "images" / cls / name, img)
        _save_png(data / "masks" / cls / name, mask.astype(np.uint8) * 255)


def write_coco(data: Path, arrays: Arrays) -> None:
    """COCO instances file: RLE for even images, outline polygons for odd ones."""
    from pycocotools import mask as mask_utils

    images, masks, labels = arrays
    entries, anns = [], []
    for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
        name = _name(i, int(label))
        _save_png(data / "images" / name, img)
        h, w = mask.shape
        entries.append({"id": i + 1, "file_name": f"images/{name}", "width": w, "height": h})
        x0, y0, x1, y1 = bounding_box(mask)
        segmentation: Any = None
        if i % 2 == 1:
            poly = outline_polygon(mask)
            if poly is not None:
                decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))
                if np.array_equal(decoded.astype(bool), mask):
                    segmentation = [poly]
        if segmentation is None:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": int(label) + 1,
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
            }
        )
    doc = {
        "info": {"description": "cam-auditor example: demo shapes in COCO format"},
        "images": entries,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)],
    }
    (data / "annotations.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _voc_xml(filename: str, width: int, height: int, label: str, box: tuple[int, ...]) -> str:
    x0, y0, x1, y1 = box  # 0-based exclusive -> VOC 1-based inclusive
    return (
        "<annotation>\n"
        "  <folder>VOC2012</folder>\n"
        f"  <filename>{filename}</filename>\n"
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
        "  <segmented>1</segmented>\n"
        "  <object>\n"
        f"    <name>{label}</name>\n"
        "    <pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>\n"
        f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n"
        "  </object>\n"
        "</annotation>\n"
    )


def write_voc(data: Path, arrays: Arrays) -> None:
    """Pascal VOC layout: XML + SegmentationObject/SegmentationClass PNGs with a void ring."""
    images, masks, labels = arrays
    root = data / "VOC2012"
    palette = _palette()
    stems = []
    for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
        name = _name(i, int(label))
        stem = Path(name).stem
        stems.append(stem)
        h, w = mask.shape
        _save_png(root / "JPEGImages" / name, img)  # PNG: lossless, same pixels as csv-masks
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(
            _voc_xml(name, w, h, CLASSES[label], bounding_box(mask)), encoding="utf-8"
        )
        void = _ring(mask, VOID_WIDTH)
        obj = np.where(mask, 1, 0).astype(np.uint8)
        obj[void] = VOC_VOID
        _save_png(root / "SegmentationObject" / f"{stem}.png", obj, palette)
        cls = np.where(mask, int(label) + 1, 0).astype(np.uint8)
        cls[void] = VOC_VOID
        _save_png(root / "SegmentationClass" / f"{stem}.png", cls, palette)
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(stems) + "\n", encoding="utf-8")


def write_trimap(data: Path, arrays: Arrays) -> None:
    """Oxford-IIIT Pet layout: ``<class>_<n>`` file names, trimaps 1/2/3, a list file."""
    images, masks, labels = arrays
    root = data / "oxford-iiit-pet"
    counts = dict.fromkeys(CLASSES, 0)
    lines = []
    for img, mask, label in zip(images, masks, labels):
        cls = CLASSES[label]
        counts[cls] += 1
        stem = f"{cls}_{counts[cls]}"
        _save_png(root / "images" / f"{stem}.png", img)
        # boundary band straddling the outline: the object's edge pixels + a 1 px outer ring
        boundary = _inner_edge(mask) | _ring(mask, 1)
        tri = np.where(mask, 1, 2).astype(np.uint8)
        tri[boundary] = 3
        _save_png(root / "annotations" / "trimaps" / f"{stem}.png", tri)
        lines.append(f"{stem} {int(label) + 1} 1 1")  # CLASS-ID SPECIES BREED-ID, as in Pet
    (root / "annotations" / "test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_resnet18_weights(data: Path, seed: int = 0) -> Path:
    """A torchvision ResNet-18 with 4 outputs and random weights, saved as safetensors."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = data / "resnet18-random.safetensors"
    save_file(state, str(path), metadata={"note": "random weights, cam-auditor example"})
    return path


def _with_demo_weights(writer: Callable[[Path, Arrays], None]) -> Callable[[Path, Arrays], None]:
    def write(data: Path, arrays: Arrays) -> None:
        writer(data, arrays)
        shutil.copyfile(demo.weights_path("shortcut"), data / "demo-shortcut.pt")

    write.__doc__ = writer.__doc__
    return write


def _write_torchvision(data: Path, arrays: Arrays) -> None:
    write_csv_masks(data, arrays)
    write_resnet18_weights(data)


#: example folder name -> writer of its ``data/`` folder
EXAMPLES: dict[str, Callable[[Path, Arrays], None]] = {
    "csv-masks": _with_demo_weights(write_csv_masks),
    "csv-boxes": _with_demo_weights(write_csv_boxes),
    "jsonl": _with_demo_weights(write_jsonl),
    "imagefolder": _with_demo_weights(write_imagefolder),
    "coco": _with_demo_weights(write_coco),
    "voc": _with_demo_weights(write_voc),
    "trimap": _with_demo_weights(write_trimap),
    "torchvision-resnet18": _write_torchvision,
}


def make_examples(
    out: Path | None = None,
    *,
    names: Sequence[str] | None = None,
    n_per_class: int = N_PER_CLASS,
    seed: int = SEED,
) -> dict[str, Path]:
    """Write the data of the example audits; return ``{example: path of its config.toml}``.

    Args:
        out: where to write. ``None`` writes ``data/`` next to the committed configs in
            ``example_audits/formats/<example>/``; a folder gets a copy of each config
            (``out/<example>/config.toml``) and its data beside it.
        names: the examples to write (default: all of :data:`EXAMPLES`).
        n_per_class: images per class (the demo's evaluation set uses the seed 1234).
        seed: seed of :func:`auditor.demo.generate_arrays`.

    Raises:
        ValueError: unknown example name or ``n_per_class < 1``.
    """
    chosen = list(EXAMPLES) if names is None else list(names)
    for name in chosen:
        if name not in EXAMPLES:
            raise ValueError(f"`names` must be among {sorted(EXAMPLES)}, got {name!r}")
    if n_per_class < 1:
        raise ValueError(f"`n_per_class` must be >= 1, got {n_per_class}")
    arrays = demo.generate_arrays(n_per_class, seed, "shortcut")
    configs: dict[str, Path] = {}
    for name in chosen:
        source = EXAMPLES_DIR / name / "config.toml"
        folder = EXAMPLES_DIR / name if out is None else Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve() != source.parent.resolve():
            shutil.copyfile(source, folder / "config.toml")
        data = folder / "data"
        if data.exists():
            shutil.rmtree(data)  # deterministic: never mix with a previous generation
        data.mkdir()
        EXAMPLES[name](data, arrays)
        configs[name] = folder / "config.toml"
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="copy the configs here (default: in place)"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(EXAMPLES), help="these examples")
    parser.add_argument("--n-per-class", type=int, default=N_PER_CLASS)
    args = parser.parse_args(argv)
    configs = make_examples(args.out, names=args.only, n_per_class=args.n_per_class)
    for name, config in configs.items():
        print(f"{name}: auditor run {config} --out runs/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
