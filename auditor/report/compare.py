"""The comparison report's figures and template context (``auditor compare``).

Figures are pure functions (data in, PNG bytes out, no pyplot global state); the context only
formats the numbers of ``comparison.json`` (:func:`auditor.compare.compare_runs`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auditor.format import slugify
from auditor.results import ComparisonResult

__all__ = [
    "FIGURE_CLASSES",
    "TABLE_METRICS",
    "build_compare_context",
    "focus_comparison_figure",
    "moved_panel",
]


# --------------------------------------------------------------------------------------------
# figures (pure: data in, PNG bytes out; no pyplot)
# --------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def _norm_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """``up(cam) / max(up(cam))`` (bilinear upsampling; non-finite → 0; all-zero stays 0)."""
    from PIL import Image

    cam = np.asarray(cam, dtype=np.float32)
    cam = np.where(np.isfinite(cam), cam, 0.0).astype(np.float32)
    if cam.shape != (height, width):
        img = Image.fromarray(np.ascontiguousarray(cam), mode="F")
        cam = np.asarray(img.resize((width, height), resample=Image.Resampling.BILINEAR))
    peak = float(cam.max()) if cam.size else 0.0
    return np.clip(cam / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(cam)


def moved_panel(
    cam_a: np.ndarray,
    cam_b: np.ndarray,
    *,
    image: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    title: str = "",
    label_a: str = "A",
    label_b: str = "B",
) -> bytes:
    """Side-by-side CAMs of one sample under run A and run B (PNG bytes).

    Each map is bilinearly upsampled to the image size (or drawn at its own size without an
    image) and normalised to its maximum, ``cam_n = cam / max cam`` (Grad-CAM overlays as in
    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization"); the object outline is the mask's 0.5 iso-contour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from auditor.report.figures import plain_text

    ca, cb = np.asarray(cam_a), np.asarray(cam_b)
    for nm, c in (("cam_a", ca), ("cam_b", cb)):
        if c.ndim != 2 or 0 in c.shape:
            raise ValueError(f"`{nm}` must have shape [h, w] with h, w > 0, got {tuple(c.shape)}")
    if image is not None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"`image` must be uint8 [H, W, 3], got {tuple(image.shape)} {image.dtype}"
            )
        h, w = int(image.shape[0]), int(image.shape[1])
    else:
        h, w = max(ca.shape[0], cb.shape[0]), max(ca.shape[1], cb.shape[1])
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (h, w):
            mask = None  # a mask of another geometry cannot be outlined faithfully
    fig = Figure(figsize=(6.6 if image is None else 9.0, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    n = 2 if image is None else 3
    axes = fig.subplots(1, n)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.02, top=0.84, wspace=0.06)
    k = 0
    if image is not None:
        axes[0].imshow(image, interpolation="nearest")
        if mask is not None and mask.any() and not mask.all():
            axes[0].contour(
                mask.astype(np.float32), levels=[0.5], colors=["#39ff14"], linewidths=1.4
            )
        axes[0].set_title("image" + (" + object" if mask is not None else ""), fontsize=9)
        k = 1
    im = None
    for ax, cam, lab in ((axes[k], ca, label_a), (axes[k + 1], cb, label_b)):
        cn = _norm_map(cam, h, w)
        if image is not None:
            ax.imshow(image, interpolation="nearest")
            im = ax.imshow(cn, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
        else:
            im = ax.imshow(cn, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
        if mask is not None and mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=["white"], linewidths=1.0)
        ax.set_title(plain_text(lab, 50), fontsize=9)
    for ax in np.atleast_1d(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        cax = fig.add_axes((0.915, 0.08, 0.015, 0.7))
        cbar = fig.colorbar(im, cax=cax)
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("CAM / max", fontsize=7)
    if title:
        fig.suptitle(plain_text(title, 100), fontsize=9)
    return _png(fig)


def focus_comparison_figure(
    names: Sequence[str],
    mean_a: Sequence[float | None],
    ci_a: Sequence[Sequence[float | None]],
    mean_b: Sequence[float | None],
    ci_b: Sequence[Sequence[float | None]],
    diff: Sequence[float | None],
    ci_diff: Sequence[Sequence[float | None]],
    *,
    label_a: str = "A",
    label_b: str = "B",
    threshold: float | None = None,
) -> bytes:
    """Per-class background focus of A and B with intervals, and the paired difference.

    Left: ``BF = 1 − Σ cam·mask / Σ cam`` (Wang et al. 2020, "Score-CAM") of each run with its
    bootstrap interval over the paired samples. Right: ``d̄ = mean(BF_B − BF_A)`` with its paired
    bootstrap interval; the dotted line is the ``max_background_focus_increase`` gate.
    Classes are drawn top to bottom in the order given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from auditor.report.figures import COLOURS, plain_text

    n = len(names)
    if n == 0:
        raise ValueError("`names` must contain at least one class, got 0")
    for nm, seq in (
        ("mean_a", mean_a),
        ("ci_a", ci_a),
        ("mean_b", mean_b),
        ("ci_b", ci_b),
        ("diff", diff),
        ("ci_diff", ci_diff),
    ):
        if len(seq) != n:
            raise ValueError(f"`{nm}` must have length {n} (one per class), got {len(seq)}")

    def arr(seq: Sequence[Any]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in seq], dtype=float)

    def err(m: np.ndarray, ci: Sequence[Sequence[float | None]]) -> np.ndarray:
        lo, hi = arr([c[0] for c in ci]), arr([c[1] for c in ci])
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(m)
        e = np.vstack([np.where(ok, m - lo, 0.0), np.where(ok, hi - m, 0.0)])
        return np.clip(e, 0.0, None)

    ma, mb, md = arr(mean_a), arr(mean_b), arr(diff)
    fig = Figure(figsize=(9.0, max(2.2, 0.3 * n + 1.2)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(n)[::-1].astype(float)
    ax1.errorbar(
        ma,
        y + 0.15,
        xerr=err(ma, ci_a),
        fmt="o",
        color=COLOURS["orig"],
        ecolor="#a0aec0",
        elinewidth=2,
        capsize=2,
        markersize=4,
        label=plain_text(f"A: {label_a}", 40),
    )
    ax1.errorbar(
        mb,
        y - 0.15,
        xerr=err(mb, ci_b),
        fmt="s",
        color=COLOURS["accent"],
        ecolor="#90a4c3",
        elinewidth=2,
        capsize=2,
        markersize=4,
        label=plain_text(f"B: {label_b}", 40),
    )
    ax1.set_xlim(0.0, 1.0)
    ax1.set_xlabel("background focus", fontsize=8)
    ax1.set_yticks(y)
    ax1.set_yticklabels([plain_text(s, 36) for s in names], fontsize=8)
    ax1.set_ylim(-0.7, n - 0.3)
    fig.legend(fontsize=7, loc="outside upper center", ncols=2, frameon=False)
    colours = [COLOURS["wrong"] if (v > 0) else COLOURS["correct"] for v in np.nan_to_num(md)]
    e = err(md, ci_diff)
    for yi, mi, ea, eb, col in zip(y, md, e[0], e[1], colours):
        if np.isfinite(mi):
            ax2.errorbar(
                [mi],
                [yi],
                xerr=[[ea], [eb]],
                fmt="o",
                color=col,
                ecolor=col,
                elinewidth=2,
                capsize=2,
                markersize=4,
            )
        else:
            ax2.text(0.0, yi, "no value", va="center", fontsize=7, color=COLOURS["muted"])
    ax2.axvline(0.0, color=COLOURS["ink"], lw=0.8)
    if threshold is not None and math.isfinite(threshold):
        ax2.axvline(threshold, color=COLOURS["wrong"], ls=":", lw=1.4)
        ax2.text(threshold, n - 0.45, " gate", color=COLOURS["wrong"], fontsize=7, va="bottom")
    ax2.set_xlabel("difference B − A (paired)", fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(axis="x", color=COLOURS["grid"], lw=0.8)
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.tick_params(labelsize=8)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# report context (formatting only; every number comes from `comparison`)
# --------------------------------------------------------------------------------------------
#: Localisation metrics shown in the per-class table (primary methods).
TABLE_METRICS = ("background_focus", "energy_in_mask", "pointing_game", "iou", "auc")
_TITLES = {"accuracy": "Accuracy", "only_fg_drop": "Drop, object only"}
#: the table columns of a comparison of two detection runs (issue 26)
DETECTION_TABLE_METRICS = ("detection_recall", "detection_precision", "context_recall_drop",
                           "object_only_recall", "background_focus", "energy_in_mask")  # fmt: skip
FIGURE_CLASSES = 30


def build_compare_context(
    comparison: ComparisonResult | Mapping[str, Any], out_dir: Path
) -> dict[str, Any]:
    """The template context of ``compare.html.j2`` (figures as data URIs).

    ``comparison``: the typed comparison (:class:`auditor.results.ComparisonResult`), or the
    dict of a ``comparison.json`` (read through ``ComparisonResult.from_json``).
    """
    from auditor.report.context import png_uri
    from auditor.report.groups import compare_groups_context

    r = (
        comparison
        if isinstance(comparison, ComparisonResult)
        else ComparisonResult.from_json(comparison)
    )
    c = r.to_json()  # plain data for the template
    prim = c["primary"]
    titles = {k: v.get("title", k) for k, v in r.metrics_info.items()} | _TITLES
    shown = DETECTION_TABLE_METRICS if "detection" in c else TABLE_METRICS  # issue 26
    empty = {
        "mean_a": None,
        "mean_b": None,
        "diff": None,
        "ci_low": None,
        "ci_high": None,
        "n": 0,
        "p_value": None,
        "status": "n/a",
        "test": None,
    }
    rows = []
    for name in r.class_order:
        e = prim["classes"][name]
        rows.append(
            {
                "name": name,
                "slug": slugify(name),
                "n": e["n"],
                "status": e["status"],
                "m": {q: e["metrics"].get(q, empty) for q in ("accuracy",) + shown},
            }
        )
    overall_rows = [
        {"name": q, "title": titles.get(q, q), "s": s} for q, s in prim["overall"].items()
    ]
    method_rows = []
    for m, blk in c["methods"].items():
        method_rows.append(
            {
                "name": m,
                "m": {q: blk["overall"].get(q, empty) for q in shown},
            }
        )
    figures = []
    with_bf = [r for r in rows if r["m"]["background_focus"]["n"]][:FIGURE_CLASSES]
    if with_bf:
        thr = [
            g.threshold
            for g in r.gates.results
            if g.quantity == "background_focus_increase" and g.stat == "mean"
        ]
        png = focus_comparison_figure(
            [r["name"] for r in with_bf],
            [r["m"]["background_focus"]["mean_a"] for r in with_bf],
            [r["m"]["background_focus"].get("ci_a", [None, None]) for r in with_bf],
            [r["m"]["background_focus"]["mean_b"] for r in with_bf],
            [r["m"]["background_focus"].get("ci_b", [None, None]) for r in with_bf],
            [r["m"]["background_focus"]["diff"] for r in with_bf],
            [
                [r["m"]["background_focus"]["ci_low"], r["m"]["background_focus"]["ci_high"]]
                for r in with_bf
            ],
            label_a=r.run_a["name"],
            label_b=r.run_b["name"],
            threshold=thr[0] if thr else None,
        )
        cut = (
            f" Showing the first {len(with_bf)} of {len(rows)} classes in regression order."
            if len(with_bf) < len(rows)
            else ""
        )
        n_poisson = sum(1 for e in c["primary"]["classes"].values() if "interval" in e)
        streamed_note = (
            f" Intervals of {n_poisson} of {len(rows)} classes (more pairs than one chunk) "
            "come from a Poisson bootstrap keyed by dataset index (Monte-Carlo), the others "
            "are exact."
            if n_poisson
            else ""
        )
        figures.append(
            {
                "id": "fig-focus",
                "title": "Background focus per class, A vs B",
                "caption": "Left: mean background focus of each run with its bootstrap "
                "interval over the paired samples. Right: the paired difference B − A with its "
                "paired bootstrap interval (red: more background)." + cut + streamed_note,
                "alt": "Interval plots of background focus per class for both runs and their "
                "paired difference.",
                "uri": png_uri(png),
            }
        )
    moved = []
    root = Path(out_dir).resolve()
    for mv in c["moved"]:
        uri = None
        if mv.get("file"):
            p = (root / mv["file"]).resolve()
            if p.is_relative_to(root) and p.is_file():
                uri = png_uri(p.read_bytes())
        moved.append({**mv, "uri": uri})
    checks = sorted(r.gates.results, key=lambda g: (g.passed, g.rule))
    gates = {
        "passed": r.gates.passed,
        "results": [g.to_json() for g in checks],
        "n_failed": r.gates.n_failed,
    }
    counts = {
        k: sum(1 for r in rows if r["status"] == k)
        for k in ("regressed", "improved", "unchanged", "changed", "n/a")
    }
    return {
        "c": c,
        "title": f"{r.run_b['name']} vs {r.run_a['name']}: model comparison",
        "date": r.created[:10],
        "rows": rows,
        "overall_rows": overall_rows,
        "method_rows": method_rows,
        "table_metrics": [(q, titles.get(q, q)) for q in shown],
        "metric_titles": titles,
        "figures": figures,
        "moved": moved,
        "gates": gates,
        "counts": counts,
        "n_classes": len(rows),
        "groups": compare_groups_context(c.get("groups")),  # issue 24
    }
