"""What a dataset reader hands to the runner: :class:`EvalSample` and :class:`EvalDataset`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only: finalize never loads torch
    from torch import Tensor

    from auditor.data.config import DataConfig

__all__ = ["EvalDataset", "EvalSample"]


@dataclass(frozen=True)
class EvalSample:
    """One preprocessed evaluation sample.

    Attributes:
        id: stable id (relative image path, or the manifest's ``id`` column).
        index: position in the dataset.
        image: float32 ``[3, H, W]``, resized to ``input_size`` and normalised
            ``(x / 255 - mean) / std``.
        mask: bool ``[H, W]`` aligned with ``image`` (same geometry, nearest neighbour), or
            ``None`` when the sample carries no annotation.
        label: class index in ``classes`` order.
        image_sha256: sha256 of the image file bytes as read.
        mask_sha256: sha256 of the annotation source for this sample (mask file bytes, or a
            canonical JSON encoding of boxes / polygons / RLE), ``None`` without annotation.
        notes: per-annotation warnings (box clipped, mask values remapped, ...).
    """

    id: str
    index: int
    image: Tensor
    mask: Tensor | None
    label: int
    image_sha256: str
    mask_sha256: str | None
    notes: tuple[str, ...] = ()


@runtime_checkable
class EvalDataset(Protocol):
    """What :func:`auditor.data.open_dataset` returns (see ``DESIGN.md``)."""

    classes: tuple[str, ...]
    config: DataConfig

    def __len__(self) -> int: ...

    def sample_id(self, index: int) -> str: ...

    def load(self, index: int) -> EvalSample:
        """Load one sample; raises :class:`auditor.errors.SampleSkipped` for bad data."""
        ...

    def load_display(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 ``[H, W, 3]`` image resized exactly like ``image`` and its bool mask."""
        ...

    def annotation_sha256(self) -> str: ...
