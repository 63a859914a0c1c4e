"""The report's figures (:class:`auditor.report.view.FigureView`), one function per figure.

Each draws from values of the typed result, the per-class rows (risk order) or the per-sample
columns of ``samples.parquet`` (:func:`auditor.report.context._read_samples`); a figure whose
data the run lacks is left out. Per-class figures show the ``limits.top_n`` highest-risk
classes and say so in their caption.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from auditor.format import finite_or_none
from auditor.report import figures as figs
from auditor.report.context import ReportLimits, downsample, png_uri
from auditor.report.view import ClassRow, FigureView
from auditor.results import AuditResult

__all__ = ["report_figures"]

Samples = Mapping[str, np.ndarray]


def report_figures(
    result: AuditResult,
    rows: Sequence[ClassRow],
    samples: Samples | None,
    limits: ReportLimits,
) -> tuple[FigureView, ...]:
    """Every figure the run's data allow, in document order."""
    top = list(rows[: limits.top_n] if limits.top_n else rows)
    cut = (
        f" Showing the {len(top)} highest-risk of {len(rows)} classes."
        if len(top) < len(rows)
        else ""
    )
    out: list[FigureView | None] = [background_focus_figure(result, top, cut)]
    out += energy_figures(result.primary_method, samples, limits)
    out += [
        confusion_figure(result, top, limits),
        interventions_figure(top, cut),
        agreement_figure(result),
    ]
    return tuple(f for f in out if f is not None)


def _bf(row: ClassRow) -> Any:
    return row.m.get("background_focus")


def _gate_threshold(result: AuditResult) -> float | None:
    cfg = result.run.config or {}
    gates = cfg.get("gates") if isinstance(cfg, Mapping) else None
    return finite_or_none(gates.get("max_background_focus")) if isinstance(gates, Mapping) else None


def background_focus_figure(
    result: AuditResult, top: list[ClassRow], cut: str
) -> FigureView | None:
    """Mean background focus per class with its interval, the dataset-wide value and the
    gate threshold."""
    rows = [r for r in top if _bf(r) is not None and _bf(r).mean is not None]
    if not rows:
        return None
    primary = result.primary_method
    overall = result.overall.stat(primary, "background_focus")
    threshold = _gate_threshold(result)
    return FigureView(
        id="fig-background-focus",
        title="Background focus per class",
        caption=f"Mean background focus ({primary}) per class with its confidence interval; the "
        "dashed line is the dataset-wide value"
        + (", the dotted line the gate threshold" if threshold is not None else "")
        + "."
        + cut,
        alt="Interval plot of background focus per class, highest-risk classes at the top.",
        uri=png_uri(
            figs.background_focus_by_class(
                [r.name for r in rows],
                [_bf(r).mean for r in rows],
                [_bf(r).ci_low for r in rows],
                [_bf(r).ci_high for r in rows],
                baseline=finite_or_none(None if overall is None else overall.mean),
                threshold=threshold,
            )
        ),
    )


def energy_figures(
    primary: str, samples: Samples | None, limits: ReportLimits
) -> list[FigureView | None]:
    """Energy in object: its distribution for correct vs wrong predictions, and against the
    confidence (a deterministic sample of ``limits.scatter_points`` points above it)."""
    if samples is None or samples.get("energy_in_mask") is None:
        return []
    e, ok = samples["energy_in_mask"], samples["correct"]
    if not np.isfinite(e).any():
        return []
    out: list[FigureView | None] = [
        FigureView(
            id="fig-energy-distribution",
            title="Energy in object: correct vs wrong predictions",
            caption=f"Distribution of the per-sample share of CAM energy inside the object "
            f"({primary}) for correct and wrong predictions (counts in the legend; samples "
            "without a value excluded). Densities, so groups of unequal size compare.",
            alt="Histograms of energy in object for correct and wrong predictions.",
            uri=png_uri(figs.energy_distribution(e[ok], e[~ok])),
        )
    ]
    if "confidence" in samples:
        shown = downsample(e.size, limits.scatter_points)
        note = (
            f" {shown.size:,} of {e.size:,} samples shown (a uniform random sample, "
            "the same on every rendering)."
            if shown.size < e.size
            else ""
        )
        out.append(
            FigureView(
                id="fig-energy-confidence",
                title="Energy in object vs confidence",
                caption=f"Each point is one sample ({primary}): energy in object against the "
                "model's probability for the explained class." + note,
                alt="Scatter plot of energy in object against confidence, coloured by correctness.",
                uri=png_uri(
                    figs.energy_vs_confidence(e[shown], samples["confidence"][shown], ok[shown])
                ),
            )
        )
    return out


def confusion_figure(
    result: AuditResult, top: list[ClassRow], limits: ReportLimits
) -> FigureView | None:
    """The confusion matrix, restricted to the highest-risk classes above ``limits.top_n``."""
    conf = result.confusion
    if conf is None or not conf.classes:
        return None
    names = list(conf.classes)
    mat = np.asarray(
        [[np.nan if v is None else v for v in row] for row in conf.matrix], dtype=float
    )
    caption = "Rows: true class; columns: predicted class; colour on a log scale."
    if limits.top_n and len(names) > limits.top_n:
        pos = {n: i for i, n in enumerate(names)}
        keep = [pos[r.name] for r in top if r.name in pos]
        names = [names[i] for i in keep]
        mat = mat[np.ix_(keep, keep)]
        caption += (
            f" Restricted to the {len(keep)} highest-risk of {len(conf.classes)} classes;"
            " confusions with other classes are not shown."
        )
    if not names:
        return None
    return FigureView(
        id="fig-confusion",
        title="Confusion matrix",
        caption=caption,
        alt="Confusion matrix heat map of true against predicted classes.",
        uri=png_uri(figs.confusion_matrix(names, mat)),
    )


def interventions_figure(top: list[ClassRow], cut: str) -> FigureView | None:
    """Accuracy per class on original and intervened images."""
    rows = [r for r in top if r.interventions is not None]
    if not rows:
        return None

    def col(key: str) -> list[Any]:
        return [(r.interventions or {}).get(key) for r in rows]

    return FigureView(
        id="fig-interventions",
        title="Accuracy under background interventions",
        caption="Accuracy on original images, on the object alone (background removed), on "
        "the background alone (object removed) and on the object pasted on another image's "
        "background." + cut,
        alt="Grouped bar chart of accuracy per class for original and intervened images.",
        uri=png_uri(
            figs.interventions_by_class(
                [r.name for r in rows],
                col("accuracy"),
                col("only_fg_accuracy"),
                col("only_bg_accuracy"),
                col("mixed_rand_accuracy"),
            )
        ),
    )


def agreement_figure(result: AuditResult) -> FigureView | None:
    """Mean Spearman rank correlation between the maps of each pair of methods."""
    agree = result.method_agreement
    if agree is None or len(agree.methods) < 2:
        return None
    return FigureView(
        id="fig-method-agreement",
        title="Agreement between methods",
        caption="Mean Spearman rank correlation between the maps of each pair of methods; low "
        "agreement means the explanation depends on the method, so read single-method "
        "evidence with care.",
        alt="Heat map of rank correlation between CAM methods.",
        uri=png_uri(figs.method_agreement(list(agree.methods), [list(r) for r in agree.spearman])),
    )
