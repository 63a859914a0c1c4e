"""The dataset shared by every file format: indexed records -> :class:`EvalSample`.

A reader (manifest, ImageFolder, COCO, VOC, trimap) only builds a list of :class:`Record`
(cheap, at open time); decoding, path checks, rasterising, geometry and normalisation happen
here, per sample, in :meth:`FileDataset.load` - identically for every format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.data.config import DataConfig
from auditor.data.images import (
    BadSample,
    binary_from_values,
    decode_image,
    decode_mask_values,
    read_bytes,
    sha256_bytes,
    trimap_to_mask,
)
from auditor.data.safety import safe_join
from auditor.data.sample import EvalSample
from auditor.data.transforms import normalise, rasterise_boxes, resize_image, resize_mask
from auditor.errors import SampleSkipped, UnsafePathError

if TYPE_CHECKING:  # torch is imported where tensors are made: finalize never loads it
    import torch


def _is_tensor(value: object) -> bool:
    """``isinstance(value, torch.Tensor)`` without importing torch (no tensor exists before
    torch is imported)."""
    import sys

    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(value, torch_mod.Tensor)

__all__ = [
    "Annotation",
    "BoxesAnnotation",
    "FileDataset",
    "MaskFileAnnotation",
    "Record",
    "RecordTable",
    "RecordTableBuilder",
    "canonical_sha256",
    "read_mask_file",
]


def canonical_sha256(obj: Any) -> str:
    """sha256 of a canonical JSON encoding (sorted keys, no spaces; NaN written as NaN)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Annotation(Protocol):
    """Turns one sample's annotation into a bool mask at the image's original resolution."""

    def rasterise(
        self, dataset: FileDataset, label: str, height: int, width: int
    ) -> tuple[np.ndarray, tuple[str, ...], str]:
        """Return ``(mask bool [h, w], notes, sha256 of the annotation source)``.

        ``(h, w)`` is the mask's own size (a mask file may differ from the image: the dataset
        checks). Raise :class:`BadSample` when no usable mask can be made.
        """
        ...


def read_mask_file(
    dataset: FileDataset, relative: str, base: Path | None = None
) -> tuple[np.ndarray, tuple[str, ...], str]:
    """Safely resolve, read and decode a mask file; returns ``(values, notes, sha256)``."""
    root = base if base is not None else dataset.config.root
    try:
        path = safe_join(root, relative)
    except UnsafePathError as exc:
        raise BadSample(f"{exc} (mask)") from exc
    data = read_bytes(path, "mask", dataset.config.max_file_bytes)
    values, notes = decode_mask_values(data, dataset.config.max_image_pixels)
    return values, notes, sha256_bytes(data)


@dataclass(frozen=True)
class MaskFileAnnotation:
    """A mask image file: ``"binary"`` (nonzero = object) or ``"trimap"`` (1/2/3)."""

    path: str
    encoding: str = "binary"
    base: Path | None = None  # folder the path is relative to (default: dataset root)

    def rasterise(
        self, dataset: FileDataset, label: str, height: int, width: int
    ) -> tuple[np.ndarray, tuple[str, ...], str]:
        values, notes, sha = read_mask_file(dataset, self.path, self.base)
        if self.encoding == "trimap":
            mask, more = trimap_to_mask(values, dataset.config.trimap_boundary)
        else:
            mask, more = binary_from_values(values)
        return mask, notes + more, sha


@dataclass(frozen=True)
class BoxesAnnotation:
    """Boxes ``(x0, y0, x1, y1)`` in original-image pixels, x1/y1 exclusive; mask = union.

    If every box is rejected (NaN, inverted, outside), the sample is SKIPPED: an annotation was
    given but none of it is usable, and evaluating it as unannotated would hide the problem.
    """

    boxes: tuple[tuple[float, float, float, float], ...]

    def rasterise(
        self, dataset: FileDataset, label: str, height: int, width: int
    ) -> tuple[np.ndarray, tuple[str, ...], str]:
        mask, notes, accepted = rasterise_boxes(self.boxes, height, width)
        if accepted == 0:
            raise BadSample("no valid box: " + "; ".join(notes))
        sha = canonical_sha256({"boxes": [list(b) for b in self.boxes]})
        return mask, notes, sha


@dataclass(frozen=True)
class Record:
    """One indexed sample: untrusted relative paths, a class name, an annotation.

    ``error`` set at indexing time (bad manifest row, unsafe XML, COCO image without
    annotation...) makes :meth:`FileDataset.load` skip the sample with that reason.
    """

    id: str
    image: str
    label: str | None
    annotation: Annotation | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()
    image_base: Path | None = None  # folder `image` is relative to (default: dataset root)


@dataclass(frozen=True)
class _Prepared:
    label: int
    display: np.ndarray | torch.Tensor  # uint8 [H, W, 3] (PIL) or [3, H, W] (decode_device)
    mask: np.ndarray | None
    image_sha256: str
    mask_sha256: str | None
    notes: tuple[str, ...]


class RecordTable(Sequence[Record]):
    """Records stored by column, each :class:`Record` made on access (issue 14).

    A tuple of frozen dataclasses costs about 1.6 KB per sample (the record, its box tuple,
    its annotation object and four strings): 1.6 GB at a million samples, held for the whole
    audit. Here ids, image paths and labels are Arrow string arrays (their bytes plus a 4-byte
    offset each), boxes one float64 ``[k, 4]`` array with per-record offsets, and the rare
    fields (errors, notes, other annotation kinds, ``image_base``) sparse dicts: about 100
    bytes per sample for a box manifest. ``table[i]`` returns a :class:`Record` equal to the
    one the reader would have built (``==`` holds: same types, same values).

    Build it with :class:`RecordTableBuilder`.
    """

    def __init__(
        self,
        ids: pa.Array,
        images: pa.Array,
        labels: pa.Array,
        box_offsets: np.ndarray,
        boxes: np.ndarray,
        sparse: dict[str, dict[int, Any]],
        masks: pa.Array | None = None,
        mask_encoding: str = "binary",
    ) -> None:
        self._ids, self._images, self._labels = ids, images, labels
        self._masks, self._mask_encoding = masks, mask_encoding
        self._box_offsets, self._boxes = box_offsets, boxes
        self._errors: dict[int, str] = sparse.get("error", {})
        self._notes: dict[int, tuple[str, ...]] = sparse.get("notes", {})
        self._annotations: dict[int, Annotation] = sparse.get("annotation", {})
        self._bases: dict[int, Path] = sparse.get("image_base", {})
        self._n = len(ids)

    def __len__(self) -> int:
        return self._n

    def _one(self, i: int) -> Record:
        annotation: Annotation | None = self._annotations.get(i)
        if self._masks is not None and self._masks[i].is_valid:
            annotation = MaskFileAnnotation(_text(self._masks[i].as_py()), self._mask_encoding)
        lo, hi = int(self._box_offsets[i]), int(self._box_offsets[i + 1])
        if hi > lo:
            annotation = BoxesAnnotation(tuple(tuple(b) for b in self._boxes[lo:hi].tolist()))  # type: ignore[misc]
        label = self._labels[i].as_py()
        return Record(
            _text(self._ids[i].as_py()),
            _text(self._images[i].as_py()),
            None if label is None else _text(label),
            annotation,
            self._errors.get(i),
            self._notes.get(i, ()),
            self._bases.get(i),
        )

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self._one(i) for i in range(*index.indices(self._n)))
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"record index {index} out of range [0, {self._n})")
        return self._one(i)

    def __iter__(self) -> Iterator[Record]:
        for i in range(self._n):
            yield self._one(i)

    def record_id(self, index: int) -> str:
        """The id of record ``index`` without making the record."""
        return _text(self._ids[int(index)].as_py())

    def usable_labels(self) -> set[str]:
        """Labels of the records without an error (what :func:`default_classes` sorts)."""
        if not self._errors:
            ok = self._labels
        else:
            keep = np.ones(self._n, bool)
            keep[list(self._errors)] = False
            ok = self._labels.filter(pa.array(keep))
        return {_text(v) for v in pc.unique(ok).to_pylist() if v is not None}

    @property
    def n_errors(self) -> int:
        """How many records carry an indexing ``error``."""
        return len(self._errors)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the sparse dicts not counted)."""
        return int(
            self._ids.nbytes
            + self._images.nbytes
            + self._labels.nbytes
            + self._box_offsets.nbytes
            + self._boxes.nbytes
            + (self._masks.nbytes if self._masks is not None else 0)
        )


def _text(value: str | bytes) -> str:
    """A stored string back (a column that held a lone surrogate is stored as bytes)."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _string_array(values: list[str | None]) -> pa.Array:
    """Arrow strings; a lone surrogate (JSON ``"\\ud800"``) is not UTF-8, so such a chunk is
    stored as ``surrogatepass`` bytes and :func:`_text` decodes it back."""
    try:
        return pa.array(values, pa.string())
    except (UnicodeEncodeError, pa.ArrowException):
        return pa.array(
            [None if v is None else v.encode("utf-8", "surrogatepass") for v in values],
            pa.binary(),
        )


class RecordTableBuilder:
    """Appends records field by field into a :class:`RecordTable`; columns are converted
    to Arrow every :attr:`CHUNK` records, so the Python strings of at most one chunk live."""

    CHUNK = 65_536

    def __init__(self) -> None:
        names = ("id", "image", "label", "mask")
        self._cols: dict[str, list[pa.Array]] = {k: [] for k in names}
        self._pending: dict[str, list[str | None]] = {k: [] for k in names}
        self._mask_encoding: str | None = None
        self._box_counts: list[np.ndarray] = []
        self._pending_counts: list[int] = []
        self._box_parts: list[np.ndarray] = []
        self._pending_boxes: list[tuple[float, float, float, float]] = []
        self._sparse: dict[str, dict[int, Any]] = {
            "error": {},
            "notes": {},
            "annotation": {},
            "image_base": {},
        }
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(
        self,
        id: str,
        image: str,
        label: str | None,
        annotation: Annotation | None = None,
        error: str | None = None,
        notes: tuple[str, ...] = (),
        image_base: Path | None = None,
    ) -> None:
        """Add one record (the fields of :class:`Record`, in its order)."""
        i = self._n
        self._pending["id"].append(id)
        self._pending["image"].append(image)
        self._pending["label"].append(label)
        mask: str | None = None
        if type(annotation) is BoxesAnnotation and annotation.boxes:
            self._pending_boxes.extend(annotation.boxes)
            self._pending_counts.append(len(annotation.boxes))
        else:
            self._pending_counts.append(0)
            if (
                type(annotation) is MaskFileAnnotation
                and annotation.base is None
                and self._mask_encoding in (None, annotation.encoding)
            ):
                self._mask_encoding = annotation.encoding
                mask = annotation.path
            elif annotation is not None:
                self._sparse["annotation"][i] = annotation
        self._pending["mask"].append(mask)
        if error is not None:
            self._sparse["error"][i] = error
        if notes:
            self._sparse["notes"][i] = tuple(notes)
        if image_base is not None:
            self._sparse["image_base"][i] = image_base
        self._n += 1
        if len(self._pending_counts) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_counts:
            return
        for name, values in self._pending.items():
            self._cols[name].append(_string_array(values))
            values.clear()
        self._box_counts.append(np.asarray(self._pending_counts, np.int64))
        self._pending_counts = []
        self._box_parts.append(np.asarray(self._pending_boxes, np.float64).reshape(-1, 4))
        self._pending_boxes = []

    def build(self) -> RecordTable:
        """The table of every appended record."""
        self._flush()

        def column(name: str) -> pa.Array:
            parts = self._cols[name]
            if not parts:
                return pa.array([], pa.string())
            if any(p.type == pa.binary() for p in parts):
                parts = [p.cast(pa.binary()) for p in parts]
            return pa.concat_arrays(parts) if len(parts) > 1 else parts[0]

        counts = np.concatenate(self._box_counts) if self._box_counts else np.zeros(0, np.int64)
        offsets = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        boxes = np.concatenate(self._box_parts) if self._box_parts else np.zeros((0, 4))
        masks = column("mask")
        return RecordTable(
            column("id"),
            column("image"),
            column("label"),
            offsets,
            boxes,
            self._sparse,
            masks if masks.null_count < len(masks) else None,
            self._mask_encoding or "binary",
        )


def default_classes(records: Sequence[Record]) -> tuple[str, ...]:
    """Sorted unique labels of the usable records."""
    if isinstance(records, RecordTable):
        return tuple(sorted(records.usable_labels()))
    return tuple(sorted({r.label for r in records if r.error is None and r.label is not None}))


class FileDataset:
    """An :class:`~auditor.data.sample.EvalDataset` over indexed file records."""

    def __init__(
        self,
        config: DataConfig,
        records: Sequence[Record],
        classes: Sequence[str],
        annotation_sha256: str,
    ) -> None:
        self.config = config
        #: The records: a :class:`RecordTable` (column storage) as the manifest readers give,
        #: else a tuple.
        self.records: Sequence[Record] = (
            records if isinstance(records, RecordTable) else tuple(records)
        )
        self.classes: tuple[str, ...] = tuple(classes)
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self._annotation_sha256 = annotation_sha256
        #: Device on which JPEG images are decoded and resized (``[data] gpu_decode``; set by
        #: the runner when it decides so, see :mod:`auditor.data.gpu_decode`); None = PIL on
        #: the CPU. Masks are always made on the CPU over the same source rectangle.
        self.decode_device: torch.device | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"FileDataset(format={self.config.format!r}, root={str(self.config.root)!r}, "
            f"n={len(self)}, classes={len(self.classes)})"
        )

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"`index` must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self.records):
            raise IndexError(f"`index` must be in [0, {len(self.records)}), got {index}")

    def _record(self, index: int) -> Record:
        self._check_index(index)
        return self.records[int(index)]

    def sample_id(self, index: int) -> str:
        if isinstance(self.records, RecordTable):
            self._check_index(index)
            return self.records.record_id(int(index))
        return self._record(index).id

    def annotation_sha256(self) -> str:
        return self._annotation_sha256

    def _prepare(self, index: int) -> _Prepared:
        record = self._record(index)
        if record.error is not None:
            raise SampleSkipped(record.id, record.error)
        try:
            return self._prepare_record(record)
        except BadSample as exc:
            raise SampleSkipped(record.id, exc.reason) from None

    def _prepare_record(self, record: Record) -> _Prepared:
        cfg = self.config
        if record.label is None:
            raise BadSample("no label")
        label = self._class_index.get(record.label)
        if label is None:
            raise BadSample(f"label {record.label!r} not in classes")
        try:
            path = safe_join(record.image_base or cfg.root, record.image)
        except UnsafePathError as exc:
            raise BadSample(f"{exc} (image)") from exc
        data = read_bytes(path, "image", cfg.max_file_bytes)
        on_device: torch.Tensor | None = None
        if self.decode_device is not None:
            from auditor.data.gpu_decode import decode_jpeg_rgb, gpu_decodable

            if gpu_decodable(data, cfg.max_image_pixels):
                try:
                    on_device = decode_jpeg_rgb(data, self.decode_device)
                except RuntimeError:
                    on_device = None  # the CPU path decodes it (and names a corrupt file)
        decoded: Any
        if on_device is not None:
            decoded = _DeviceDecoded(sha256_bytes(data), (on_device.shape[2], on_device.shape[1]))
            width, height = decoded.stored_size
        else:
            decoded = decode_image(data, cfg.max_image_pixels)
            width, height = decoded.image.size
        notes = list(record.notes) + list(decoded.notes)
        mask: np.ndarray | None = None
        mask_sha: str | None = None
        if record.annotation is not None:
            raw, mask_notes, mask_sha = record.annotation.rasterise(
                self, record.label, height, width
            )
            notes.extend(mask_notes)
            _check_exif_frame(record.annotation, decoded, raw.shape, (height, width))
            if raw.shape != (height, width):
                mh, mw = raw.shape
                problem = f"mask size {mw}x{mh} != image size {width}x{height}"
                if (mw, mh) == decoded.stored_size and decoded.stored_size != (width, height):
                    problem += (
                        " (the mask matches the image BEFORE its EXIF rotation; masks must be "
                        "stored in the displayed orientation)"
                    )
                if not cfg.mask_resize:
                    raise BadSample(problem + "; set [data] mask_resize = true to resize it")
                raw = resize_mask(raw, (height, width), "direct")
                notes.append(problem + ": mask resized (nearest neighbour)")
            mask = resize_mask(raw, cfg.input_size, cfg.resize)
        display: np.ndarray | torch.Tensor
        if on_device is not None:  # same source_box and filter as resize_image
            from auditor.data.gpu_decode import resize_tensor

            display = resize_tensor(on_device, cfg.input_size, cfg.resize)
        else:
            display = resize_image(decoded.image, cfg.input_size, cfg.resize)
        return _Prepared(label, display, mask, decoded.sha256, mask_sha, tuple(notes))

    def load(self, index: int) -> EvalSample:
        """Load, check, resize and normalise one sample.

        Raises:
            SampleSkipped: bad data (reason in the exception).
        """
        import torch

        prepared = self._prepare(index)
        if isinstance(prepared.display, torch.Tensor):
            from auditor.data.gpu_decode import normalise_tensor

            image = normalise_tensor(prepared.display, self.config.mean, self.config.std)
        else:
            image = normalise(prepared.display, self.config.mean, self.config.std)
        mask = None if prepared.mask is None else torch.from_numpy(prepared.mask.copy())
        return EvalSample(
            id=self.sample_id(index),
            index=int(index),
            image=image,
            mask=mask,
            label=prepared.label,
            image_sha256=prepared.image_sha256,
            mask_sha256=prepared.mask_sha256,
            notes=prepared.notes,
        )

    def image_bytes(self, index: int) -> bytes | None:
        """The raw bytes of sample ``index``'s image file, or None when it cannot be read
        (used to probe ``[data] gpu_decode``; the audit itself reports unreadable files)."""
        record = self._record(index)
        if record.error is not None:
            return None
        try:
            path = safe_join(record.image_base or self.config.root, record.image)
            return read_bytes(path, "image", self.config.max_file_bytes)
        except (BadSample, UnsafePathError, OSError):
            return None

    def load_display(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 ``[H, W, 3]`` image (geometry of ``load``, not normalised) and bool mask."""
        prepared = self._prepare(index)
        display: Any = prepared.display
        if _is_tensor(display):
            display = display.permute(1, 2, 0).cpu().numpy()
        return display, prepared.mask


@dataclass(frozen=True)
class _DeviceDecoded:
    """What the mask checks need of an image decoded on the device: no EXIF turn (the GPU
    path takes only images without one), stored size = displayed size, no notes."""

    sha256: str
    stored_size: tuple[int, int]
    notes: tuple[str, ...] = ()
    orientation: int = 1


def _check_exif_frame(
    annotation: object, decoded: Any, mask_shape: tuple[int, ...], displayed: tuple[int, int]
) -> None:
    """One rule for every EXIF-oriented image, whatever its shape (issue 13).

    The image is used in its displayed orientation; its annotation must be too. A mask proves
    its frame only by its shape: when the EXIF transform changes the shape (a 90° turn of a
    non-square image), a mask of the displayed shape is in the displayed frame (accepted) and
    one of the stored shape is not (refused later, naming the mismatch). When the transform
    keeps the shape (square images, 180° turns, mirrorings) or the annotation is a set of box
    coordinates, nothing tells the frames apart: the sample is skipped with that reason,
    rather than measured against a mask that may be turned relative to its image.
    """
    orientation = int(getattr(decoded, "orientation", 1) or 1)
    if orientation == 1:
        return
    stored_hw = (decoded.stored_size[1], decoded.stored_size[0])
    kind = "boxes" if type(annotation).__name__ == "BoxesAnnotation" else "mask"
    if kind == "mask" and stored_hw != displayed and tuple(mask_shape) == displayed:
        return  # only the displayed frame has this shape: unambiguous
    if kind == "mask" and stored_hw != displayed:
        return  # the stored shape: the size check names the mismatch
    raise BadSample(
        f"image has EXIF orientation {orientation} (turned/flipped for display) and its {kind} "
        f"cannot show whether it was drawn on the stored or the displayed pixels; save the "
        f"image in its displayed orientation without the EXIF tag (e.g. PIL "
        f"ImageOps.exif_transpose) and its {kind} to match"
    )
