"""Multi-label datasets (issue 26): each image carries a SET of labels, each label its own mask.

Used when ``[model] output = "sigmoid"``. Three sources:

* CSV manifest: columns ``image``, ``labels`` (``;``-separated label names; empty = the image
  carries no label), optionally ``id`` and ``masks`` (``;``-separated mask file paths aligned
  with ``labels``, an empty entry = no mask for that label; nonzero pixel = object).
* JSONL manifest: ``{"image": ..., "labels": ["a", "b"] | "a;b", "id": ..., "masks":
  {"a": "a_mask.png"}}``.
* COCO: the label set of an image is the set of categories of its annotations; the mask of a
  label is the union of that category's instances (polygons, RLE, or the bbox without
  segmentation), exactly as :class:`auditor.data.coco.CocoAnnotation` rasterises them.

A label name that is not in ``[data] classes`` (or a COCO ``category_id`` not in
``categories``) is bad input: :class:`~auditor.errors.DataError` naming the file, the line and
the value (CLI exit 2), never a silently dropped label. Labels default to the sorted unique
names of the manifest (COCO: category-id order), which must be the model's output order.

Images are decoded through :class:`auditor.data.base.FileDataset` (same path checks, EXIF
rule, resize and normalisation as every other format); each label's mask is rasterised through
the same code on the same geometry.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from auditor.data.base import FileDataset, MaskFileAnnotation, Record, canonical_sha256
from auditor.data.coco import CocoAnnotation
from auditor.data.config import DataConfig
from auditor.data.images import BadSample, sha256_bytes
from auditor.data.sample import EvalSample
from auditor.errors import DataError, SampleSkipped

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "LabelledImage",
    "PairView",
    "MultiLabelDataset",
    "MultiLabelSample",
    "is_multilabel",
    "open_multilabel_dataset",
    "split_label_names",
]

SEPARATOR = ";"


@dataclass(frozen=True)
class MultiLabelSample(EvalSample):
    """An :class:`EvalSample` with its label set and one mask per label.

    ``label`` (inherited) is the first label of the set, or 0 for an empty set: it is not
    used by the multi-label audit. ``mask`` is the union of the label masks (or ``None``).

    Attributes:
        label_set: indices (in ``classes`` order) of the labels the image carries.
        label_masks: bool ``[L, H, W]`` (``L = len(classes)``), all-False where a label has
            no mask; ``None`` when no label of the image has one.
        label_has_mask: per label, whether ``label_masks[l]`` is an annotation.
    """

    label_set: tuple[int, ...] = ()
    label_masks: Tensor | None = None
    label_has_mask: tuple[bool, ...] = ()


@dataclass(frozen=True)
class LabelledImage:
    """One image of a multi-label dataset: its record (image path, id, error) and labels."""

    record: Record
    labels: tuple[str, ...]
    annotations: tuple[tuple[str, Any], ...] = ()  # (label name, Annotation)


def split_label_names(cell: str) -> tuple[str, ...]:
    """``"a; b;;c"`` -> ``("a", "b", "c")`` (names stripped, empty pieces dropped, order kept,
    duplicates removed)."""
    out: list[str] = []
    for piece in cell.split(SEPARATOR):
        name = piece.strip()
        if name and name not in out:
            out.append(name)
    return tuple(out)


def _read(path: Any) -> tuple[str, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig"), sha256_bytes(data)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text") from exc


def _mask_list(path: Any, line: int, labels: tuple[str, ...], cell: str) -> list[tuple[str, Any]]:
    if not cell.strip():
        return []
    pieces = [p.strip() for p in cell.split(SEPARATOR)]
    if len(pieces) != len(labels):
        raise DataError(
            f"{path}: line {line}: `masks` has {len(pieces)} entries for {len(labels)} labels "
            f"({cell!r}); give one path (or an empty entry) per label"
        )
    return [(name, MaskFileAnnotation(p)) for name, p in zip(labels, pieces) if p]


def read_multilabel_csv(config: DataConfig) -> tuple[list[LabelledImage], str]:
    """Index a multi-label CSV manifest; returns ``(images, sha256 of the file)``."""
    path = config.manifest
    text, sha = _read(path)
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        header = [c.strip().lower() for c in next(reader, [])]
    except csv.Error as exc:
        raise DataError(f"{path}: line 1: unreadable CSV header: {exc}") from exc
    if "labels" not in header or "image" not in header:
        raise DataError(
            f'{path}: line 1: a multi-label manifest ([model] output = "sigmoid") needs the '
            f"columns `image` and `labels` (`;`-separated names); header is {header!r}"
        )
    for bad in ("label", "mask", "x0"):
        if bad in header:
            raise DataError(
                f"{path}: line 1: column `{bad}` is not read in a multi-label manifest (use "
                f"`labels` and `masks`, one mask path per label); remove it"
            )
    col = {name: i for i, name in enumerate(header)}
    out: list[LabelledImage] = []
    seen: set[str] = set()
    try:
        for line, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            get = lambda k, row=row: row[col[k]] if k in col and col[k] < len(row) else ""  # noqa: E731
            image = get("image").strip()
            rid = get("id").strip() or image or f"line {line}"
            labels = split_label_names(get("labels"))
            error = None
            if len(row) != len(header):
                error = f"manifest line {line}: {len(row)} fields, header has {len(header)}"
            elif not image:
                error = f"manifest line {line}: empty image path"
            elif rid in seen:
                error = f"manifest line {line}: duplicate id {rid!r}"
            seen.add(rid)
            masks = _mask_list(path, line, labels, get("masks")) if error is None else []
            out.append(LabelledImage(Record(rid, image, None, None, error), labels, tuple(masks)))
            out[-1] = _with_line(out[-1], line)
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV: {exc}") from exc
    if not out:
        raise DataError(f"{path}: no data rows after the header")
    return out, sha


def _with_line(item: LabelledImage, line: int) -> LabelledImage:
    """Keep the manifest line in the record's notes (unknown labels are named by line)."""
    rec = item.record
    note = f"manifest line {line}"
    return LabelledImage(
        Record(rec.id, rec.image, rec.label, rec.annotation, rec.error, (note,)),
        item.labels,
        item.annotations,
    )


def read_multilabel_jsonl(config: DataConfig) -> tuple[list[LabelledImage], str]:
    """Index a multi-label JSONL manifest; returns ``(images, sha256 of the file)``."""
    path = config.manifest
    text, sha = _read(path)
    out: list[LabelledImage] = []
    seen: set[str] = set()
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line}: invalid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict) or "labels" not in obj:
            raise DataError(
                f"{path}: line {line}: expected an object with `image` and `labels` "
                f'([model] output = "sigmoid"), got {str(obj)[:80]!r}'
            )
        value = obj["labels"]
        if isinstance(value, str):
            labels = split_label_names(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            labels = split_label_names(SEPARATOR.join(value))
        else:
            raise DataError(
                f"{path}: line {line}: `labels` must be a list of names or a `;`-separated "
                f"string, got {value!r}"
            )
        image = obj.get("image")
        error = None
        if not isinstance(image, str) or not image.strip():
            error, image = f"manifest line {line}: `image` must be a non-empty string", ""
        rid = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else image
        rid = rid or f"line {line}"
        if error is None and rid in seen:
            error = f"manifest line {line}: duplicate id {rid!r}"
        seen.add(rid)
        masks_obj = obj.get("masks") or {}
        if not isinstance(masks_obj, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in masks_obj.items()
        ):
            raise DataError(
                f"{path}: line {line}: `masks` must map label names to mask paths, "
                f"got {masks_obj!r}"
            )
        for name in masks_obj:
            if name not in labels:
                raise DataError(
                    f"{path}: line {line}: `masks` names {name!r}, which is not one of the "
                    f"image's labels {list(labels)}"
                )
        masks = tuple((k, MaskFileAnnotation(v.strip())) for k, v in masks_obj.items())
        note = (f"manifest line {line}",)
        rec = Record(str(rid), image.strip(), None, None, error, note)
        out.append(LabelledImage(rec, labels, masks))
    if not out:
        raise DataError(f"{path}: line 1: no rows (empty manifest)")
    return out, sha


def read_multilabel_coco(config: DataConfig) -> tuple[list[LabelledImage], tuple[str, ...], str]:
    """Index a COCO json as a multi-label set: labels = categories of the image's instances."""
    path = config.annotations
    if path is None:
        raise DataError("[data] annotations: not set (the COCO json file)")
    text, sha = _read(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(f"{path}: needs the lists `images`, `annotations` and `categories`")
    cats: dict[Any, str] = {}
    for cat in doc["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("name"), str):
            raise DataError(f"{path}: invalid category entry {cat!r}")
        cats[cat.get("id")] = cat["name"]
    ids = sorted(cats) if all(isinstance(k, int) for k in cats) else list(cats)
    names = tuple(cats[k] for k in ids)
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            continue
        if ann.get("category_id") not in cats:
            raise DataError(
                f"{path}: annotation {ann.get('id')!r} of image {ann.get('image_id')!r} has "
                f"unknown category_id {ann.get('category_id')!r} (not in `categories`)"
            )
        by_image[ann.get("image_id")].append(ann)
    out: list[LabelledImage] = []
    fields = ("segmentation", "bbox", "category_id", "iscrowd")
    for entry in doc["images"]:
        if not isinstance(entry, dict):
            raise DataError(f"{path}: invalid image entry {entry!r}")
        fname, iid = entry.get("file_name"), entry.get("id")
        w, h = entry.get("width"), entry.get("height")
        rid = fname if isinstance(fname, str) and fname else f"image id {iid}"
        error = None
        if not isinstance(fname, str) or not fname:
            error = "COCO image entry without file_name"
        elif not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            error = f"COCO image entry with invalid width/height {w!r}x{h!r}"
        per: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ann in by_image.get(iid, []):
            per[cats[ann["category_id"]]].append({k: ann[k] for k in fields if k in ann})
        labels = tuple(n for n in names if n in per)
        anns: tuple[tuple[str, Any], ...] = ()
        if error is None:
            anns = tuple(
                (n, CocoAnnotation(json.dumps(per[n], sort_keys=True), int(w), int(h)))  # type: ignore[arg-type]
                for n in labels
            )
        out.append(LabelledImage(Record(rid, fname or "", None, None, error), labels, anns))
    if not out:
        raise DataError(f"{path}: no images")
    return out, names, sha


class MultiLabelDataset(FileDataset):
    """An :class:`~auditor.data.sample.EvalDataset` whose samples are
    :class:`MultiLabelSample` (label sets, one mask per label).

    ``classes`` are the label names in the model's output order (``[data] classes``, else the
    sorted unique names; COCO: category-id order). ``multilabel`` is True: the runner audits it
    with the multi-label batch processor (:mod:`auditor.audit.multilabel`).
    """

    multilabel = True

    def __init__(
        self,
        config: DataConfig,
        images: Sequence[LabelledImage],
        classes: Sequence[str],
        annotation_sha256: str,
    ) -> None:
        placeholder = classes[0]
        records = [
            Record(
                it.record.id,
                it.record.image,
                it.labels[0] if it.labels else placeholder,
                None,
                it.record.error,
                (),
            )
            for it in images
        ]
        super().__init__(config, records, classes, annotation_sha256)
        self.images: tuple[LabelledImage, ...] = tuple(images)

    def pair_view(self) -> PairView:
        """The (image, label) pairs keyed as the run's rows (gallery)."""
        return PairView(self)

    def label_sets(self) -> list[tuple[int, ...]]:
        """Every image's label indices (no image is decoded)."""
        index = {n: i for i, n in enumerate(self.classes)}
        return [tuple(index[n] for n in it.labels) for it in self.images]

    def load(self, index: int) -> MultiLabelSample:
        """Load the image and rasterise each label's mask on the image's geometry.

        Raises:
            SampleSkipped: bad image or mask (reason in the exception).
        """
        import torch

        base = super().load(index)
        item = self.images[int(index)]
        n_labels = len(self.classes)
        lookup = {n: i for i, n in enumerate(self.classes)}
        masks: torch.Tensor | None = None
        has = [False] * n_labels
        shas: list[str] = []
        notes = list(base.notes)
        for name, annotation in item.annotations:
            rec = Record(item.record.id, item.record.image, name, annotation, None, ())
            try:
                prepared = self._prepare_record(rec)
            except BadSample as exc:
                raise SampleSkipped(item.record.id, f"label {name!r}: {exc.reason}") from None
            if prepared.mask is None:
                continue
            if masks is None:
                h, w = prepared.mask.shape
                masks = torch.zeros((n_labels, h, w), dtype=torch.bool)
            masks[lookup[name]] = torch.from_numpy(np.ascontiguousarray(prepared.mask))
            has[lookup[name]] = True
            shas.append(f"{name}:{prepared.mask_sha256}")
            notes.extend(f"label {name!r}: {n}" for n in prepared.notes if n not in notes)
        union = None if masks is None else masks.any(0)
        return MultiLabelSample(
            id=base.id,
            index=base.index,
            image=base.image,
            mask=union,
            label=lookup[item.labels[0]] if item.labels else 0,
            image_sha256=base.image_sha256,
            mask_sha256=canonical_sha256(shas) if shas else None,
            notes=tuple(notes),
            label_set=tuple(lookup[n] for n in item.labels),
            label_masks=masks,
            label_has_mask=tuple(has),
        )


def _check_known(where: Any, images: Sequence[LabelledImage], classes: Sequence[str]) -> None:
    known = set(classes)
    for it in images:
        for name in it.labels:
            if name not in known:
                line = it.record.notes[0] if it.record.notes else f"id {it.record.id!r}"
                raise DataError(
                    f"{where}: {line}: unknown label {name!r} (not in [data] classes "
                    f"{list(classes)[:8]}{'…' if len(classes) > 8 else ''})"
                )


def open_multilabel_dataset(config: DataConfig) -> MultiLabelDataset:
    """Index a multi-label dataset (``[model] output = "sigmoid"``); no image is decoded.

    Raises:
        DataError: unreadable file, a missing ``labels`` column, an unknown label name (named
            with its file and line), no usable image.
    """
    from pathlib import Path

    if not Path(config.root).is_dir():
        raise DataError(f"[data] root: directory not found: {config.root}")
    own: tuple[str, ...] | None = None
    if config.format == "manifest":
        images, sha = read_multilabel_csv(config)
    elif config.format == "jsonl":
        images, sha = read_multilabel_jsonl(config)
    elif config.format == "coco":
        images, own, sha = read_multilabel_coco(config)
    else:
        raise DataError(
            f'[data] format = {config.format!r} has no label sets; [model] output = "sigmoid" '
            f'needs "manifest", "jsonl" (with a `labels` column) or "coco"'
        )
    where = config.manifest if config.format != "coco" else config.annotations
    classes = config.classes or own or tuple(sorted({n for it in images for n in it.labels}))
    if not classes:
        raise DataError(f"{where}: no label found in any row (set [data] classes)")
    _check_known(where, images, classes)
    if all(it.record.error is not None for it in images):
        raise DataError(f"{where}: no usable row; first problem: {images[0].record.error}")
    return MultiLabelDataset(config, images, classes, sha)


def is_multilabel(dataset: Any) -> bool:
    """Whether ``dataset`` is audited as multi-label (it says so: ``multilabel = True``)."""
    return bool(getattr(dataset, "multilabel", False))


class PairView:
    """The (image, label) pairs of a :class:`MultiLabelDataset` as the gallery reads samples:
    ``load_display(image_index * L + label)`` gives the image and THAT label's mask."""

    def __init__(self, dataset: MultiLabelDataset) -> None:
        self.dataset = dataset
        self.config = dataset.config
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def annotation_sha256(self) -> str:
        return self.dataset.annotation_sha256()

    def load_display(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        n_labels = len(self.classes)
        image_index, label = divmod(int(index), n_labels)
        display, union = self.dataset.load_display(image_index)
        item = self.dataset.images[image_index]
        name = self.classes[label]
        for ann_name, annotation in item.annotations:
            if ann_name == name:
                rec = Record(item.record.id, item.record.image, name, annotation, None, ())
                try:
                    return display, self.dataset._prepare_record(rec).mask
                except BadSample:
                    return display, None
        return display, union
