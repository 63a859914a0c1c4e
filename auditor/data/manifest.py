"""CSV and JSONL manifests.

CSV columns: ``image``, ``label`` and optionally ``id``, ``mask`` (path of a mask PNG,
nonzero = object) and/or the box columns ``x0, y0, x1, y1`` (original-image pixels, x1/y1
exclusive). Several rows with the same image (or the same ``id``) are several boxes of one
sample; the mask is their union. JSONL: one object per line,
``{"image": ..., "label": ..., "id": ..., "mask": ... | "boxes": [[x0, y0, x1, y1], ...]}``.

Bad rows become skipped samples with a reason naming the line; a manifest that cannot be read
at all, or has no usable row, raises :class:`~auditor.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.data.base import BoxesAnnotation, MaskFileAnnotation, Record
from auditor.data.config import DataConfig
from auditor.data.images import sha256_bytes
from auditor.errors import DataError

__all__ = ["read_csv_manifest", "read_jsonl_manifest"]

_BOX_COLUMNS = ("x0", "y0", "x1", "y1")


def _read_text(path: Path) -> tuple[str, str]:
    """Return ``(text, sha256 of the bytes)``; DataError naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 text") from exc
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}: line {line}: NUL byte; not a text manifest")
    return text, sha256_bytes(data)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class _Group:
    line: int
    image: str
    label: str
    mask: str | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _mask_annotation(config: DataConfig, mask: str) -> MaskFileAnnotation:
    return MaskFileAnnotation(mask, config.mask_encoding)


def _groups_to_records(config: DataConfig, groups: dict[str, _Group]) -> list[Record]:
    records = []
    for key, g in groups.items():
        annotation: Any = None
        notes = list(g.notes)
        if g.mask:
            annotation = _mask_annotation(config, g.mask)
            if g.boxes:
                notes.append("boxes ignored: a mask file is given for this sample")
        elif g.boxes:
            annotation = BoxesAnnotation(tuple(g.boxes))
        records.append(Record(key, g.image, g.label, annotation, g.error, tuple(notes)))
    return records


def _check_usable(path: Path, records: list[Record], first_error: tuple[int, str] | None) -> None:
    if not records:
        raise DataError(f"{path}: no rows (empty manifest)")
    if all(r.error is not None for r in records):
        line, reason = first_error if first_error else (1, records[0].error or "")
        raise DataError(f"{path}: line {line}: no usable row; first problem: {reason}")


def _parse_line(text: str) -> list[str]:
    """One CSV row from one physical line; ``csv.Error`` for a bad quote or oversized cell."""
    return next(csv.reader([text.rstrip("\r")], strict=True), [])


def get_key(row: list[str], col: dict[str, int], line: int) -> str:
    """The sample key of a row: its ``id``, else its image path, else ``line N``."""

    def get(name: str) -> str:
        i = col.get(name)
        return row[i] if i is not None and i < len(row) else ""

    return get("id").strip() or get("image").strip() or f"line {line}"


def read_csv_manifest(config: DataConfig) -> tuple[list[Record], str]:
    """Index a CSV manifest; returns ``(records, sha256 of the manifest bytes)``."""
    path = config.manifest
    if path is None:
        raise DataError("[data] manifest: not set")
    text, sha = _read_text(path)
    # One physical line is one row: a manifest cell never holds a line break, so a stray or
    # unterminated quote must not swallow the rows after it (csv's default would join them).
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: line 1: empty file, expected a header row")
    try:
        header = _parse_line(lines[0])
    except csv.Error as exc:
        raise DataError(f"{path}: line 1: unreadable CSV header: {exc}") from exc
    columns = [c.strip().lower() for c in header]
    if len(set(columns)) != len(columns):
        raise DataError(f"{path}: line 1: duplicate column names in header {header!r}")
    missing = [c for c in ("image", "label") if c not in columns]
    if missing:
        raise DataError(
            f"{path}: line 1: missing required column(s) {missing}; header is {header!r}"
        )
    has_boxes = [c in columns for c in _BOX_COLUMNS]
    if any(has_boxes) and not all(has_boxes):
        raise DataError(f"{path}: line 1: box columns must be all of x0, y0, x1, y1")
    col = {name: i for i, name in enumerate(columns)}
    groups: dict[str, _Group] = {}
    first_error: tuple[int, str] | None = None
    seen_rows: dict[tuple[str, ...], int] = {}
    n_rows = 0
    line = 1
    for line, raw_line in enumerate(lines[1:], start=2):
        if not raw_line.strip():
            continue
        n_rows += 1
        try:
            row = _parse_line(raw_line)
        except csv.Error as exc:
            # this row alone is unusable (unterminated quote, oversized cell): skip it
            key = f"line {line}"
            bad = f"manifest line {line}: unreadable CSV row ({exc})"
            groups[key] = _Group(line, key, "", error=bad)
            first_error = first_error or (line, bad)
            continue
        if not any(cell.strip() for cell in row):
            n_rows -= 1
            continue
        dup_of = seen_rows.get(tuple(row))
        if dup_of is not None:
            # an identical row adds nothing (not a second box): noted, never silently merged
            key = get_key(row, col, line)
            if key in groups:
                groups[key].notes.append(
                    f"manifest line {line} repeats line {dup_of} exactly (ignored)"
                )
            continue
        seen_rows[tuple(row)] = line

        def get(name: str, row: list[str] = row) -> str:
            i = col.get(name)
            return row[i] if i is not None and i < len(row) else ""

        image = get("image").strip()
        label = get("label")
        key = get("id").strip() or image or f"line {line}"
        error = None
        if len(row) != len(columns):
            error = f"manifest line {line}: {len(row)} fields, header has {len(columns)}"
        elif not image:
            error = f"manifest line {line}: empty image path"
        elif label == "":
            error = f"manifest line {line}: empty label"
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(line, image, label)
        elif error is None and (group.image != image or group.label != label):
            error = (
                f"manifest line {line}: rows for {key!r} disagree on image/label "
                f"({group.image!r}, {group.label!r}) vs ({image!r}, {label!r})"
            )
        if error is not None:
            group.error = group.error or error
            first_error = first_error or (line, error)
            continue
        mask = get("mask").strip()
        if mask:
            if group.mask and group.mask != mask:
                group.error = f"manifest line {line}: several mask files for {key!r}"
                first_error = first_error or (line, group.error)
            group.mask = mask
        if all(has_boxes):
            cells = [get(c).strip() for c in _BOX_COLUMNS]
            if any(cells):
                box = tuple(_number(c) for c in cells)
                group.boxes.append(box)  # type: ignore[arg-type]
    if n_rows == 0:
        raise DataError(f"{path}: line {line}: no data rows after the header")
    records = _groups_to_records(config, groups)
    _check_usable(path, records, first_error)
    return records, sha


def _as_boxes(value: Any) -> list[tuple[float, float, float, float]] | str:
    if not isinstance(value, list):
        return f"`boxes` must be a list of [x0, y0, x1, y1], got {type(value).__name__}"
    out = []
    for box in value:
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(
                (isinstance(v, int | float) and not isinstance(v, bool)) or v is None for v in box
            )
        ):
            return f"`boxes` entries must be [x0, y0, x1, y1] numbers, got {box!r}"
        out.append(tuple(math.nan if v is None else float(v) for v in box))
    return out  # type: ignore[return-value]


def read_jsonl_manifest(config: DataConfig) -> tuple[list[Record], str]:
    """Index a JSONL manifest; returns ``(records, sha256 of the manifest bytes)``."""
    path = config.manifest
    if path is None:
        raise DataError("[data] manifest: not set")
    text, sha = _read_text(path)
    records: list[Record] = []
    seen: set[str] = set()
    first_error: tuple[int, str] | None = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        error: str | None = None
        notes: list[str] = []
        annotation: Any = None
        try:
            obj = json.loads(line, parse_constant=lambda c: math.nan)
        except json.JSONDecodeError as exc:
            obj, error = None, f"manifest line {line_no}: invalid JSON ({exc.msg})"
        if obj is not None and not isinstance(obj, dict):
            obj, error = None, f"manifest line {line_no}: expected a JSON object"
        image = label = ""
        rid = f"line {line_no}"
        if obj is not None:
            image = obj.get("image")
            label = obj.get("label")
            rid = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else image
            extra = sorted(set(obj) - {"image", "label", "id", "mask", "boxes"})
            if extra:
                notes.append(f"manifest line {line_no}: ignored keys {extra}")
            if not isinstance(image, str) or not image.strip():
                error = f"manifest line {line_no}: `image` must be a non-empty string"
                rid = rid if isinstance(rid, str) and rid else f"line {line_no}"
                image = ""
            elif not isinstance(label, str) or label == "":
                error = f"manifest line {line_no}: `label` must be a non-empty string (class name)"
            mask = obj.get("mask")
            boxes = obj.get("boxes")
            if error is None and mask is not None:
                if not isinstance(mask, str) or not mask.strip():
                    error = f"manifest line {line_no}: `mask` must be a path string"
                else:
                    annotation = _mask_annotation(config, mask.strip())
                    if boxes:
                        notes.append("boxes ignored: a mask file is given for this sample")
            elif error is None and boxes is not None:
                parsed = _as_boxes(boxes)
                if isinstance(parsed, str):
                    error = f"manifest line {line_no}: {parsed}"
                elif parsed:
                    annotation = BoxesAnnotation(tuple(parsed))
        if error is None and rid in seen:
            error = f"manifest line {line_no}: duplicate id {rid!r}"
        if error is not None:
            first_error = first_error or (line_no, error)
        seen.add(str(rid))
        records.append(
            Record(
                str(rid),
                str(image).strip(),
                label if isinstance(label, str) else None,
                annotation,
                error,
                tuple(notes),
            )
        )
    if not records:
        raise DataError(f"{path}: line 1: no rows (empty manifest)")
    _check_usable(path, records, first_error)
    return records, sha
