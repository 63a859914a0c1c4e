"""Entry points: :func:`open_dataset` (config path) and :func:`dataset_from_torch` (Python API)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from auditor.data.base import FileDataset, Record, canonical_sha256, default_classes
from auditor.data.coco import read_coco
from auditor.data.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, validate_choices
from auditor.data.imagefolder import read_imagefolder
from auditor.data.images import BadSample, binary_from_values, sha256_bytes
from auditor.data.manifest import read_csv_manifest, read_jsonl_manifest
from auditor.data.sample import EvalDataset, EvalSample
from auditor.data.transforms import RESIZE_MODES, normalise, resize_image, resize_mask
from auditor.data.trimap import read_trimap
from auditor.data.voc import read_voc
from auditor.errors import DataError, SampleSkipped

__all__ = ["TorchEvalDataset", "dataset_from_torch", "open_dataset"]


def open_dataset(config: DataConfig) -> EvalDataset:
    """Index the dataset described by ``config`` (cheap: no image is decoded here).

    Classes: ``config.classes`` when given, else the format's own list (ImageFolder folder
    names, COCO category names) or the sorted unique labels.

    Raises:
        DataError: unreadable annotation file, no usable sample, missing root.
        ConfigError: an invalid option in a programmatically built config.
    """
    if not isinstance(config, DataConfig):
        raise TypeError(f"`config` must be a DataConfig, got {type(config).__name__}")
    validate_choices(config)
    if not Path(config.root).is_dir():
        raise DataError(f"[data] root: directory not found: {config.root}")
    config_classes: tuple[str, ...] | None = None
    records: Sequence[Record]
    fmt = config.format
    if fmt == "manifest":
        records, sha = read_csv_manifest(config)
    elif fmt == "jsonl":
        records, sha = read_jsonl_manifest(config)
    elif fmt == "imagefolder":
        records, config_classes, sha = read_imagefolder(config)
    elif fmt == "coco":
        records, config_classes, sha = read_coco(config)
    elif fmt == "voc":
        records, sha = read_voc(config)
    elif fmt == "trimap":
        records, sha = read_trimap(config)
    else:
        raise DataError(f"[data] format: unknown format {fmt!r}")
    classes = config.classes or config_classes or default_classes(records)
    if not classes:
        raise DataError(f"{config.root}: no class found (set [data] classes)")
    return FileDataset(config, records, classes, sha)


def _to_pil_rgb(image: Any) -> tuple[Image.Image, bytes]:
    """Image from a torch dataset -> (RGB PIL image, canonical bytes for hashing)."""
    import torch

    if isinstance(image, Image.Image):
        pil = image.convert("RGB") if image.mode != "RGB" else image
    else:
        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            if t.ndim == 2:
                t = t.unsqueeze(0)
            if t.ndim != 3 or t.shape[0] not in (1, 3):
                raise BadSample(f"image tensor must be [3, H, W] or [H, W], got {tuple(t.shape)}")
            arr = t.permute(1, 2, 0).numpy()
        elif isinstance(image, np.ndarray):
            arr = image[:, :, None] if image.ndim == 2 else image
            if arr.ndim != 3 or arr.shape[2] not in (1, 3):
                raise BadSample(f"image array must be [H, W, 3] or [H, W], got {image.shape}")
        else:
            raise BadSample(f"unsupported image type {type(image).__name__}")
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise BadSample("image has NaN or infinite values")
            if arr.min() < 0 or arr.max() > 1:
                raise BadSample("float image values must lie in [0, 1]")
            arr = np.round(arr * 255.0).astype(np.uint8)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        pil = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    raw = np.asarray(pil, dtype=np.uint8)
    header = f"{raw.shape[0]}x{raw.shape[1]}x3:".encode()
    return pil, header + raw.tobytes()


def _to_mask_values(mask: Any) -> np.ndarray:
    import torch

    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L") if mask.mode not in ("L", "1", "P") else mask)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if isinstance(mask, np.ndarray):
        arr = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
        if arr.ndim != 2:
            raise BadSample(f"mask must be [H, W], got shape {mask.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadSample("mask has NaN or infinite values")
        return arr
    raise BadSample(f"unsupported mask type {type(mask).__name__}")


class TorchEvalDataset:
    """:class:`~auditor.data.sample.EvalDataset` over a torchvision-style dataset whose items
    are ``(image, label)`` or ``(image, label, mask)``.

    ``image``: PIL image, tensor ``[3, H, W]``/``[H, W]`` (uint8, or float in [0, 1]) or
    ndarray ``[H, W, 3]``/``[H, W]``; ``label``: class index or class name; ``mask``: ``None``,
    PIL image, tensor or ndarray ``[H, W]`` (nonzero = object). ``image_sha256`` hashes the
    decoded RGB pixels (there are no file bytes here); ``annotation_sha256`` only fingerprints
    the dataset type and length.
    """

    def __init__(self, dataset: Any, config: DataConfig) -> None:
        self.dataset = dataset
        self.config = config
        self.classes: tuple[str, ...] = config.classes or ()
        self._index = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_id(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"`index` must be in [0, {len(self)}), got {index}")
        return str(index)

    def annotation_sha256(self) -> str:
        kind = type(self.dataset)
        return canonical_sha256(
            {"python": f"{kind.__module__}.{kind.__qualname__}", "len": len(self)}
        )

    def _prepare(
        self, index: int
    ) -> tuple[int, np.ndarray, np.ndarray | None, str, str | None, tuple[str, ...]]:
        import torch

        sid = self.sample_id(index)
        try:
            item = self.dataset[index]
        except Exception as exc:  # noqa: BLE001 - user code: any failure skips this sample
            raise SampleSkipped(sid, f"dataset raised {type(exc).__name__}: {exc}") from None
        try:
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise BadSample("item must be (image, label) or (image, label, mask)")
            image, label = item[0], item[1]
            mask = item[2] if len(item) == 3 else None
            if isinstance(label, torch.Tensor) and label.numel() == 1:
                label = label.item()
            if isinstance(label, str):
                if label not in self._index:
                    raise BadSample(f"label {label!r} not in classes")
                label_index = self._index[label]
            elif isinstance(label, int | np.integer) and not isinstance(label, bool):
                if not 0 <= int(label) < len(self.classes):
                    raise BadSample(f"label {int(label)} out of range [0, {len(self.classes)})")
                label_index = int(label)
            else:
                raise BadSample(f"label must be an int or a class name, got {label!r}")
            pil, raw = _to_pil_rgb(image)
            notes: list[str] = []
            mask_out = None
            mask_sha = None
            if mask is not None:
                values = _to_mask_values(mask)
                mask_sha = sha256_bytes(
                    f"{values.shape}:".encode() + np.ascontiguousarray(values != 0).tobytes()
                )
                binary, more = binary_from_values(values)
                notes.extend(more)
                if binary.shape != (pil.height, pil.width):
                    problem = (
                        f"mask size {binary.shape[1]}x{binary.shape[0]} != image size "
                        f"{pil.width}x{pil.height}"
                    )
                    if not self.config.mask_resize:
                        raise BadSample(problem)
                    binary = resize_mask(binary, (pil.height, pil.width), "direct")
                    notes.append(problem + ": mask resized (nearest neighbour)")
                mask_out = resize_mask(binary, self.config.input_size, self.config.resize)
            display = resize_image(pil, self.config.input_size, self.config.resize)
        except BadSample as exc:
            raise SampleSkipped(sid, exc.reason) from None
        return label_index, display, mask_out, sha256_bytes(raw), mask_sha, tuple(notes)

    def load(self, index: int) -> EvalSample:
        import torch

        label, display, mask, image_sha, mask_sha, notes = self._prepare(index)
        return EvalSample(
            id=str(index),
            index=index,
            image=normalise(display, self.config.mean, self.config.std),
            mask=None if mask is None else torch.from_numpy(mask.copy()),
            label=label,
            image_sha256=image_sha,
            mask_sha256=mask_sha,
            notes=notes,
        )

    def load_display(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        _, display, mask, _, _, _ = self._prepare(index)
        return display, mask


def dataset_from_torch(
    ds: Any,
    classes: Sequence[str],
    *,
    input_size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: str = "direct",
    mask_resize: bool = False,
) -> EvalDataset:
    """Wrap a map-style dataset returning ``(image, label[, mask])`` as an ``EvalDataset``.

    Preprocessing is the same as for files: resize to ``input_size`` (``resize`` mode) with
    the mask resized by nearest neighbour over the same rectangle, then ``(x/255 - mean)/std``.
    """
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise TypeError(f"`ds` must be a map-style dataset, got {type(ds).__name__}")
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not classes:
        raise TypeError(f"`classes` must be a non-empty sequence of str, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"`classes` has duplicate names: {list(classes)!r}")
    size: tuple[int, ...]
    if isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        size = tuple(input_size)
    if (
        isinstance(input_size, bool)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"`input_size` must be a positive int or (H, W), got {input_size!r}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"`mean`/`std` must have 3 values with std > 0, got {mean!r}, {std!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"`resize` must be one of {list(RESIZE_MODES)}, got {resize!r}")
    config = DataConfig(
        format="python",
        root=Path.cwd(),
        classes=tuple(classes),
        input_size=(int(size[0]), int(size[1])),
        mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in std),  # type: ignore[arg-type]
        resize=resize,
        mask_resize=mask_resize,
    )
    return TorchEvalDataset(ds, config)
