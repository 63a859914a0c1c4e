"""Column storage of manifest records (issue 14): same records, ~100 bytes per sample."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest

from auditor.data import open_dataset
from auditor.data.base import (
    BoxesAnnotation,
    MaskFileAnnotation,
    Record,
    RecordTable,
    RecordTableBuilder,
    default_classes,
)
from auditor.data.config import DataConfig
from auditor.data.manifest import read_csv_manifest, read_jsonl_manifest


def _cfg(root: Path, name: str, fmt: str = "manifest") -> DataConfig:
    return DataConfig(format=fmt, root=root, manifest=root / name)


def test_builder_round_trips_every_field() -> None:
    rows = [
        Record(
            "a", "a.png", "cat", BoxesAnnotation(((1.0, 2.0, 3.0, 4.0), (0.0, math.nan, 1.0, 2.0)))
        ),
        Record("b", "b.png", None, None, "bad row", ("n1", "n2")),
        Record("c", "c.png", "dog", MaskFileAnnotation("c_mask.png", "trimap")),
        Record("d", "d.png", "dog", MaskFileAnnotation("d.png", "binary", Path("/x"))),
        Record("e", "e.png", "cat", BoxesAnnotation(()), image_base=Path("/imgs")),
    ]
    b = RecordTableBuilder()
    for r in rows:
        b.append(r.id, r.image, r.label, r.annotation, r.error, r.notes, r.image_base)
    t = b.build()
    assert len(t) == 5 and t.n_errors == 1
    assert [repr(r) for r in t] == [repr(r) for r in rows]
    assert repr(t[-1]) == repr(rows[-1]) and [repr(r) for r in t[1:3]] == [
        repr(r) for r in rows[1:3]
    ]
    assert t.record_id(3) == "d"
    assert default_classes(t) == default_classes(rows) == ("cat", "dog")
    with pytest.raises(IndexError, match="out of range"):
        t[5]


def test_csv_groups_duplicates_and_errors_as_before(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "id,image,label,x0,y0,x1,y1\n"
        "s1,i1.png,cat,0,0,4,4\n"
        "s2,i2.png,dog,,,,\n"
        "s1,i1.png,cat,1,1,2,2\n"
        "s1,i1.png,cat,0,0,4,4\n"  # identical to line 2: noted, not a third box
        "s3,i3.png,,1,1,2,2\n"
        "s2,i9.png,dog,1,1,2,2\n",
        encoding="utf-8",
    )
    records, _ = read_csv_manifest(_cfg(tmp_path, "m.csv"))
    assert isinstance(records, RecordTable)
    got = {r.id: r for r in records}
    assert got["s1"].annotation == BoxesAnnotation(((0.0, 0.0, 4.0, 4.0), (1.0, 1.0, 2.0, 2.0)))
    assert got["s1"].notes == ("manifest line 5 repeats line 2 exactly (ignored)",)
    assert got["s2"].annotation is None and "disagree on image/label" in str(got["s2"].error)
    assert got["s3"].error == "manifest line 6: empty label"
    assert [r.id for r in records] == ["s1", "s2", "s3"]


def test_jsonl_lone_surrogate_survives(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a\\ud800.png", "label": "x", "id": "\\udc00"}\n{"image": "b", "label": "y"}\n',
        encoding="utf-8",
    )
    records, _ = read_jsonl_manifest(_cfg(tmp_path, "m.jsonl", "jsonl"))
    assert records[0].image == "a\ud800.png" and records[0].id == "\udc00"
    assert records[1].id == "b"


def test_manifest_records_memory_is_small_per_row(tmp_path: Path) -> None:
    """Held memory is O(bytes of the paths), not a Python object per row: tracemalloc (the
    Python and numpy side) plus the Arrow columns' bytes, per row, after open; and the peak
    while reading. The tuple of Records this replaced held ~1,600 bytes per row."""
    n = 20_000
    lines = ["id,image,label,x0,y0,x1,y1"]
    lines += [f"s{i:07d},images/img{i % 8}.png,class{i % 100:03d},16,16,48,48" for i in range(n)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "small.csv").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    open_dataset(_cfg(tmp_path, "small.csv"))  # imports done before measuring
    tracemalloc.start()
    try:
        ds = open_dataset(_cfg(tmp_path, "m.csv"))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == n and len(ds.classes) == 100
    assert isinstance(ds.records, RecordTable)
    per_row = (held + ds.records.nbytes) / n
    assert per_row < 200, f"{per_row:.0f} bytes per row held"
    assert peak / n < 800, f"{peak / n:.0f} bytes per row at peak"
    assert ds.sample_id(n - 1) == f"s{n - 1:07d}"
    assert ds.records[7].annotation == BoxesAnnotation(((16.0, 16.0, 48.0, 48.0),))
