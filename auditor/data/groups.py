"""Group attributes from the data: ``[data] groups``, ``groups_file`` and ``[data.bins]``.

A group attribute is a column of the evaluation data that is not an input of the model (site,
scanner, sex, age...). It is read from:

* the CSV manifest's columns (header names are case-insensitive, like ``image``/``label``);
* the JSONL manifest's keys;
* the COCO file's ``images`` entries (any field of the image object);
* a side CSV ``groups_file`` with an ``id`` column and one column per attribute (for every
  format; required for ImageFolder, VOC, Oxford-IIIT Pet and Python datasets).

Every value becomes a text *level*. Empty cells, ``null`` and ``NaN`` become the level
``"missing"`` (never dropped: missing metadata may itself be a group that is treated
differently). Numeric attributes are binned: ``[data.bins] age = [0, 40, 65, 120]`` gives the
levels ``[0, 40)``, ``[40, 65)``, ``[65, 120]`` (values outside: ``< 0`` / ``> 120``);
``age = "quartiles"`` uses the data's quartiles as edges. A numeric attribute with more than
:data:`AUTO_BIN_LEVELS` distinct values and no ``bins`` entry is binned by quartiles.

A group name that is not a column of the file is an error naming the column, the file and the
closest column names (exit code 2).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import ConfigError, DataError

__all__ = [
    "AUTO_BIN_LEVELS",
    "GROUP_PREFIX",
    "MISSING",
    "GroupTable",
    "bin_values",
    "parse_group_keys",
    "read_groups",
]

MISSING = "missing"
"""The level of a sample whose attribute is empty, null or NaN."""
GROUP_PREFIX = "group_"
"""Prefix of the per-sample group columns in ``samples.parquet`` (``group_site``...)."""
AUTO_BIN_LEVELS = 10
"""A numeric attribute with more distinct values than this and no bins is cut in quartiles."""
_RESERVED = ("image", "label", "id", "mask", "boxes", "x0", "y0", "x1", "y1")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _err(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: [data] {key}: {message}")


def parse_group_keys(table: Mapping[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
    """Validate ``groups``, ``groups_file`` and ``bins`` of a ``[data]`` table.

    Returns the :class:`~auditor.data.config.DataConfig` keyword arguments. Group names are
    lower-case identifiers (they become ``group_<name>`` columns), not the reserved manifest
    columns; ``bins`` entries name a group and are an increasing list of at least two finite
    numbers or ``"quartiles"``.
    """
    out: dict[str, Any] = {}
    groups = table.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise _err(source, "groups", f"must be a list of column names, got {groups!r}")
    names = [g.strip().lower() for g in groups]
    for name in names:
        if not name or not set(name) <= _NAME_OK:
            raise _err(source, "groups", f"{name!r}: use letters, digits and _ only")
        if name in _RESERVED:
            raise _err(source, "groups", f"{name!r} is a manifest column, not an attribute")
    if len(set(names)) != len(names):
        raise _err(source, "groups", f"duplicate names in {groups!r}")
    out["groups"] = tuple(names)
    if "groups_file" in table:
        value = table["groups_file"]
        if not isinstance(value, str) or not value:
            raise _err(source, "groups_file", f"must be a path string, got {value!r}")
        path = Path(value).expanduser()
        path = (path if path.is_absolute() else base_dir / path).resolve()
        if not path.is_file():
            raise _err(source, "groups_file", f"file not found: {path}")
        out["groups_file"] = path
    bins = table.get("bins", {})
    if not isinstance(bins, Mapping):
        raise _err(source, "bins", f"must be a table [data.bins], got {bins!r}")
    parsed: dict[str, Any] = {}
    for key, spec in bins.items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            raise _err(
                source,
                f"bins.{key}",
                "not one of [data] groups"
                + (f" (did you mean {hint[0]!r}?)" if hint else f" {list(names)}"),
            )
        parsed[str(key)] = _bin_spec(spec, f"bins.{key}", source)
    out["bins"] = parsed
    if (out.get("groups_file") or parsed) and not names:
        raise _err(source, "groups", "groups_file/bins given but no [data] groups")
    return out


def _bin_spec(spec: Any, key: str, source: str) -> str | tuple[float, ...]:
    if spec == "quartiles":
        return "quartiles"
    if not isinstance(spec, list) or len(spec) < 2:
        raise _err(source, key, f'must be "quartiles" or a list of >= 2 edges, got {spec!r}')
    edges: list[float] = []
    for v in spec:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _err(source, key, f"edges must be finite numbers, got {v!r}")
        edges.append(float(v))
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise _err(source, key, f"edges must be strictly increasing, got {spec!r}")
    return tuple(edges)


@dataclass(frozen=True)
class GroupTable:
    """The group levels of every sample: ``index[sample id]`` is its row, ``codes[attribute]
    [row]`` its level's position in ``names[attribute]`` (sorted). ``O(samples)`` memory:
    one id index and one int32 array per attribute, whatever the number of attributes."""

    attributes: tuple[str, ...]
    index: Mapping[str, int]
    codes: Mapping[str, np.ndarray]
    names: Mapping[str, tuple[str, ...]]
    source: str

    def column(self, attribute: str, ids: Sequence[str]) -> list[str]:
        """The levels of ``ids`` (``"missing"`` for an id the file does not list)."""
        codes, names = self.codes[attribute], self.names[attribute]
        rows = [self.index.get(str(i)) for i in ids]
        return [MISSING if r is None else names[codes[r]] for r in rows]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "na", "null", "none")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    try:
        out = float(str(value).strip())
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _fmt(x: float) -> str:
    return f"{x:g}"


def bin_values(values: Sequence[Any], spec: str | Sequence[float] | None) -> list[str]:
    """Levels of one attribute's raw values.

    ``spec`` ``None``: text levels, unless every present value is a number and there are
    more than :data:`AUTO_BIN_LEVELS` distinct ones (then quartiles). ``"quartiles"``: edges
    are the 0, 25, 50, 75 and 100 % quantiles (numpy's linear rule; repeated edges merged).
    Edges ``e0 < ... < ek``: level ``[e_i, e_i+1)``, the last one closed ``[e_k-1, e_k]``;
    values below ``e0`` are ``< e0``, above ``ek`` are ``> ek``; a non-numeric present value
    of a binned attribute is ``not a number``. Missing values are ``"missing"``.
    """
    present = [v for v in values if not _is_missing(v)]
    nums = [_as_number(v) for v in present]
    numeric = bool(present) and all(n is not None for n in nums)
    if spec is None:
        if not (numeric and len(set(nums)) > AUTO_BIN_LEVELS):
            return [MISSING if _is_missing(v) else _text(v) for v in values]
        spec = "quartiles"
    if spec == "quartiles":
        finite = np.asarray([n for n in nums if n is not None], dtype=np.float64)
        if finite.size == 0:
            return [MISSING if _is_missing(v) else "not a number" for v in values]
        edges = tuple(sorted(set(np.quantile(finite, [0, 0.25, 0.5, 0.75, 1.0]).tolist())))
        if len(edges) < 2:
            edges = (edges[0], edges[0])
    else:
        edges = tuple(float(e) for e in spec)
    return [_bin_one(v, edges) for v in values]


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _bin_one(value: Any, edges: Sequence[float]) -> str:
    if _is_missing(value):
        return MISSING
    x = _as_number(value)
    if x is None:
        return "not a number"
    lo, hi = edges[0], edges[-1]
    if x < lo:
        return f"< {_fmt(lo)}"
    if x > hi:
        return f"> {_fmt(hi)}"
    if lo == hi:
        return f"[{_fmt(lo)}]"
    for a, b in zip(edges[:-2], edges[1:-1]):
        if x < b:
            return f"[{_fmt(a)}, {_fmt(b)})"
    return f"[{_fmt(edges[-2])}, {_fmt(hi)}]"


def _unknown(path: Path, missing: str, columns: Sequence[str]) -> DataError:
    hint = difflib.get_close_matches(missing, list(columns), n=2)
    return DataError(
        f"{path}: [data] groups: column {missing!r} not found"
        + (f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else "")
        + f"; columns: {', '.join(columns[:20])}"
    )


_Columns = tuple[list[str], dict[str, list[Any]]]
"""Sample ids in file order and, per attribute, their raw values (same order)."""


def _read_csv(path: Path, attrs: Sequence[str], key_cols: Sequence[str]) -> _Columns:
    """Streams the file; values are interned (a million rows of ~20 levels hold ~20 strings
    per attribute, not a million)."""
    try:
        fh = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"{path}: cannot read group attributes: {exc}") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = [c.strip().lower() for c in next(reader, [])]
            required = ["id", *attrs] if tuple(key_cols) == ("id",) else list(attrs)
            for name in required:
                if name not in header:
                    raise _unknown(path, name, header)
            col = {c: i for i, c in enumerate(header)}
            keys = [col[k] for k in key_cols if k in col]
            where = [col[a] for a in attrs]
            seen: set[str] = set()
            ids: list[str] = []
            values: list[list[Any]] = [[] for _ in attrs]
            for line, row in enumerate(reader, start=2):
                if not any(c.strip() for c in row):
                    continue
                key = next((row[i].strip() for i in keys if i < len(row) and row[i].strip()), "")
                key = key or f"line {line}"
                if key in seen:  # several rows of one sample (boxes): the first one counts
                    continue
                seen.add(key)
                ids.append(key)
                for out, i in zip(values, where):
                    out.append(sys.intern(row[i]) if i < len(row) else "")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: cannot read group attributes: {exc}") from exc
    return ids, dict(zip(attrs, values))


def _columns(rows: Mapping[str, Mapping[str, Any]], attrs: Sequence[str]) -> _Columns:
    ids = list(rows)
    return ids, {a: [rows[i][a] for i in ids] for a in attrs}


def _read_jsonl(path: Path, attrs: Sequence[str]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=lambda c: math.nan)
        except json.JSONDecodeError:
            continue  # the manifest reader reports the line as a skipped sample
        if not isinstance(obj, dict):
            continue
        seen.update(k.lower() for k in obj)
        oid = obj.get("id")
        rid = oid if isinstance(oid, str) and oid else obj.get("image")
        lowered = {str(k).lower(): v for k, v in obj.items()}
        rows.setdefault(str(rid or f"line {n}"), {a: lowered.get(a) for a in attrs})
    for a in attrs:
        if a not in seen:
            raise _unknown(path, a, sorted(seen))
    return rows


def _read_coco(path: Path, attrs: Sequence[str]) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read group attributes: {exc}") from exc
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: no `images` list to read group attributes from")
    fields = sorted({str(k).lower() for e in images if isinstance(e, dict) for k in e})
    for a in attrs:
        if a not in fields:
            raise _unknown(path, a, fields)
    rows: dict[str, dict] = {}
    for e in images:
        if not isinstance(e, dict):
            continue
        fn = e.get("file_name")
        rid = fn if isinstance(fn, str) and fn else f"image id {e.get('id')}"
        lowered = {str(k).lower(): v for k, v in e.items()}
        rows.setdefault(rid, {a: lowered.get(a) for a in attrs})
    return rows


def read_groups(config: Any) -> GroupTable | None:
    """The :class:`GroupTable` of a :class:`~auditor.data.config.DataConfig` (None: no groups).

    Raises :class:`~auditor.errors.DataError` (exit code 2) for an attribute that is not a
    column of the file, naming the column, the file and the closest names, and for a format
    that carries no attributes without ``groups_file``.
    """
    attrs = tuple(getattr(config, "groups", ()) or ())
    if not attrs:
        return None
    path: Path | None = getattr(config, "groups_file", None)
    fmt = getattr(config, "format", "")
    if path is not None:
        columns = _read_csv(path, attrs, ("id",))
    elif fmt == "manifest" and config.manifest is not None:
        path = config.manifest
        columns = _read_csv(path, attrs, ("id", "image"))
    elif fmt == "jsonl" and config.manifest is not None:
        path = config.manifest
        columns = _columns(_read_jsonl(path, attrs), attrs)
    elif fmt == "coco" and config.annotations is not None:
        path = config.annotations
        columns = _columns(_read_coco(path, attrs), attrs)
    else:
        raise DataError(
            f"[data] groups: format {fmt!r} has no attribute columns; give [data] groups_file "
            f"(a CSV with an `id` column and the columns {list(attrs)})"
        )
    ids, raw = columns
    bins: Mapping[str, Any] = getattr(config, "bins", {}) or {}
    codes: dict[str, np.ndarray] = {}
    names: dict[str, tuple[str, ...]] = {}
    for a in attrs:
        binned = bin_values(raw.pop(a), bins.get(a))
        uniq, inverse = np.unique(np.asarray(binned, dtype=object).astype(str), return_inverse=True)
        names[a] = tuple(str(u) for u in uniq)
        codes[a] = inverse.astype(np.int32).ravel()
    index = {sid: i for i, sid in enumerate(ids)}
    return GroupTable(attributes=attrs, index=index, codes=codes, names=names, source=str(path))
