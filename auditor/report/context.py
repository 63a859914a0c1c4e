"""Read a run directory for the report, and the caps that keep big runs readable.

``summary.json`` as the typed result (:class:`auditor.results.AuditResult`, the only source of
every number), ``samples.parquet`` (per-sample columns, used only to draw two distribution
figures) and ``gallery/*.png`` (as ``data:`` URIs). The view model the templates read is
assembled from them by :mod:`auditor.report.assemble` (:mod:`auditor.report.view`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import RenderError
from auditor.results import AuditResult
from auditor.results.vocab import SEVERITIES

__all__ = [
    "SEVERITY_ORDER",
    "TABLE_METRICS",
    "ReportLimits",
    "build_context",
    "downsample",
    "load_result",
    "load_summary",
    "png_uri",
]

#: Findings are listed in this order; unknown severities come last.
SEVERITY_ORDER = SEVERITIES  # auditor.results.vocab

#: Per-class table metrics for summaries that do not record ``table`` in ``metrics_info``.
TABLE_METRICS = ("energy_in_mask", "background_focus", "energy_lift", "pointing_game", "iou", "auc")


@dataclass(frozen=True)
class ReportLimits:
    """Caps that keep big runs readable (and the files small); all are shown in captions."""

    top_n: int = 30
    """classes drawn in per-class figures (highest risk first)"""
    table_page: int = 100
    """per-class table rows shown in HTML before "show all" (the PDF shows every row)"""
    gallery_classes: int = 20
    """flagged classes with a gallery section"""
    gallery_per_class: int = 6
    """panels per class in the gallery section"""
    finding_images: int = 2
    """gallery panels shown inside each finding block"""
    skipped: int = 50
    """skipped samples listed by id (the total is always given)"""
    findings: int = 30
    """findings shown as full blocks (evidence, pictures); the rest as rows of a table"""
    gate_rows: int = 50
    """gate checks listed (failed first; the totals are always given)"""
    pdf_table_rows: int = 200
    """per-class rows in the PDF (highest risk first; the HTML always has every row)"""
    scatter_points: int = 20000
    """points drawn in a per-sample scatter figure (a deterministic uniform sample above it,
    the caption says "n of N shown"; 0 = all). Histograms always use every sample."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")


def load_summary(run_dir: Path) -> dict[str, Any]:
    """Read and minimally check ``run_dir/summary.json`` (schema_version 1)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise RenderError(f"summary.json not found in run directory: {str(path)!r}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RenderError(f"{str(path)!r}: cannot read summary: {exc}") from exc
    if not isinstance(summary, dict):
        raise RenderError(f"{str(path)!r}: must hold a JSON object, got {type(summary).__name__}")
    version = summary.get("schema_version")
    if version != 1:
        raise RenderError(f"{str(path)!r}: schema_version must be 1, got {version!r}")
    for key in ("tool", "model", "dataset", "classes", "methods", "primary_method"):
        if key not in summary:
            raise RenderError(f"{str(path)!r}: missing required key {key!r}")
    if not isinstance(summary["classes"], dict):
        raise RenderError(f"{str(path)!r}: 'classes' must be an object keyed by class name")
    return summary


def load_result(run_dir: Path) -> AuditResult:
    """``run_dir/summary.json`` as the typed result (:class:`auditor.results.AuditResult`)."""
    summary = load_summary(run_dir)
    try:
        return AuditResult.from_json(summary)
    except (TypeError, ValueError) as exc:
        raise RenderError(f"{str(Path(run_dir) / 'summary.json')!r}: {exc}") from exc


class _Images:
    """Reads gallery PNGs inside the run directory once, as ``data:`` URIs."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir).resolve()
        self._cache: dict[str, str] = {}

    def uri(self, rel: str) -> str:
        if rel in self._cache:
            return self._cache[rel]
        if not isinstance(rel, str) or not rel:
            raise RenderError(f"gallery file must be a relative path, got {rel!r}")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise RenderError(f"gallery file outside the run directory: {rel!r}")
        if not path.is_file():
            raise RenderError(f"gallery file missing: {rel!r} (listed in summary.json)")
        data = path.read_bytes()
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else None
        if mime is None:
            raise RenderError(f"gallery file is not a PNG image: {rel!r}")
        self._cache[rel] = png_uri(data)
        return self._cache[rel]


def png_uri(data: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _read_samples(run_dir: Path, primary: str) -> dict[str, np.ndarray] | None:
    """Columns needed by the distribution figures, for the primary method; None if absent.

    Flat in the table's width and in its other methods: only the four columns are read, one
    row group at a time, and only the primary method's rows are kept (1M samples x 3 methods:
    three float arrays of 1M values).
    """
    path = Path(run_dir) / "samples.parquet"
    if not path.is_file():
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    chunks: dict[str, list[np.ndarray]] = {}
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = [c for c in ("method", "correct", "energy_in_mask", "confidence") if c in names]
        if "method" not in wanted or "energy_in_mask" not in wanted or "correct" not in wanted:
            return None
        chunks = {c: [] for c in wanted if c != "method"}
        for rg in range(pf.num_row_groups):
            table = pf.read_row_group(rg, columns=wanted)
            method = table["method"]
            if pa.types.is_dictionary(method.type):
                method = method.cast(pa.string())
            table = table.filter(pc.equal(method, primary))
            for name in chunks:
                col = table[name]
                if name == "correct":
                    arr = np.asarray(
                        col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool
                    )
                else:
                    arr = np.asarray(
                        col.cast("float64").fill_null(float("nan")).to_numpy(zero_copy_only=False),
                        dtype=float,
                    )
                chunks[name].append(arr)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise RenderError(f"{str(path)!r}: cannot read samples: {exc}") from exc
    return {
        name: (
            np.concatenate(parts)
            if parts
            else np.zeros(0, dtype=bool if name == "correct" else float)
        )
        for name, parts in chunks.items()
    }


def downsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Positions of a deterministic uniform sample of ``min(n, limit)`` of ``n`` points, in
    increasing order (all of them when ``n <= limit`` or ``limit == 0``).

    Drawn without replacement from ``numpy.random.default_rng(seed)``: the same run gives the
    same figure, and every point is equally likely to be shown (no bias towards the start of
    the table, unlike a prefix or a stride over batch-ordered rows).
    """
    if limit == 0 or n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def build_context(run_dir: Path, *, limits: ReportLimits | None = None) -> dict[str, Any]:
    """The template context of ``run_dir`` (:func:`auditor.report.assemble.build_context`)."""
    from auditor.report.assemble import build_context as build

    return build(run_dir, limits=limits)
