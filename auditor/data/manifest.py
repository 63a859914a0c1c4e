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
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from auditor.data.base import BoxesAnnotation, MaskFileAnnotation, RecordTable, RecordTableBuilder
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


def _mask_annotation(config: DataConfig, mask: str) -> MaskFileAnnotation:
    return MaskFileAnnotation(mask, config.mask_encoding)


def _check_usable(path: Path, records: RecordTable, first_error: tuple[int, str] | None) -> None:
    if not len(records):
        raise DataError(f"{path}: no rows (empty manifest)")
    if records.n_errors == len(records):
        line, reason = first_error if first_error else (1, records[0].error or "")
        raise DataError(f"{path}: line {line}: no usable row; first problem: {reason}")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """``(start offset, line)`` of ``text.split("\n")`` without its final empty piece, one at a
    time (a list of a million lines would hold a million strings)."""
    pos, end = 0, len(text)
    while pos < end:
        nl = text.find("\n", pos)
        if nl < 0:
            yield pos, text[pos:]
            return
        yield pos, text[pos:nl]
        pos = nl + 1


class _Groups:
    """The samples of a CSV manifest by key, by column (issue 14: no object per row).

    Group ``g`` (insertion order, as a dict's) has ``line[g]``, ``image[g]``, ``label[g]`` and
    sparse ``mask``, ``error``, ``notes``; boxes are appended flat with their group number.
    Identical rows are found through the group of their key: ``hashes[g]`` lists
    ``(hash(row), line)`` of the group's rows, a hit is confirmed by parsing that line again.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.index: dict[str, int] = {}
        self.line = array("q")
        self.image: list[str] = []
        self.label: list[str] = []
        self.mask: dict[int, str] = {}
        self.error: dict[int, str] = {}
        self.notes: dict[int, list[str]] = {}
        self.box_group = array("q")
        self.box_values = array("d")
        self.box_floor: dict[int, int] = {}  # group reset after this many boxes were added
        self.first_hash = array("q")
        self.first_line = array("q")  # -1: no row registered
        self.first_offset = array("q")
        self.more_hashes: dict[int, list[tuple[int, int, int]]] = {}
        self._labels: dict[str, str] = {}

    def new(self, key: str, line: int, image: str, label: str, error: str | None = None) -> int:
        """Group ``key`` (re)started from ``line`` (a key seen before keeps its position)."""
        label = self._labels.setdefault(label, label)
        g = self.index.get(key)
        if g is None:
            g = self.index[key] = len(self.image)
            self.line.append(line)
            self.image.append(image)
            self.label.append(label)
            self.first_hash.append(0)
            self.first_line.append(-1)
            self.first_offset.append(0)
        else:  # replaced, as `groups[key] = _Group(...)` replaces a dict value
            self.line[g], self.image[g], self.label[g] = line, image, label
            self.mask.pop(g, None)
            self.notes.pop(g, None)
            self.error.pop(g, None)
            self.box_floor[g] = len(self.box_group)
        if error is not None:
            self.error[g] = error
        return g

    def register(self, g: int, row: list[str], line: int, offset: int) -> None:
        """Row ``row`` (physical ``line`` at character ``offset``) belongs to group ``g``."""
        h = hash(tuple(row))
        if self.first_line[g] < 0:
            self.first_hash[g], self.first_line[g], self.first_offset[g] = h, line, offset
        else:
            self.more_hashes.setdefault(g, []).append((h, line, offset))

    def duplicate_of(self, key: str, row: list[str]) -> int | None:
        """Line of an earlier row identical to ``row`` in group ``key``, else None."""
        g = self.index.get(key)
        if g is None:
            return None
        h = hash(tuple(row))
        candidates = []
        if self.first_line[g] >= 0:
            candidates.append((self.first_hash[g], self.first_line[g], self.first_offset[g]))
        candidates += self.more_hashes.get(g, [])
        for hv, line, start in candidates:
            if hv == h:
                stop = self.text.find("\n", start)
                if _parse_line(self.text[start : stop if stop >= 0 else None]) == row:
                    return line
        return None

    def add_note(self, g: int, note: str) -> None:
        self.notes.setdefault(g, []).append(note)

    def note_repeat(self, key: str, line: int, dup_of: int) -> None:
        """Note on sample ``key`` that ``line`` repeats line ``dup_of`` exactly: an identical
        row adds nothing (not a second box), noted and never silently merged."""
        g = self.index.get(key)
        if g is not None:
            self.add_note(g, f"manifest line {line} repeats line {dup_of} exactly (ignored)")

    def records(self, config: DataConfig) -> RecordTable:
        n = len(self.image)
        bg = np.frombuffer(self.box_group, np.int64) if len(self.box_group) else np.zeros(0, int)
        bv = np.frombuffer(self.box_values, np.float64).reshape(-1, 4)
        keep = np.ones(bg.size, bool)
        for g, floor in self.box_floor.items():
            keep[:floor] &= bg[:floor] != g
        order = np.argsort(bg[keep], kind="stable")
        bg, bv = bg[keep][order], bv[keep][order]
        counts = np.bincount(bg, minlength=n) if bg.size else np.zeros(n, np.int64)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = RecordTableBuilder()
        for key, g in self.index.items():
            annotation: Any = None
            notes = list(self.notes.get(g, ()))
            lo, hi = int(offsets[g]), int(offsets[g + 1])
            mask = self.mask.get(g)
            if mask:
                annotation = _mask_annotation(config, mask)
                if hi > lo:
                    notes.append("boxes ignored: a mask file is given for this sample")
            elif hi > lo:
                annotation = BoxesAnnotation(tuple(tuple(b) for b in bv[lo:hi].tolist()))
            out.append(
                key, self.image[g], self.label[g], annotation, self.error.get(g), tuple(notes)
            )
        return out.build()


def _parse_line(text: str) -> list[str]:
    """One CSV row from one physical line; ``csv.Error`` for a bad quote or oversized cell."""
    return next(csv.reader([text.rstrip("\r")], strict=True), [])


def get_key(row: list[str], col: dict[str, int], line: int) -> str:
    """The sample key of a row: its ``id``, else its image path, else ``line N``."""

    def get(name: str) -> str:
        i = col.get(name)
        return row[i] if i is not None and i < len(row) else ""

    return get("id").strip() or get("image").strip() or f"line {line}"


def read_csv_manifest(config: DataConfig) -> tuple[RecordTable, str]:
    """Index a CSV manifest; returns ``(records, sha256 of the manifest bytes)``."""
    path = config.manifest
    if path is None:
        raise DataError("[data] manifest: not set")
    text, sha = _read_text(path)
    # One physical line is one row: a manifest cell never holds a line break, so a stray or
    # unterminated quote must not swallow the rows after it (csv's default would join them).
    lines = _lines(text)
    columns = _header_columns(path, next(lines, (0, ""))[1])
    has_boxes = [c in columns for c in _BOX_COLUMNS]
    col = {name: i for i, name in enumerate(columns)}
    groups = _Groups(text)
    first_error: tuple[int, str] | None = None
    keyless: dict[tuple[str, ...], int] = {}  # rows without id and image: "line N" keys
    n_rows = 0
    line = 1
    for line, (offset, raw_line) in enumerate(lines, start=2):
        if not raw_line.strip():
            continue
        n_rows += 1
        try:
            row = _parse_line(raw_line)
        except csv.Error as exc:
            # this row alone is unusable (unterminated quote, oversized cell): skip it
            key = f"line {line}"
            bad = f"manifest line {line}: unreadable CSV row ({exc})"
            groups.new(key, line, key, "", error=bad)
            first_error = first_error or (line, bad)
            continue
        if not any(cell.strip() for cell in row):
            n_rows -= 1
            continue

        def get(name: str, row: list[str] = row) -> str:
            i = col.get(name)
            return row[i] if i is not None and i < len(row) else ""

        image = get("image").strip()
        label = get("label")
        ident = get("id").strip() or image
        key = ident or f"line {line}"
        dup_of = groups.duplicate_of(key, row) if ident else keyless.get(tuple(row))
        if dup_of is not None:
            groups.note_repeat(key, line, dup_of)
            continue
        if not ident:
            keyless[tuple(row)] = line
        error = None
        if len(row) != len(columns):
            error = f"manifest line {line}: {len(row)} fields, header has {len(columns)}"
        elif not image:
            error = f"manifest line {line}: empty image path"
        elif label == "":
            error = f"manifest line {line}: empty label"
        g = groups.index.get(key)
        if g is None:
            g = groups.new(key, line, image, label)
        elif error is None and (groups.image[g] != image or groups.label[g] != label):
            error = (
                f"manifest line {line}: rows for {key!r} disagree on image/label "
                f"({groups.image[g]!r}, {groups.label[g]!r}) vs ({image!r}, {label!r})"
            )
        if ident:
            groups.register(g, row, line, offset)
        if error is not None:
            groups.error[g] = groups.error.get(g) or error
            first_error = first_error or (line, error)
            continue
        mask_error = _add_mask_and_box(groups, g, key, line, get, all(has_boxes))
        if mask_error is not None:
            first_error = first_error or (line, mask_error)
    if n_rows == 0:
        raise DataError(f"{path}: line {line}: no data rows after the header")
    records = groups.records(config)
    _check_usable(path, records, first_error)
    return records, sha


def _header_columns(path: Path, first_line: str) -> list[str]:
    """The manifest's column names (stripped, lower case) from its header line, refusing an
    empty or unreadable header, duplicate names, a missing ``image``/``label`` column (a
    ``labels`` column is never read as ``label``) and an incomplete set of box columns."""
    if not first_line.strip():
        raise DataError(f"{path}: line 1: empty file, expected a header row")
    try:
        header = _parse_line(first_line)
    except csv.Error as exc:
        raise DataError(f"{path}: line 1: unreadable CSV header: {exc}") from exc
    columns = [c.strip().lower() for c in header]
    if len(set(columns)) != len(columns):
        raise DataError(f"{path}: line 1: duplicate column names in header {header!r}")
    missing = [c for c in ("image", "label") if c not in columns]
    if missing == ["label"] and "labels" in columns:  # never guessed (issue 26)
        raise DataError(
            f"{path}: line 1: a `labels` column (label sets) needs [model] output = "
            f'"sigmoid"; this run audits a softmax model (one `label` per image)'
        )
    if missing:
        raise DataError(
            f"{path}: line 1: missing required column(s) {missing}; header is {header!r}"
        )
    has_boxes = [c in columns for c in _BOX_COLUMNS]
    if any(has_boxes) and not all(has_boxes):
        raise DataError(f"{path}: line 1: box columns must be all of x0, y0, x1, y1")
    return columns


def _add_mask_and_box(
    groups: _Groups, g: int, key: str, line: int, get: Callable[[str], str], boxes: bool
) -> str | None:
    """Record a valid row's mask file and (``boxes``: the manifest has box columns) its box on
    sample ``g``; the error when the sample already names another mask file, else ``None``."""
    error = None
    mask = get("mask").strip()
    if mask:
        if groups.mask.get(g) and groups.mask[g] != mask:
            groups.error[g] = error = f"manifest line {line}: several mask files for {key!r}"
        groups.mask[g] = mask
    if boxes:
        cells = [get(c).strip() for c in _BOX_COLUMNS]
        if any(cells):
            groups.box_group.append(g)
            groups.box_values.extend(_number(c) for c in cells)
    return error


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


def read_jsonl_manifest(config: DataConfig) -> tuple[RecordTable, str]:
    """Index a JSONL manifest; returns ``(records, sha256 of the manifest bytes)``."""
    path = config.manifest
    if path is None:
        raise DataError("[data] manifest: not set")
    text, sha = _read_text(path)
    records = RecordTableBuilder()
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
            str(rid),
            str(image).strip(),
            label if isinstance(label, str) else None,
            annotation,
            error,
            tuple(notes),
        )
    if not len(records):
        raise DataError(f"{path}: line 1: no rows (empty manifest)")
    table = records.build()
    _check_usable(path, table, first_error)
    return table, sha
