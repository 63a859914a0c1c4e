"""The finalisation step of the group audit: group columns into samples.parquet, statistics,
findings and gates into the audit result.

Runs after ``samples.parquet`` is written (exact and streaming finalisation alike, and for
shard jobs and torchrun, which all finalise through the same code), so the group results are
the same however the run was split. The parquet file is rewritten one row group at a time:
memory holds the group levels (one string per sample and attribute) and the handful of
columns the statistics need, not the samples table.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from auditor.analysis.groups import analyse_groups, group_findings
from auditor.analysis.groups.auroc import ClassScores, class_scores
from auditor.analysis.groups.slices import discover_slices
from auditor.analysis.groups.sources import subgroup_sources
from auditor.data.groups import GROUP_PREFIX, GroupTable, read_groups
from auditor.group_results import GroupsResult

__all__ = ["add_group_columns", "attach_groups", "group_gates", "primary_frame"]

_NEEDED = (
    "id",
    "method",
    "label",
    "pred",
    "correct",
    "pred_confidence",
    "background_focus",
    "energy_in_mask",
    "only_bg_correct",
    "only_fg_correct",
    "label_confidence",
)
_PROBS = ("top_classes", "top_probs")


def add_group_columns(path: Path, groups: GroupTable) -> None:
    """Rewrite ``samples.parquet`` with one ``group_<attribute>`` string column per attribute
    (additive; existing ``group_`` columns are replaced). Atomic: a temporary file is renamed
    over the original."""
    src = pq.ParquetFile(path)
    names = [n for n in src.schema_arrow.names if not n.startswith(GROUP_PREFIX)]
    schema = pa.schema(
        [src.schema_arrow.field(n) for n in names]
        + [pa.field(GROUP_PREFIX + a, pa.string()) for a in groups.attributes]
    )
    tmp = path.with_name(f".{path.name}.groups.tmp")
    with pq.ParquetWriter(tmp, schema) as out:
        for batch in src.iter_batches(columns=names):
            ids = batch.column(names.index("id")).to_pylist()
            cols = list(batch.columns) + [
                pa.array(groups.column(a, ids), pa.string()) for a in groups.attributes
            ]
            out.write_table(pa.Table.from_arrays(cols, schema=schema))
    os.replace(tmp, path)


def primary_frame(path: Path, primary: str, attributes: tuple[str, ...]) -> pd.DataFrame:
    """The primary method's rows of ``samples.parquet`` with the columns the group
    statistics read (absent optional columns are left out)."""
    return primary_rows(path, primary, attributes, n_classes=0)[0]


def primary_rows(
    path: Path, primary: str, attributes: tuple[str, ...], *, n_classes: int
) -> tuple[pd.DataFrame, ClassScores | None]:
    """:func:`primary_frame` and the rows' class probabilities (None: a run without them, or
    ``n_classes`` 0)."""
    available = set(pq.ParquetFile(path).schema_arrow.names)
    cols = [c for c in _NEEDED if c in available] + [GROUP_PREFIX + a for a in attributes]
    probs = [c for c in _PROBS if c in available] if n_classes else []
    group_cols = [GROUP_PREFIX + a for a in attributes]
    table = pq.read_table(  # group levels as categoricals: codes, not a string per sample
        path,
        columns=cols + probs,
        filters=[("method", "==", primary)],
        read_dictionary=group_cols,
    )
    scores = None
    if len(probs) == 2 and "label_confidence" in available:
        scores = class_scores(
            n_classes,
            table.column("label").to_numpy(),
            table.column("label_confidence").to_numpy(),
            table.column("top_classes"),
            table.column("top_probs"),
        )
    return table.select(cols).to_pandas(), scores


def attach_groups(
    run_dir: Path,
    result: Any,
    *,
    data_config: Any,
    classes: Any,
    settings: Any,
    min_group_size: int,
) -> Any:
    """Add the group audit to ``result`` (an :class:`~auditor.results.AuditResult`):
    ``extra["groups"]`` (summary.json ``groups``) and one ``group_disparity`` finding per
    flagged group. Returns ``result`` unchanged when ``[data] groups`` is empty."""
    groups = read_groups(data_config)
    path = Path(run_dir) / "samples.parquet"
    if groups is None or not path.is_file():
        return result
    add_group_columns(path, groups)
    frame, scores = primary_rows(
        path, result.primary_method, groups.attributes, n_classes=len(list(classes))
    )
    res: GroupsResult = analyse_groups(
        frame,
        groups.attributes,
        list(classes),
        min_group_size=min_group_size,
        confidence=settings.confidence,
        n_boot=max(200, min(int(settings.bootstrap), 1000)),
        seed=int(settings.seed),
        scores=scores,
    )
    res = replace(res, slices=discover_slices(frame, groups.attributes, list(classes), res))
    found = subgroup_sources(
        result.findings,
        frame,
        groups.attributes,
        list(classes),
        min_group_size=min_group_size,
        confidence=settings.confidence,
    )
    new = [replace(f, id=f"F{len(found) + i + 1}") for i, f in enumerate(group_findings(res))]
    extra = dict(result.extra)
    extra["groups"] = res.to_json()
    return result.replace(findings=(*found, *new), extra=extra)


def group_gates(result: Any, gates: Any, rules: Any) -> Any:
    """``gates`` (a :class:`~auditor.results.Gates`) with the group gates of ``rules`` added."""
    from auditor.analysis.groups.gates import evaluate_group_gates
    from auditor.results import Gates

    extra = evaluate_group_gates(GroupsResult.of_summary(result), rules)
    if not extra:
        return gates
    return Gates.of([*(gates.results if gates is not None else ()), *extra])
