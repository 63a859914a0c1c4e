"""CSV export: formula injection neutralised, numbers kept numeric, quoting round-trips."""

from __future__ import annotations

import csv
import doctest
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import auditor.export as export
from auditor.export import (
    csv_cell,
    neutralise,
    per_class_rows,
    write_findings_csv,
    write_per_class_csv,
)

HYPERLINK = '=HYPERLINK("http://x","y")'
DDE = "+cmd|' /C calc'!A0"
QUOTED = 'say "hi", then, bye'


def _stat(mean: float | None, lo: float | None = None, hi: float | None = None) -> dict:
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": 3, "n_nan": 0}


def _summary() -> dict[str, Any]:
    def cls(n: int, acc: float, eim: float | None, flags: list[str]) -> dict[str, Any]:
        return {
            "index": 0,
            "n": n,
            "accuracy": acc,
            "accuracy_ci": [acc - 0.1, 1.0],
            "metrics": {
                "gradcam": {
                    "energy_in_mask": _stat(eim, 0.1, 0.9),
                    "density_diff": _stat(-0.5, -0.75, -0.25),
                },
                "layercam": {"energy_in_mask": _stat(0.123)},
            },
            "interventions": {
                "accuracy": acc,
                "only_fg_accuracy": 0.25,
                "only_bg_accuracy": 0.75,
                "mixed_rand_accuracy": 0.5,
                "only_fg_drop": -0.5,
                "background_gap": 0.0,
            },
            "flagged": bool(flags),
            "flags": flags,
        }

    return {
        "primary_method": "gradcam",
        "methods": ["gradcam", "layercam"],
        "overall": {"metrics": {"gradcam": {"energy_in_mask": _stat(0.4)}}},
        "classes": {
            HYPERLINK: cls(3, 0.5, 0.25, ["background_focus", "background_reliance"]),
            DDE: cls(4, 1.0, None, []),
            QUOTED: cls(2, 0.0, float("nan"), []),
            "@SUM(1+1)*cmd": cls(1, 1.0, 0.5, []),
        },
        "findings": [
            {
                "id": "F1",
                "class": HYPERLINK,
                "kind": "background_focus",
                "severity": "high",
                "title": f"'{HYPERLINK}': attention on the background",
                "message": '=1+1 multi\nline, with "quotes"',
                "evidence": {"background_focus": 0.9, "ci": [0.8, 0.95], "note": "=x"},
            },
            {
                "id": "F2",
                "class": None,
                "kind": "sanity",
                "severity": "low",
                "title": "-2+3",
                "message": "ok",
                "evidence": {},
            },
        ],
    }


def _read(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM expected (Excel encoding detection)"
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (HYPERLINK, "'" + HYPERLINK),
        (DDE, "'" + DDE),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("  =1+1", "'  =1+1"),  # leading blanks skipped by some spreadsheets
        ("＝1+1", "'＝1+1"),  # full-width equals sign
        ("-0.5", "-0.5"),  # a plain number in text form cannot be a formula
        ("+3", "+3"),
        ("-1e-3", "-1e-3"),
        ("cat", "cat"),
        ("a=b", "a=b"),  # only the first character matters
        ("", ""),
    ],
)
def test_neutralise(raw: str, expected: str) -> None:
    assert neutralise(raw) == expected


def test_neutralise_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="`text` must be a str, got int"):
        neutralise(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-0.5, "-0.5"),
        (0.1 + 0.2, "0.30000000000000004"),  # full precision (repr round-trips)
        (7, "7"),
        (-3, "-3"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        (float("nan"), ""),
        (float("-inf"), ""),
        (["a", "=b"], "a; =b"),  # the joined cell starts with "a": safe
        (["=a", "b"], "'=a; b"),
        ({"k": "=v"}, '{"k": "=v"}'),
        (
            {"b": float("nan"), "a": np.float32(0.5), "c": np.array([1, 2])},
            '{"a": 0.5, "b": null, "c": [1, 2]}',
        ),  # valid JSON: NaN as null, numpy as numbers
        (np.float64(-0.25), "-0.25"),
        (np.int64(-3), "-3"),
        (np.float32(np.nan), ""),
    ],
)
def test_csv_cell(value: Any, expected: str) -> None:
    assert csv_cell(value) == expected


def test_per_class_csv_neutralises_and_keeps_numbers(tmp_path: Path) -> None:
    path = write_per_class_csv(_summary(), tmp_path / "sub" / "classes.csv")
    assert path == tmp_path / "sub" / "classes.csv"
    rows = _read(path)
    header, body = rows[0], rows[1:]
    assert header[:6] == ["class", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "method"]
    # metric columns of the PRIMARY method only, in first-seen order
    assert header[6:12] == [
        "energy_in_mask_mean",
        "energy_in_mask_ci_low",
        "energy_in_mask_ci_high",
        "density_diff_mean",
        "density_diff_ci_low",
        "density_diff_ci_high",
    ]
    assert header[12:] == [
        "only_fg_accuracy",
        "only_bg_accuracy",
        "mixed_rand_accuracy",
        "only_fg_drop",
        "background_gap",
        "flagged",
        "flags",
    ]
    assert all(len(r) == len(header) for r in body)
    by_name = {r[0]: dict(zip(header, r)) for r in body}
    assert set(by_name) == {"'" + HYPERLINK, "'" + DDE, QUOTED, "'@SUM(1+1)*cmd"}
    h = by_name["'" + HYPERLINK]
    assert h["n"] == "3" and h["accuracy"] == "0.5" and h["method"] == "gradcam"
    assert float(h["accuracy_ci_low"]) == pytest.approx(0.4)
    assert h["energy_in_mask_mean"] == "0.25"
    # negative numbers are numbers, not neutralised text
    assert h["density_diff_mean"] == "-0.5" and float(h["density_diff_ci_low"]) == -0.75
    assert h["only_fg_drop"] == "-0.5"
    assert h["flagged"] == "true" and h["flags"] == "background_focus; background_reliance"
    # None and NaN are empty cells, never 0
    assert by_name["'" + DDE]["energy_in_mask_mean"] == ""
    assert by_name[QUOTED]["energy_in_mask_mean"] == ""
    assert by_name[QUOTED]["flagged"] == "false" and by_name[QUOTED]["flags"] == ""
    # quotes and commas round-trip through csv.reader
    assert QUOTED in by_name
    # no cell of the file starts a formula
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "@", "\t", "\r"):
                raise AssertionError(f"formula cell survived: {cell!r}")
            if cell.startswith("-"):
                float(cell)  # only numbers may start with '-'


def test_findings_csv(tmp_path: Path) -> None:
    rows = _read(write_findings_csv(_summary(), tmp_path / "findings.csv"))
    assert rows[0] == ["id", "class", "kind", "severity", "title", "message", "evidence"]
    f1 = dict(zip(rows[0], rows[1]))
    assert f1["class"] == "'" + HYPERLINK
    assert f1["title"] == f"'{HYPERLINK}': attention on the background"  # starts with a quote
    assert f1["message"] == '\'=1+1 multi\nline, with "quotes"'
    assert json.loads(f1["evidence"]) == {"background_focus": 0.9, "ci": [0.8, 0.95], "note": "=x"}
    f2 = dict(zip(rows[0], rows[2]))
    assert f2["class"] == "" and f2["title"] == "'-2+3" and f2["evidence"] == ""
    assert len(rows) == 3


def test_empty_summary_writes_header_only(tmp_path: Path) -> None:
    rows = _read(write_per_class_csv({"classes": {}}, tmp_path / "c.csv"))
    assert rows == [
        [
            "class",
            "n",
            "accuracy",
            "accuracy_ci_low",
            "accuracy_ci_high",
            "method",
            "only_fg_accuracy",
            "only_bg_accuracy",
            "mixed_rand_accuracy",
            "only_fg_drop",
            "background_gap",
            "flagged",
            "flags",
        ]
    ]
    assert _read(write_findings_csv({}, tmp_path / "f.csv")) == [
        ["id", "class", "kind", "severity", "title", "message", "evidence"]
    ]


def test_bad_summary_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="`summary` must be a mapping"):
        write_per_class_csv([1, 2], tmp_path / "x.csv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`summary\['classes'\]` must be a mapping, got list"):
        per_class_rows({"classes": ["a"]})
    assert not (tmp_path / "x.csv").exists()


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "classes.csv"
    path.write_text("old", encoding="utf-8")
    write_per_class_csv(_summary(), path)
    assert path.read_bytes().startswith(b"\xef\xbb\xbfclass,")
    assert [p.name for p in tmp_path.iterdir()] == ["classes.csv"]


def test_doctests() -> None:
    result = doctest.testmod(export)
    assert result.attempted > 0 and result.failed == 0
