"""The dataset shared by every file format: indexed records -> :class:`EvalSample`.

A reader (manifest, ImageFolder, COCO, VOC, trimap) only builds a list of :class:`Record`
(cheap, at open time); decoding, path checks, rasterising, geometry and normalisation happen
here, per sample, in :meth:`FileDataset.load` - identically for every format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from auditor.data.config import DataConfig
from auditor.data.gpu_decode import (
    decode_jpeg_rgb,
    gpu_decodable,
    normalise_tensor,
    resize_tensor,
)
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

__all__ = [
    "Annotation",
    "BoxesAnnotation",
    "FileDataset",
    "MaskFileAnnotation",
    "Record",
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


def default_classes(records: Sequence[Record]) -> tuple[str, ...]:
    """Sorted unique labels of the usable records."""
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
        self.records: tuple[Record, ...] = tuple(records)
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

    def _record(self, index: int) -> Record:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"`index` must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self.records):
            raise IndexError(f"`index` must be in [0, {len(self.records)}), got {index}")
        return self.records[int(index)]

    def sample_id(self, index: int) -> str:
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
        if self.decode_device is not None and gpu_decodable(data, cfg.max_image_pixels):
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
            display = resize_tensor(on_device, cfg.input_size, cfg.resize)
        else:
            display = resize_image(decoded.image, cfg.input_size, cfg.resize)
        return _Prepared(label, display, mask, decoded.sha256, mask_sha, tuple(notes))

    def load(self, index: int) -> EvalSample:
        """Load, check, resize and normalise one sample.

        Raises:
            SampleSkipped: bad data (reason in the exception).
        """
        prepared = self._prepare(index)
        if isinstance(prepared.display, torch.Tensor):
            image = normalise_tensor(prepared.display, self.config.mean, self.config.std)
        else:
            image = normalise(prepared.display, self.config.mean, self.config.std)
        mask = None if prepared.mask is None else torch.from_numpy(prepared.mask.copy())
        return EvalSample(
            id=self.records[index].id,
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
        display = prepared.display
        if isinstance(display, torch.Tensor):
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
