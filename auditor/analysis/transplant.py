"""Causal confirmation by transplant (issue 22): which region to paste, the statistics and the
decision, and what a confirmation does to the findings. Torch-free; the model's forwards are in
:mod:`auditor.audit.transplant`.

The intervention. For a class ``c`` with a candidate region ``R`` (a box in input pixels),
``n`` recipients (images of OTHER classes that the model does not predict as ``c``) each get

* the *transplant*: ``R`` cut from a source image of ``c`` pasted at the same place, and
* the *control*: ``R`` cut from an image of another class (the next recipient) pasted at the
  same place: same size, same location, same seams, only the content is not ``c``'s.

With object masks only the source's background pixels inside ``R`` are pasted (in both edits):
the candidate is what lies outside the object, never the object itself.

``flips`` / ``control_flips`` count the edited recipients now predicted as ``c``. The flip
rate and the control rate get Wilson (1927) score intervals; their difference gets the
Newcombe (1998, method 10, hybrid score) interval for independent proportions (conservative
here: the two rates are measured on the same recipients). The transplant is **confirmed** when
``difference_ci[0] > 0`` AND ``difference >= margin`` (0.25).

The region (rule fixed before any number was read; :func:`choose_region`):

1. the source images' primary low-resolution maps, each divided by its sum, averaged, and
   upsampled to the input size (nearest neighbour: every map cell keeps its pixels);
2. with object masks, multiplied by the share of source images for which the pixel is
   background (the hot region OUTSIDE the object); a map with less than
   ``min_outside_share`` (5 %) of its mass outside the object has no candidate;
3. the bounding box of the fewest hottest map cells (the heat summed per cell of the maps'
   grid) holding ``top_mass`` (50 %) of that heat;
4. a side longer than ``max_side`` (37.5 %) of the image's is cut to that length, centred on
   the hottest pixel; the box is then shifted inside the image (never cropped below its size).

Candidates (:func:`candidates`): a class with a ``subgroup_shortcut`` finding uses its members
as sources (``source = "subgroup"``), else the members of its location-only candidate
subgroup (a ``strategy_cluster`` from evidence-split rule 5,
:mod:`auditor.analysis.spray.evidence_split`); otherwise the class's correctly predicted
images: with a ``border_focus`` finding the region is the whole outer band of the
``border_focus`` metric (``border_band``; less the source's object where masks exist), else
with masks ``class_region``, without masks ``top_patch``.

What a transplant does to the findings (:func:`apply_transplants`; the rules of session 10
were fixed before the benchmark's seeds 1-2 were read):

* confirmed: the class's findings that the region speaks for are raised to ``high`` with the
  evidence sentence: a subgroup's region confirms its ``subgroup_shortcut``; a class region
  outside the object or the border band confirms the class's background findings and
  ``border_focus``; a top-attention patch (no masks) confirms only ``border_focus``, and only
  when the patch lies in the border band (a top patch elsewhere may well be the object
  itself);
* a confirmed location-only candidate subgroup becomes a ``subgroup_shortcut`` (high) when
  the run has object masks (the pasted pixels exclude the source's object): its maps lie
  apart from the rest of the class AND what lies off the object there causes the prediction.
  Without masks it becomes a low ``strategy_cluster`` (from info) carrying the transplant:
  the pasted region may be the members' object itself (measured: seeds 1-2 of the detection
  benchmark, where the pre-registered version of this rule confirmed the digit ``one``'s own
  strokes on 2 of 2 clean twins without masks; docs/validity.md);
* the border band NOT confirmed: a medium ``border_focus`` is lowered to ``low`` (a difference
  in attention that the model is not shown to use; the relative border rule has no test of
  dependence of its own). Not run (no model, too few images): the finding stays as it was.

Otherwise a transplant never creates a finding by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.results import AuditResult, ClassResult, Finding, freeze
from auditor.results.transplant import TransplantResult
from auditor.stats.intervals import two_proportion_diff_ci, wilson_interval

__all__ = [
    "Candidate",
    "TransplantRules",
    "apply_transplants",
    "candidates",
    "choose_region",
    "decide",
    "not_run",
    "region_heat",
    "sentence",
]

#: finding kinds a confirmed region speaks for, by source
_RAISES = {
    "subgroup": ("subgroup_shortcut",),
    "class_region": (
        "background_focus",
        "background_reliance",
        "background_sufficiency",
        "absolute_background",
        "border_focus",
    ),
    "top_patch": ("border_focus",),
}
# the border band pasted (less the source's object where masks exist) speaks for the same
# findings as a class region: what lies outside the object, here in the outer band
_RAISES["border_band"] = _RAISES["class_region"]


#: the sentence of a subgroup finding without masks (auditor.subgroup_findings), reworded when
#: the transplant confirms it
_NO_MASK_TEST = "No intervention could test it (no object masks)."


@dataclass(frozen=True)
class TransplantRules:
    """The fixed rule of the transplant (chosen before any number was read; see the module).

    Attributes:
        top_mass: the region holds this share of the source maps' (outside-object) heat.
        max_side: longest side of the region, as a share of the image's side.
        min_outside_share: with masks, the least share of map mass outside the object for a
            class region to exist.
        min_sources: fewest source images.
        min_recipients: fewest recipients (other classes' images not predicted as the class).
        margin: least ``flip_rate - control_rate`` for a confirmation.
    """

    top_mass: float = 0.5
    max_side: float = 0.375
    min_outside_share: float = 0.05
    min_sources: int = 2
    min_recipients: int = 5
    margin: float = 0.25

    def describe(self, confidence: float = 0.95) -> str:
        return (
            f"Transplant: the map cells holding {self.top_mass:.0%} of the source images' mean "
            f"map (outside the object when masks exist; sides at most {self.max_side:.1%} of "
            f"the image) is pasted onto images of other classes; confirmed when the "
            f"{confidence:.0%} Newcombe interval of flip rate minus control rate (the same "
            f"place pasted from other classes' images) lies above 0 and the difference is at "
            f"least {self.margin:.2f}."
        )


@dataclass(frozen=True)
class Candidate:
    """What to transplant for one class: the source and its images, the recipients and the
    control donors (dataset indices; ``donors[k]`` gives recipient ``k`` its control patch)."""

    cls: str
    index: int
    source: str
    sources: tuple[int, ...]
    recipients: tuple[int, ...]
    donors: tuple[int, ...]


def not_run(reason: str, source: str | None = None) -> TransplantResult:
    """A ``not_run`` result with its reason."""
    return TransplantResult(status="not_run", reason=reason, source=source)


def _column(prim: pa.Table, name: str) -> np.ndarray:
    return np.asarray(prim.column(name).to_pylist(), dtype=object)


def candidates(
    result: AuditResult,
    prim: pa.Table,
    classes: Sequence[str],
    *,
    max_images: int,
    seed: int,
    annotated: bool,
    rules: TransplantRules | None = None,
) -> dict[str, Candidate | TransplantResult]:
    """Per class: its :class:`Candidate`, or a ``not_run`` :class:`TransplantResult` saying
    why there is none. ``prim``: the primary method's rows (``index``, ``id``, ``label``,
    ``pred``); sources and recipients are drawn with ``numpy.random.default_rng(seed + c)``.
    """
    rules = rules or TransplantRules()
    if max_images < 1:
        raise ValueError(f"`max_images` must be >= 1, got {max_images}")
    missing = [c for c in ("index", "id", "label", "pred") if c not in prim.column_names]
    if missing:
        return {n: not_run(f"the rows lack {', '.join(missing)}") for n in classes}
    idx = np.asarray(prim.column("index").to_pylist(), np.int64)
    ids = [str(v) for v in prim.column("id").to_pylist()]
    labels = np.asarray(prim.column("label").to_pylist(), np.int64)
    pred = np.asarray([-1 if p is None else p for p in prim.column("pred").to_pylist()], np.int64)
    by_id = dict(zip(ids, idx.tolist()))
    out: dict[str, Candidate | TransplantResult] = {}
    for c, name in enumerate(classes):
        rng = np.random.default_rng(seed + c)
        members = _subgroup_members(result, name)
        if members:
            src = np.asarray([by_id[m] for m in members if m in by_id], np.int64)
            source = "subgroup"
        else:
            src = idx[(labels == c) & (pred == c)]
            if any(f.cls == name and f.kind == "border_focus" for f in result.findings):
                source = "border_band"
            else:
                source = "class_region" if annotated else "top_patch"
        if src.size < rules.min_sources:
            out[name] = not_run(
                f"{src.size} source image(s) of '{name}' (correctly predicted or subgroup "
                f"members); at least {rules.min_sources} needed",
                source,
            )
            continue
        rec = idx[(labels != c) & (pred != c) & (pred >= 0)]
        if rec.size < max(rules.min_recipients, 2):
            out[name] = not_run(
                f"{rec.size} image(s) of other classes not predicted as '{name}'; at least "
                f"{max(rules.min_recipients, 2)} needed",
                source,
            )
            continue
        src = np.sort(rng.permutation(src)[:max_images])
        rec = np.sort(rng.permutation(rec)[:max_images])
        donors = np.roll(rec, -1)  # recipient k's control patch: recipient k+1's image
        out[name] = Candidate(
            name, c, source, tuple(map(int, src)), tuple(map(int, rec)), tuple(map(int, donors))
        )
    return out


def _location_candidate(f: Finding) -> bool:
    """A ``strategy_cluster`` finding from a location-only evidence split (evidence split
    rule 5): a candidate subgroup the transplant tests."""
    split = f.evidence.get("split")
    return (
        f.kind == "strategy_cluster"
        and isinstance(split, Mapping)
        and bool(split.get("location_only"))
        and bool(f.evidence.get("members"))
    )


def _subgroup_members(result: AuditResult, name: str) -> list[str]:
    """Members of the class's most severe ``subgroup_shortcut`` finding, else of its
    location-only candidate subgroup (empty: none)."""
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    found = [
        f
        for f in result.findings
        if f.cls == name and f.kind == "subgroup_shortcut" and f.evidence.get("members")
    ]
    if not found:
        found = [f for f in result.findings if f.cls == name and _location_candidate(f)]
    if not found:
        return []
    best = min(found, key=lambda f: order.get(f.severity, 9))
    return [str(m) for m in best.evidence["members"]]


def _upsample_nearest(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[h, w]`` → ``[height, width]``: pixel ``(y, x)`` takes cell
    ``(floor(y h / height), floor(x w / width))``."""
    h, w = m.shape
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    return m[rows][:, cols]


def region_heat(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    size: tuple[int, int],
    rules: TransplantRules | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """The heat the region is chosen from (steps 1–2 of the module's rule) and, when there is
    none, why. ``maps``: low-resolution ``[h, w]`` maps of the source images; ``masks``: their
    object masks ``[H, W]`` (``None`` entries, or ``None``: no masks); ``size``: ``(H, W)``.
    """
    rules = rules or TransplantRules()
    height, width = int(size[0]), int(size[1])
    normed = []
    for m in maps:
        m = np.nan_to_num(np.asarray(m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        m = np.clip(m, 0.0, None)
        total = float(m.sum())
        if total > 0:
            normed.append(m / total)
    if not normed:
        return None, "every source map is zero or not finite"
    heat = _upsample_nearest(np.mean(normed, axis=0), height, width)
    given = [np.asarray(k, bool) for k in (masks or ()) if k is not None]
    if given:
        if any(k.shape != (height, width) for k in given):
            raise ValueError(
                f"`masks` must be [H, W] = {(height, width)}, got "
                f"{sorted({k.shape for k in given})}"
            )
        outside = heat * (1.0 - np.mean(given, axis=0))
        share = float(outside.sum() / heat.sum()) if heat.sum() > 0 else 0.0
        if share < rules.min_outside_share:
            return None, (
                f"the maps hold {share:.1%} of their mass outside the object (under "
                f"{rules.min_outside_share:.0%}): no region outside it to transplant"
            )
        heat = outside
    return heat, None


def choose_region(
    heat: np.ndarray,
    rules: TransplantRules | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[int, ...]:
    """``(x0, y0, x1, y1)`` (half-open, input pixels) from ``heat`` ``[H, W]`` (steps 3–4 of
    the module's rule): the bounding box of the fewest hottest units holding ``top_mass`` of
    the heat, each side cut to ``max_side`` of the image around the hottest unit, shifted
    inside the image.

    A unit is a pixel, or with ``grid = (h, w)`` (the maps' resolution) a map cell: the heat
    summed over the cell's pixels (nearest-neighbour cells, as :func:`region_heat` upsamples),
    so the region is made of whole cells (ties inside a cell mean nothing: the map has no finer
    resolution). Ties between units go in raster order.
    """
    rules = rules or TransplantRules()
    heat = np.asarray(heat, np.float64)
    if heat.ndim != 2 or 0 in heat.shape:
        raise ValueError(f"`heat` must be [H, W] with H, W > 0, got {tuple(heat.shape)}")
    if not np.isfinite(heat).all() or heat.min() < 0 or heat.sum() <= 0:
        raise ValueError("`heat` must be finite, >= 0 and not all zero")
    height, width = heat.shape
    h, w = grid if grid is not None else (height, width)
    if not (0 < h <= height and 0 < w <= width):
        raise ValueError(f"`grid` must be (h, w) within the heat's {heat.shape}, got {grid!r}")
    rows, cols = (np.arange(height) * h) // height, (np.arange(width) * w) // width
    cells = np.zeros((h, w))
    np.add.at(cells, (rows[:, None], cols[None, :]), heat)
    flat = cells.ravel()
    order = np.argsort(-flat, kind="stable")
    cum = np.cumsum(flat[order])
    k = int(np.searchsorted(cum, rules.top_mass * cum[-1] * (1 - 1e-12))) + 1
    cy, cx = np.divmod(order[:k], w)
    y_start, y_end = (
        np.searchsorted(rows, np.arange(h)),
        np.searchsorted(rows, np.arange(h), "right"),
    )
    x_start, x_end = (
        np.searchsorted(cols, np.arange(w)),
        np.searchsorted(cols, np.arange(w), "right"),
    )
    py, px = divmod(int(order[0]), w)
    peak_y = (int(y_start[py]) + int(y_end[py]) - 1) // 2
    peak_x = (int(x_start[px]) + int(x_end[px]) - 1) // 2
    y0, y1 = _side(int(y_start[cy].min()), int(y_end[cy].max()), peak_y, height, rules.max_side)
    x0, x1 = _side(int(x_start[cx].min()), int(x_end[cx].max()), peak_x, width, rules.max_side)
    return (x0, y0, x1, y1)


def _side(lo: int, hi: int, peak: int, extent: int, max_side: float) -> tuple[int, int]:
    """One side of the box: cut to ``max_side * extent`` (at least 1 px) around ``peak`` and
    shifted inside ``[0, extent)``."""
    cap = max(1, int(round(max_side * extent)))
    if hi - lo > cap:
        lo = peak - cap // 2
        hi = lo + cap
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > extent:
        lo, hi = max(0, lo - (hi - extent)), extent
    return lo, hi


def decide(
    flips: int,
    control_flips: int,
    n: int,
    *,
    confidence: float = 0.95,
    rules: TransplantRules | None = None,
    **fields: Any,
) -> TransplantResult:
    r"""The decision from the counts.

    ``flip_ci`` and ``control_ci`` are Wilson (1927) score intervals; ``difference_ci`` is
    Newcombe's (1998) method 10 for ``p_1 - p_2``:
    :math:`L = \hat d - \sqrt{(\hat p_1 - l_1)^2 + (u_2 - \hat p_2)^2}`,
    :math:`U = \hat d + \sqrt{(u_1 - \hat p_1)^2 + (\hat p_2 - l_2)^2}`.
    Confirmed when ``L > 0`` and ``\hat d \ge`` ``rules.margin``. ``fields``: the other
    :class:`TransplantResult` fields (source, region, ...).

    E.g. 61 of 64 vs 2 of 64 at 95 %: flip 0.953 (0.870, 0.984), control 0.031
    (0.009, 0.107), difference 0.922 (0.814, 0.966): confirmed.
    """
    rules = rules or TransplantRules()
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    w1 = wilson_interval(flips, n, confidence)
    w2 = wilson_interval(control_flips, n, confidence)
    d = two_proportion_diff_ci(flips, n, control_flips, n, confidence)
    ok = d.low > 0 and d.estimate >= rules.margin - 1e-12
    return TransplantResult(
        status="confirmed" if ok else "not_confirmed",
        n=n,
        flips=flips,
        control_flips=control_flips,
        flip_rate=w1.estimate,
        flip_ci=(w1.low, w1.high),
        control_rate=w2.estimate,
        control_ci=(w2.low, w2.high),
        difference=d.estimate,
        difference_ci=(d.low, d.high),
        margin=rules.margin,
        **fields,
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def sentence(name: str, t: TransplantResult) -> str:
    """The evidence sentence of a (confirmed or not) transplant."""
    x0, y0, x1, y1 = t.region or (0, 0, 0, 0)
    what = {"subgroup": "the subgroup's", "class_region": "the class's outside-object",
            "top_patch": "the class's top-attention"}.get(t.source or "", "the")  # fmt: skip
    where = f"{what} region (x {x0}–{x1}, y {y0}–{y1})"
    if t.source == "border_band":
        where = "the outer border band"
    lo, hi = t.flip_ci
    return (
        f"Pasting {where} of {t.n_sources} '{name}' images "
        f"onto {t.n} images of other classes flips {t.flips} ({_pct(t.flip_rate)}, 95% "
        f"[{_pct(lo)}, {_pct(hi)}]) to '{name}'; a control patch of the same size and place "
        f"from other classes' images flips {t.control_flips} ({_pct(t.control_rate)})."
    )


def _in_border(region: tuple[int, ...], size: tuple[int, int], border_width: float) -> bool:
    """The region lies inside the outer band of ``border_width`` of the image's sides."""
    x0, y0, x1, y1 = region
    height, width = size
    by, bx = border_width * height, border_width * width
    return x1 <= bx or x0 >= width - bx or y1 <= by or y0 >= height - by


def apply_transplants(
    result: AuditResult,
    outcomes: Mapping[str, TransplantResult],
    *,
    size: tuple[int, int] | None = None,
    border_width: float = 0.1,
    annotated: bool = False,
) -> AuditResult:
    """The result with ``classes[c].extra["transplant"]`` set and each confirmed transplant's
    findings raised to ``high`` with the evidence sentence (see the module); findings are
    renumbered and the classes' flags recomputed. ``annotated``: the run has object masks
    (a location candidate's confirmation makes a finding only then: see the module)."""
    from auditor.analysis.findings.registry import apply_flags, number_findings

    classes: dict[str, ClassResult] = {}
    for name, cr in result.classes.items():
        t = outcomes.get(name)
        extra = dict(cr.extra)
        if t is not None:
            extra["transplant"] = t.to_json()
        classes[name] = replace(cr, extra=freeze(extra))
    findings = [_raised(f, outcomes, size, border_width, annotated) for f in result.findings]
    changed = any(a is not b for a, b in zip(findings, result.findings))
    if changed:
        findings = number_findings(findings)
        classes = apply_flags(classes, findings, result.primary_method)
    return result.replace(
        classes=MappingProxyType(classes),
        findings=tuple(findings),
        clusters=_raised_subgroups(result.clusters, findings),
    )


def _raised_subgroups(clusters: Any, findings: Sequence[Finding]) -> Any:
    """The clusters with the subgroups of the raised ``subgroup_shortcut`` findings at ``high``
    too (the report's Subgroups section shows the subgroup's own severity)."""
    if not clusters:
        return clusters
    raised = {
        (f.cls, frozenset(map(str, f.evidence.get("members") or ())))
        for f in findings
        if f.kind == "subgroup_shortcut" and "transplant" in f.evidence and f.severity == "high"
    }
    if not raised:
        return clusters
    out = {}
    for name, cc in clusters.items():
        subs = cc.subgroups
        if subs:
            subs = tuple(
                replace(g, severity="high") if (name, frozenset(g.members)) in raised else g
                for g in subs
            )
            cc = replace(cc, subgroups=subs)
        out[name] = cc
    return MappingProxyType(out)


def _raised(
    f: Finding,
    outcomes: Mapping[str, TransplantResult],
    size: tuple[int, int] | None,
    border_width: float,
    annotated: bool = False,
) -> Finding:
    t = outcomes.get(f.cls) if f.cls is not None else None
    if t is None or t.source is None:
        return f
    if (
        t.source == "border_band"
        and t.status == "not_confirmed"
        and f.kind == "border_focus"
        and f.severity == "medium"
    ):
        # the relative border rule has no test of dependence of its own: the band pasted
        # onto other classes moves nothing, so the attention is not shown to be used
        return replace(
            f,
            severity="low",
            message=f"{f.message} {sentence(str(f.cls), t)} The border attention is not "
            f"shown to be used.",
            evidence={**dict(f.evidence), "transplant": t.to_json()},
        )
    if t.confirmed and t.source == "subgroup" and _location_candidate(f):
        # the class's transplant took this candidate's members: an evidence split (at most
        # one per class) exists only when the clusters gave no subgroup_shortcut
        if annotated:
            return _confirmed_candidate(f, t)
        # without masks the pasted region may be the members' object itself (a digit placed
        # in that cell): the evidence is kept, the finding stays low
        return replace(
            f,
            severity="low",
            message=f"{f.message} {sentence(str(f.cls), t)} Without object masks this region "
            f"may be the object itself: annotate masks to tell a cue from the object.",
            evidence={**dict(f.evidence), "transplant": t.to_json()},
        )
    if not t.confirmed or f.kind not in _RAISES[t.source]:
        return f
    if t.source == "top_patch" and (
        size is None or t.region is None or not _in_border(t.region, size, border_width)
    ):
        return f
    evidence = {**dict(f.evidence), "transplant": t.to_json()}
    text = sentence(str(f.cls), t)
    # auditor.subgroup_findings says no intervention could test a subgroup without masks:
    # the transplant is one that does not need them
    message = f.message.replace(_NO_MASK_TEST, "No mask-based intervention could test it.")
    return replace(
        f,
        severity="high",
        message=f"{message} {text}".strip(),
        evidence=evidence,
    )


def _confirmed_candidate(f: Finding, t: TransplantResult) -> Finding:
    """A location-only candidate subgroup whose region the transplant confirms: a
    ``subgroup_shortcut`` (high). The two pieces of evidence are independent: the maps of the
    members lie apart (a mixture with a gap), and what lies there causes the prediction."""
    ev = dict(f.evidence)
    n, m, where = ev.get("size"), ev.get("class_size"), ev.get("where") or "same place"
    return replace(
        f,
        kind="subgroup_shortcut",
        severity="high",
        title=f"{n} of {m} '{f.cls}' images are predicted from the {where}",
        message=f"{f.message} {sentence(str(f.cls), t)}",
        evidence={**ev, "transplant": t.to_json()},
    )
