"""ImageFolder layout: ``root/<class>/<...>/<image>`` with an optional parallel masks folder
``masks_dir/<class>/<...>/<stem>.png`` (same relative folder, same stem, ``.png``).

The label is the first folder name; the default class list is the sorted folder names
(torchvision's ``ImageFolder`` convention). An image without a mask file is unannotated
(``mask = None``, with a note). Hidden files and folders (``.name``) are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from auditor.data.base import MaskFileAnnotation, Record, canonical_sha256
from auditor.data.config import DataConfig
from auditor.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "read_imagefolder"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".dcm"}
)


def read_imagefolder(config: DataConfig) -> tuple[list[Record], tuple[str, ...], str]:
    """Index an ImageFolder tree; returns ``(records, folder classes, listing sha256)``."""
    root = config.root
    if not root.is_dir():
        raise DataError(f"[data] root: directory not found: {root}")
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders (expected root/<class>/<image>)")
    records: list[Record] = []
    listing: list[list[str | None]] = []
    for cls in class_dirs:
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                rel = PurePosixPath(Path(dirpath, name).relative_to(root).as_posix())
                annotation = None
                notes: tuple[str, ...] = ()
                mask_rel: str | None = None
                if config.masks_dir is not None:
                    mask_rel = rel.with_suffix(".png").as_posix()
                    if (config.masks_dir / mask_rel).exists():
                        annotation = MaskFileAnnotation(
                            mask_rel, config.mask_encoding, config.masks_dir
                        )
                    else:
                        notes = (f"no mask file {mask_rel} in masks_dir: unannotated",)
                        mask_rel = None
                records.append(Record(rel.as_posix(), rel.as_posix(), cls, annotation, None, notes))
                listing.append([rel.as_posix(), mask_rel])
    if not records:
        raise DataError(
            f"{root}: no image files under the class folders "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return records, tuple(class_dirs), canonical_sha256({"imagefolder": listing})
