"""Exports of an audit result: per-class table and findings as CSV, gate checks as JUnit XML.

Class names, finding messages and evidence come from user data (folder names, annotation
files) and end up in a spreadsheet. A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return is read by Excel / LibreOffice / Google Sheets as a formula, which can exfiltrate
data or run commands (``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``, DDE). Following the OWASP
recommendation ("CSV Injection", OWASP Foundation), such text cells get a leading single quote,
which spreadsheets display as text and never evaluate. Numbers are written as numbers (``-0.5``
stays a number: a plain decimal literal cannot be a formula), missing values (``None``, NaN) as
empty cells. Files are UTF-8 with a byte-order mark (so Excel detects the encoding), quoted where
needed by :mod:`csv` (commas, quotes and newlines round-trip), and written atomically.

Usage::

    from auditor.export import write_per_class_csv, write_findings_csv
    summary = json.loads((run_dir / "summary.json").read_text())
    write_per_class_csv(summary, run_dir / "classes.csv")
    write_findings_csv(summary, run_dir / "findings.csv")
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from auditor.audit.store import atomic_write_bytes, clean_nan
from auditor.results import AuditResult, thaw

__all__ = [
    "FORMULA_PREFIXES",
    "csv_cell",
    "findings_rows",
    "neutralise",
    "per_class_rows",
    "write_findings_csv",
    "write_junit",
    "write_per_class_csv",
]

#: First characters that make a spreadsheet evaluate a cell (OWASP "CSV Injection"), plus
#: their full-width forms, which some spreadsheet locales normalise to the ASCII ones.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

#: Intervention quantities exported per class (``summary.classes[c].interventions``).
INTERVENTION_KEYS: tuple[str, ...] = (
    "only_fg_accuracy",
    "only_bg_accuracy",
    "mixed_rand_accuracy",
    "only_fg_drop",
    "background_gap",
)


def neutralise(text: str) -> str:
    """Make ``text`` inert in a spreadsheet: prefix ``'`` when it could start a formula.

    A cell is dangerous when its first character, or its first non-blank one (some
    spreadsheets skip leading spaces), is in :data:`FORMULA_PREFIXES`. Text that is a plain
    decimal number (``"-0.5"``, ``"+3"``, ``"1e-3"``) is left as it is: it cannot be a formula.

    >>> neutralise('=HYPERLINK("http://x","y")')
    '\\'=HYPERLINK("http://x","y")'
    >>> neutralise("-0.5"), neutralise("cat")
    ('-0.5', 'cat')
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")
    if not text:
        return text
    stripped = text.lstrip(" \u00a0")
    if _PLAIN_NUMBER.fullmatch(text):
        return text
    if text.startswith(FORMULA_PREFIXES) or stripped.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


def csv_cell(value: Any) -> str:
    """One CSV cell: numbers as numbers, ``None``/NaN/inf as empty, booleans as ``true``/
    ``false``, lists joined with ``"; "``, mappings as JSON, any text through
    :func:`neutralise`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):  # float() also turns numpy.float64 into a plain float
        return repr(float(value)) if math.isfinite(value) else ""
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        return csv_cell(value.item())
    if isinstance(value, Mapping):
        text = json.dumps(
            clean_nan(value), ensure_ascii=False, sort_keys=True, default=_json_fallback
        )
        return neutralise(text)
    if isinstance(value, list | tuple):
        return neutralise("; ".join(_plain(v) for v in value))
    return neutralise(str(value))


def _json_fallback(value: Any) -> Any:
    """numpy scalars/arrays as plain numbers/lists (NaN as null), anything else as text."""
    if hasattr(value, "tolist"):
        return clean_nan(value.tolist())
    return str(value)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else ""
    return "" if value is None else str(value)


def _result(summary: Any) -> AuditResult:
    """The typed result of ``summary`` (an :class:`AuditResult` or a summary.json mapping)."""
    if isinstance(summary, AuditResult):
        return summary
    if not isinstance(summary, Mapping):
        raise TypeError(f"`summary` must be a mapping (summary.json), got {type(summary).__name__}")
    if not isinstance(summary.get("classes", {}), Mapping):
        raise ValueError(
            f"`summary['classes']` must be a mapping, got {type(summary['classes']).__name__}"
        )
    return AuditResult.from_json(summary)


def _metric_names(result: AuditResult, method: str | None) -> list[str]:
    """Metric names of the primary method, in first-seen order across overall and classes."""
    names: list[str] = []
    tables = [result.overall.metrics.get(method or "")]
    tables += [c.metrics.get(method or "") for c in result.classes.values()]
    for table in tables:
        if table is not None:
            names.extend(k for k in table if k not in names)
    return names


def per_class_rows(summary: AuditResult | Mapping[str, Any]) -> list[list[Any]]:
    """Header + one row per class (raw values, before :func:`csv_cell`).

    ``summary`` is an :class:`~auditor.results.AuditResult` or a ``summary.json`` mapping.
    Columns: ``class, n, accuracy, accuracy_ci_low, accuracy_ci_high, method``, then for each
    metric of the primary method ``<metric>_mean, <metric>_ci_low, <metric>_ci_high``, then
    the intervention accuracies (:data:`INTERVENTION_KEYS`), ``flagged`` and ``flags``.

    Raises:
        TypeError: ``summary`` is neither a result nor a mapping.
        ValueError: ``summary['classes']`` is not a mapping.
    """
    result = _result(summary)
    method = result.primary_method or None
    metrics = _metric_names(result, method)
    header: list[Any] = ["class", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]
    header.append("method")
    for m in metrics:
        header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"]
    header += list(INTERVENTION_KEYS) + ["flagged", "flags"]
    rows: list[list[Any]] = [header]
    for name, cls in result.classes.items():
        lo, hi = cls.accuracy_ci
        row: list[Any] = [name, cls.n, cls.accuracy, lo, hi, method]
        for m in metrics:
            stat = cls.stat(method or "", m)
            row += [None, None, None] if stat is None else [stat.mean, stat.ci_low, stat.ci_high]
        iv = cls.interventions
        row += [None if iv is None else iv.get(k) for k in INTERVENTION_KEYS]
        row += [cls.flagged, list(cls.flags)]
        rows.append(row)
    return rows


def findings_rows(summary: AuditResult | Mapping[str, Any]) -> list[list[Any]]:
    """Header + one row per finding: ``id, class, kind, severity, title, message, evidence``
    (evidence as a JSON object in one cell).

    Raises:
        TypeError: ``summary`` is neither a result nor a mapping.
    """
    result = _result(summary)
    rows: list[list[Any]] = [["id", "class", "kind", "severity", "title", "message", "evidence"]]
    for f in result.findings:
        evidence = thaw(f.evidence) or None
        rows.append([f.id, f.cls, f.kind, f.severity, f.title, f.message, evidence])
    return rows


def _encode(rows: Iterable[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return buf.getvalue().encode("utf-8-sig")


def write_per_class_csv(summary: AuditResult | Mapping[str, Any], path: Path) -> Path:
    """Write the per-class table of ``summary`` (see :func:`per_class_rows`) to ``path``,
    atomically, with spreadsheet formulas neutralised; returns ``path``.

    Raises:
        TypeError: ``summary`` is not a mapping.
    """
    path = Path(path)
    atomic_write_bytes(path, _encode(per_class_rows(summary)))
    return path


def write_findings_csv(summary: AuditResult | Mapping[str, Any], path: Path) -> Path:
    """Write the findings of ``summary`` (see :func:`findings_rows`) to ``path``, atomically,
    with spreadsheet formulas neutralised; returns ``path``.

    Raises:
        TypeError: ``summary`` is not a mapping.
    """
    path = Path(path)
    atomic_write_bytes(path, _encode(findings_rows(summary)))
    return path


def write_junit(
    path: Path, summary: AuditResult | Mapping[str, Any], *, suite: str | None = None
) -> Path:
    """JUnit XML of the gates and the medium/high findings: see :mod:`auditor.report.junit`."""
    from auditor.report.junit import write_junit as _write

    return _write(path, summary, suite=suite)
