"""The report's "Groups" section and the ``load_run(...).groups`` table (issue 24).

Pure formatting of :class:`~auditor.group_results.GroupsResult`: a table per attribute and a
forest plot (each shown group's accuracy and interval against the overall accuracy, the worst
group highlighted). Suppressed groups (fewer than ``[report] min_group_size`` samples) are
listed as "< N" with no number. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from auditor.group_results import AttributeResult, Est, GroupsResult
from auditor.report.view import GroupAttributeView, GroupRow, GroupsView

__all__ = [
    "compare_groups_context",
    "forest_plot",
    "group_classes_frame",
    "groups_context",
    "groups_frame",
]

_FRAME_COLUMNS = (
    "attribute",
    "level",
    "n",
    "suppressed",
    "accuracy",
    "ci_low",
    "ci_high",
    "accuracy_vs_rest",
    "accuracy_vs_rest_low",
    "accuracy_vs_rest_high",
    "accuracy_vs_best",
    "background_focus",
    "background_focus_vs_rest",
    "energy_in_mask",
    "only_bg_accuracy",
    "only_fg_accuracy",
    "ece",
    "ece_low",
    "ece_high",
    "flagged",
    "worst",
)


def groups_frame(result: Any) -> Any:
    """One row per attribute level (columns ``_FRAME_COLUMNS``; suppressed levels have NaN
    numbers and ``n`` NaN). Empty frame when the run has no groups."""
    import pandas as pd

    groups = GroupsResult.of_summary(result)
    rows = []
    for attr in groups.attributes if groups else ():
        for g in attr.levels:
            hide = g.suppressed

            def v(e: Est, hide: bool = hide) -> float:
                return math.nan if hide or e.value is None else e.value

            def lo(e: Est, hide: bool = hide) -> float:
                return math.nan if hide or e.low is None else e.low

            def hi(e: Est, hide: bool = hide) -> float:
                return math.nan if hide or e.high is None else e.high

            rows.append([
                attr.name, g.level, math.nan if g.suppressed else g.n, g.suppressed,
                v(g.accuracy), lo(g.accuracy), hi(g.accuracy),
                v(g.accuracy_vs_rest), lo(g.accuracy_vs_rest), hi(g.accuracy_vs_rest),
                v(g.accuracy_vs_best), v(g.background_focus), v(g.background_focus_vs_rest),
                v(g.energy_in_mask), v(g.only_bg_accuracy), v(g.only_fg_accuracy),
                v(g.ece), lo(g.ece), hi(g.ece), g.flagged, attr.worst == g.level,
            ])  # fmt: skip
    return pd.DataFrame(rows, columns=list(_FRAME_COLUMNS))


_CELL_COLUMNS = ("attribute", "level", "class", "n", "n_negative", "suppressed")
_CELL_STATS = ("sensitivity", "specificity", "auroc", "ece")


def group_classes_frame(result: Any) -> Any:
    """One row per class × attribute level: ``n`` (the class's samples in the level),
    ``n_negative``, ``sensitivity``, ``specificity``, ``auroc``, ``ece`` each with ``_low``
    and ``_high``, and ``auroc_note`` (why there is no AUROC, or that it is a lower bound).
    Suppressed cells: NaN numbers. Empty frame when the run has no groups."""
    import pandas as pd

    groups = GroupsResult.of_summary(result)
    cols = [*_CELL_COLUMNS] + [f"{s}{x}" for s in _CELL_STATS for x in ("", "_low", "_high")]
    rows = []
    for attr in groups.attributes if groups else ():
        for c in attr.classes:
            row: list[Any] = [attr.name, c.level, c.cls]
            row += [math.nan, math.nan, True] if c.suppressed else [c.n, c.n_negative, False]
            for name in _CELL_STATS:
                e: Est = getattr(c, name)
                row += [
                    math.nan if c.suppressed or x is None else x for x in (e.value, e.low, e.high)
                ]
            rows.append([*row, "" if c.suppressed else c.auroc_note])
    return pd.DataFrame(rows, columns=[*cols, "auroc_note"])


def forest_plot(
    labels: Sequence[str],
    est: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    *,
    overall: float | None,
    worst: int | None,
) -> bytes:
    """Forest plot: one row per group, its accuracy (point) and interval (bar); the dashed
    line is the overall accuracy, the worst group drawn in red. PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from auditor.report.figures import plain_text

    n = len(labels)
    if n == 0:
        raise ValueError("`labels` must name at least one group, got 0")
    fig = Figure(figsize=(6.4, max(1.6, 0.3 * n + 0.9)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    m, lo, hi = (np.asarray(a, dtype=np.float64) for a in (est, low, high))
    colours = ["#c0392b" if i == worst else "#2f5d9b" for i in range(n)]
    for yi, mi, li, hi_, c in zip(y, m, lo, hi, colours):
        ax.plot([li, hi_], [yi, yi], color=c, lw=2)
        ax.plot([mi], [yi], "o", color=c, ms=5)
    if overall is not None and math.isfinite(overall):
        ax.axvline(overall, color="#7f8c8d", ls="--", lw=1.2, label="overall")
        ax.legend(fontsize=7, loc="lower left", frameon=False)
    ax.set_yticks(y)
    ax.set_yticklabels([plain_text(s, 30) for s in labels], fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("accuracy (Wilson interval)", fontsize=8)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def _attribute_context(attr: AttributeResult, groups: GroupsResult) -> GroupAttributeView:
    from auditor.report.context import png_uri

    shown = [g for g in attr.levels if not g.suppressed and g.accuracy.value is not None]
    figure = None
    if shown:
        worst = next((i for i, g in enumerate(shown) if g.level == attr.worst), None)
        figure = png_uri(
            forest_plot(
                [f"{attr.name} = {g.level}" for g in shown],
                [g.accuracy.value or 0.0 for g in shown],
                [g.accuracy.low if g.accuracy.low is not None else math.nan for g in shown],
                [g.accuracy.high if g.accuracy.high is not None else math.nan for g in shown],
                overall=groups.overall_accuracy,
                worst=worst,
            )
        )
    rows = tuple(
        GroupRow(
            level=g.level,
            label=f"{attr.name} = {g.level}",
            n=None if g.suppressed else g.n,
            suppressed=g.suppressed,
            stats=g,
            worst=g.level == attr.worst,
        )
        for g in attr.levels
    )
    return GroupAttributeView(
        name=attr.name,
        rows=rows,
        figure=figure,
        worst=attr.worst,
        worst_accuracy=attr.worst_accuracy,
        largest_gap=attr.largest_gap,
        classes=tuple(c for c in attr.classes if not c.suppressed),
        n_classes_suppressed=sum(1 for c in attr.classes if c.suppressed),
    )


def groups_context(result: Any) -> GroupsView | None:
    """The view of the "Groups" section (None: the run has no groups)."""
    groups = GroupsResult.of_summary(result)
    if groups is None:
        return None
    return GroupsView(
        min_group_size=groups.min_group_size,
        confidence=groups.confidence,
        adjustment=groups.adjustment,
        n_tests=groups.n_tests,
        accuracy_margin=groups.accuracy_margin,
        background_focus_margin=groups.background_focus_margin,
        overall_accuracy=groups.overall_accuracy,
        attributes=tuple(_attribute_context(a, groups) for a in groups.attributes),
        slices=tuple(groups.slices),
    )


def compare_groups_context(groups: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The compare report's "Per-group differences" section from comparison.json ``groups``
    (None: either run has no groups). Each attribute: its levels' paired differences B − A
    with intervals (suppressed levels as "< N", no number) and the largest accuracy gap
    between groups in A, in B and its change."""
    if not groups or not groups.get("attributes"):
        return None
    attrs = []
    for a in groups["attributes"]:
        rows = []
        for lev in a.get("levels") or ():
            acc = Est.from_json(lev.get("accuracy_diff"))
            bf = Est.from_json(lev.get("background_focus_diff"))
            rows.append({
                "label": f"{a['name']} = {lev['level']}", "suppressed": bool(lev.get("suppressed")),
                "n": lev.get("n"), "accuracy_a": lev.get("accuracy_a"),
                "accuracy_b": lev.get("accuracy_b"), "accuracy_diff": acc,
                "background_focus_diff": bf,
                "regressed": acc.high is not None and acc.high < 0,
                "improved": acc.low is not None and acc.low > 0,
            })  # fmt: skip
        attrs.append({
            "name": a["name"], "rows": rows, "gap_a": a.get("gap_a"), "gap_b": a.get("gap_b"),
            "gap_change": a.get("gap_change"),
        })  # fmt: skip
    return {
        "min_group_size": groups.get("min_group_size", 10),
        "confidence": groups.get("confidence", 0.95),
        "attributes": attrs,
    }
