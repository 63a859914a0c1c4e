"""Subgroups within a class: the shortcut that only part of a class uses, with intervals.

SpRAy (Lapuschkin, Wäldchen, Binder, Montavon, Samek & Müller 2019, "Unmasking Clever Hans
predictors and assessing what machines really learn", Nature Communications 10:1096) found
the PASCAL "horse" copyright tag because only a *subgroup* of the class carried it: a
class-wide mean hides it. This module searches each class for such a subgroup and tests it.

Pipeline of :func:`analyse_class` (one class at a time; never the whole dataset in memory):

1. **Partition**: the class's low-resolution maps are clustered spectrally
   (:func:`auditor.analysis.spray.clusters.spray_clusters` with ``select_k="stability"``:
   ``k`` is the finest partition that survives resampling, ``k = 1`` when nothing
   separates), on a k-NN graph of
   :math:`\\mathrm{clip}(\\mathrm{round}(\\sqrt N), 3, 10)` neighbours.
2. **Test each cluster against the rest of its class**, statistic by statistic, with an
   interval of the *difference* (never a threshold on a mean):

   * shares and scores per sample, ``background_focus`` (needs a mask), ``border_focus``,
     ``entropy``, ``peak_distance`` (distance of the map's maximum from the image centre,
     divided by the half-diagonal: 0 = centre, 1 = a corner) and ``only_fg_drop``
     (``correct - only_fg_correct``: 1 when removing the background breaks a correct
     prediction): percentile bootstrap of :math:`\\bar x_{sub} - \\bar x_{rest}`
     (:func:`auditor.stats.bootstrap_diff_ci`);
   * proportions, ``only_bg_hit`` (the background alone, object removed, is predicted as the
     class; Xiao, Engstrom, Ilyas & Madry 2021, "Noise or Signal", ICLR) and ``correct``:
     Newcombe's hybrid score interval of :math:`p_{sub} - p_{rest}`
     (:func:`auditor.stats.two_proportion_diff_ci`).

   All intervals of a class are Bonferroni-adjusted: confidence
   :math:`1 - (1 - c) / m` with :math:`m` = clusters × statistics tested. A statistic
   *separates* the cluster when its interval excludes 0 by more than the statistic's margin
   (:class:`SubgroupRules`): ``lo > margin`` or ``hi < -margin``. A cluster that separates on
   no statistic is not a strategy and is not reported.
3. **Verdict** of a separating cluster:

   * it *looks elsewhere* when its background focus separates upwards (with masks) or, without
     masks, its border focus separates upwards and its mean border focus exceeds the band's
     area share (chance);
   * the looking is *needed* when its only-background hit rate separates upwards with a
     Wilson lower bound above chance (1 / number of classes): the background alone carries
     the class for these images (sufficiency); or when removing the background breaks its
     predictions more than the rest's (``only_fg_drop`` separates upwards);
   * severity: elsewhere and needed → **high**; elsewhere with no intervention to test it
     (no masks) → **medium**; elsewhere but the interventions show it is not needed, or a
     separation on other statistics only → **low**.
4. **Where** the mass sits: the cell of a 3 × 3 grid holding most of the cluster's mean map
   (a corner, an edge, the centre) and the share of the mean map in the border band.

With ``k = 2`` each cluster is the rest of the other and their tests are mirror images: only
the more severe (then the smaller) is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.analysis.spray.clusters import spray_clusters
from auditor.results import SubgroupDetail, SubgroupTest
from auditor.stats import bootstrap_diff_ci, two_proportion_diff_ci, wilson_interval

__all__ = [
    "BINARY_STATS",
    "CONTINUOUS_STATS",
    "ClassSubgroups",
    "StatTest",
    "Subgroup",
    "SubgroupRules",
    "analyse_class",
    "border_chance",
    "describe_location",
    "peak_distance",
]

#: Per-sample statistics tested with a bootstrap of the difference of means.
CONTINUOUS_STATS: tuple[str, ...] = (
    "background_focus",
    "border_focus",
    "entropy",
    "peak_distance",
    "only_fg_drop",
)
#: Per-sample 0/1 statistics tested with Newcombe's interval of the difference of proportions.
BINARY_STATS: tuple[str, ...] = ("only_bg_hit", "correct")
_CELL_NAMES = (
    ("top-left corner", "top edge", "top-right corner"),
    ("left edge", "centre", "right edge"),
    ("bottom-left corner", "bottom edge", "bottom-right corner"),
)


@dataclass(frozen=True)
class SubgroupRules:
    """Margins of the subgroup tests (a difference must clear them with its whole interval)."""

    margins: Mapping[str, float] = field(
        default_factory=lambda: {
            "background_focus": 0.15,
            "border_focus": 0.15,
            "entropy": 0.05,
            "peak_distance": 0.2,
            "only_fg_drop": 0.2,
            "only_bg_hit": 0.2,
            "correct": 0.2,
        }
    )
    min_class_size: int = 12
    min_subgroup_size: int = 3
    max_k: int = 6
    n_resamples: int = 10
    #: classes with more maps are clustered on a seeded sample of this many maps, the rest
    #: assigned to the nearest cluster mean (``spray_clusters(max_maps=...)``; issue 14);
    #: the tests below still use every map of the class. None: always every map.
    max_maps: int | None = 5000

    def describe(self, confidence: float) -> str:
        m = self.margins
        return (
            "SpRAy clusters of each class (k chosen by stability across resamples, k = 1 when "
            "nothing separates) are each tested against the rest of their class with "
            f"Bonferroni-adjusted {confidence:.0%} intervals of the difference (bootstrap for "
            "shares, Newcombe for proportions); a statistic separates when the whole interval "
            "clears its margin ("
            + ", ".join(f"{k} {v:.2f}" for k, v in m.items())
            + "). A cluster that looks elsewhere (background focus, or without masks border "
            "focus above chance, separates upwards) AND whose background alone is predicted "
            "as the class (only-background hit rate separates upwards, Wilson lower bound "
            "above chance) or whose accuracy falls without its background is a high-severity "
            "finding; without masks to test it, medium; otherwise low."
        )


@dataclass(frozen=True)
class StatTest:
    """One statistic, subgroup against the rest of its class.

    ``diff = subgroup - rest`` with its (adjusted) interval ``ci``; ``baseline`` is the value
    the interval must exclude (0: no difference) and ``margin`` how far; ``separates`` says
    whether it does, ``direction`` is ``"higher"``/``"lower"`` for the subgroup (or ``""``).
    """

    name: str
    subgroup: float | None
    rest: float | None
    diff: float | None
    ci: tuple[float | None, float | None]
    n_subgroup: int
    n_rest: int
    method: str
    confidence: float
    margin: float
    separates: bool
    direction: str
    baseline: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """summary.json's form: :class:`auditor.results.SubgroupTest` (the one definition)."""
        return SubgroupTest(
            name=self.name,
            subgroup=self.subgroup,
            rest=self.rest,
            diff=self.diff,
            ci=self.ci,
            n_subgroup=self.n_subgroup,
            n_rest=self.n_rest,
            method=self.method,
            confidence=self.confidence,
            margin=self.margin,
            baseline=self.baseline,
            separates=self.separates,
            direction=self.direction,
        ).to_json()


@dataclass(frozen=True)
class Subgroup:
    """A cluster of one class that separates from the rest on at least one statistic."""

    cluster: int
    members: np.ndarray
    class_size: int
    tests: dict[str, StatTest]
    separating: tuple[str, ...]
    elsewhere: bool
    elsewhere_statistic: str | None
    needed: bool
    needed_statistic: str | None
    interventions: bool
    severity: str
    where: str
    region_share: float
    rest_region_share: float
    border_share: float
    exemplars: np.ndarray
    rest_exemplars: np.ndarray
    only_bg_rate: tuple[float | None, float | None, float | None]
    #: set when the subgroup comes from the per-sample evidence, not from a SpRAy cluster:
    #: ``{statistic, threshold, gap}`` (:mod:`auditor.analysis.spray.evidence_split`; issue 22)
    split: Mapping[str, Any] | None = None

    @property
    def size(self) -> int:
        return int(self.members.size)


@dataclass(frozen=True)
class ClassSubgroups:
    """Outcome of :func:`analyse_class` for one class."""

    k: int
    k_rule: str
    stability: dict[int, float]
    eigengap: float
    labels: np.ndarray
    cluster_sizes: tuple[int, ...]
    cluster_exemplars: tuple[np.ndarray, ...]
    cluster_background_focus: tuple[float | None, ...]
    cluster_tests: tuple[dict[str, StatTest], ...]
    subgroups: tuple[Subgroup, ...]
    confidence: float
    #: maps the spectral clustering saw (< ``labels.size`` when the class was sampled)
    n_clustered: int | None = None


def peak_distance(maps: np.ndarray) -> np.ndarray:
    """Distance of each map's maximum from the image centre, ÷ the half-diagonal, in [0, 1].

    .. math:: d = \\frac{\\lVert (y^* + \\tfrac12)/h - \\tfrac12,\\ (x^* + \\tfrac12)/w -
              \\tfrac12 \\rVert_2}{\\sqrt{1/2}},\\qquad (y^*, x^*) = \\arg\\max M

    Ties of the maximum use the mean position of the tied pixels; a constant, all-zero or
    non-finite map has no peak: NaN.
    """
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"`maps` must have shape [N, h, w] with h, w > 0, got {arr.shape}")
    n, h, w = arr.shape
    out = np.full(n, np.nan)
    if n == 0:
        return out
    flat = arr.reshape(n, h * w)
    finite = np.asarray(np.isfinite(flat).all(axis=1), dtype=bool)
    mx = np.where(finite[:, None], flat, 0.0).max(1)
    mn = np.where(finite[:, None], flat, 0.0).min(1)
    ok = finite & (mx > mn)
    yy, xx = np.divmod(np.arange(h * w), w)
    top = (flat == mx[:, None]) & ok[:, None]
    cnt = top.sum(1).clip(1)
    cy = ((top * ((yy + 0.5) / h)).sum(1) / cnt) - 0.5
    cx = ((top * ((xx + 0.5) / w)).sum(1) / cnt) - 0.5
    out[ok] = (np.sqrt(cy**2 + cx**2) / math.sqrt(0.5))[ok]
    return out


def border_chance(size: tuple[int, int], width_fraction: float) -> float:
    """Area share of the border band of :func:`auditor.metrics.border_focus` (chance level)."""
    h, w = int(size[0]), int(size[1])
    band = max(1, round(float(width_fraction) * min(h, w)))
    inner = max(h - 2 * band, 0) * max(w - 2 * band, 0)
    return 1.0 - inner / float(h * w)


def _cells(h: int, w: int) -> np.ndarray:
    """[3, 3, h, w] bool: the cells of a 3 × 3 grid over an h × w map."""
    ys = np.minimum((np.arange(h) * 3) // h, 2)
    xs = np.minimum((np.arange(w) * 3) // w, 2)
    out: np.ndarray = np.zeros((3, 3, h, w), bool)
    for i in range(3):
        for j in range(3):
            out[i, j] = (ys[:, None] == i) & (xs[None, :] == j)
    return out


def describe_location(mean_map: np.ndarray) -> tuple[str, tuple[int, int], float, float]:
    """(name, (row, col) of the 3 × 3 cell, its mass share, border-band share) of a map.

    The map is made non-negative and normalised to sum 1; the cell with most mass names the
    place ("bottom-left corner", "top edge", "centre", ...). When the band of width
    ``max(1, round(0.1 * min(h, w)))`` holds more than half the mass and no cell more than
    0.4, the place is "the image border".
    """
    m = np.abs(np.asarray(mean_map, dtype=np.float64))
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"`mean_map` must have shape [h, w], got {m.shape}")
    total = m.sum()
    m = m / total if total > 0 and np.isfinite(total) else np.full_like(m, 1.0 / m.size)
    h, w = m.shape
    cells = _cells(h, w)
    shares = np.array([[m[cells[i, j]].sum() for j in range(3)] for i in range(3)])
    i, j = np.unravel_index(int(np.argmax(shares)), (3, 3))
    band = max(1, round(0.1 * min(h, w)))
    inner = np.zeros_like(m, dtype=bool)
    inner[band : h - band, band : w - band] = True
    border = float(m[~inner].sum())
    name = _CELL_NAMES[i][j]
    if border > 0.5 and shares[i, j] <= 0.4:
        name = "image border"
    return name, (int(i), int(j)), float(shares[i, j]), border


def _test(
    name: str,
    values: np.ndarray,
    member: np.ndarray,
    *,
    confidence: float,
    margin: float,
    n_boot: int,
    seed: int,
) -> StatTest | None:
    a, b = values[member], values[~member]
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    if fa.size < 2 or fb.size < 2:
        return None
    if name in BINARY_STATS:
        ka, kb = int(fa.sum()), int(fb.sum())
        iv = two_proportion_diff_ci(ka, fa.size, kb, fb.size, confidence=confidence)
    else:
        iv = bootstrap_diff_ci(fa, fb, confidence=confidence, n_boot=n_boot, seed=seed)
    lo, hi = iv.low, iv.high
    up = bool(np.isfinite(lo) and lo > margin)
    down = bool(np.isfinite(hi) and hi < -margin)
    return StatTest(
        name=name,
        subgroup=float(fa.mean()),
        rest=float(fb.mean()),
        diff=float(iv.estimate),
        ci=(float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None),
        n_subgroup=int(fa.size),
        n_rest=int(fb.size),
        method=iv.method,
        confidence=confidence,
        margin=margin,
        separates=up or down,
        direction="higher" if up else "lower" if down else "",
    )


def _closest(pooled: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    if idx.size == 0:
        return idx
    feats = pooled[idx].reshape(idx.size, -1)
    centre = feats.mean(0, keepdims=True)
    order = np.argsort(np.linalg.norm(feats - centre, axis=1), kind="stable")
    return idx[order[:n]]


def _normalised(maps: np.ndarray) -> np.ndarray:
    x = np.abs(np.asarray(maps, dtype=np.float64))
    s = x.reshape(x.shape[0], -1).sum(1)
    s = np.where(s > 0, s, 1.0)
    return x / s[:, None, None]


def _member_tests(
    names: Sequence[str],
    values: Mapping[str, np.ndarray],
    member: np.ndarray,
    *,
    confidence: float,
    rules: SubgroupRules,
    n_boot: int,
    seed: int,
) -> dict[str, StatTest]:
    """:func:`_test` of every statistic in ``names``, members against the rest of the class
    (statistic ``i`` seeded ``seed + 1009 i``); statistics without a test are left out."""
    tests: dict[str, StatTest] = {}
    for s_i, name in enumerate(names):
        t = _test(
            name,
            values[name],
            member,
            confidence=confidence,
            margin=float(rules.margins.get(name, 0.0)),
            n_boot=n_boot,
            seed=seed + 1009 * s_i,
        )
        if t is not None:
            tests[name] = t
    return tests


def analyse_class(
    maps: np.ndarray,
    stats: Mapping[str, np.ndarray],
    *,
    n_classes: int,
    border_chance_share: float,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    rules: SubgroupRules | None = None,
    n_exemplars: int = 4,
) -> ClassSubgroups:
    """Search one class for subgroups and test each against the rest (module docstring).

    Args:
        maps: ``[N, h, w]`` low-resolution maps of the class's samples (primary method).
        stats: per-sample arrays ``[N]`` (NaN where undefined), any of
            :data:`CONTINUOUS_STATS` and :data:`BINARY_STATS`; ``peak_distance`` is computed
            from ``maps`` when absent.
        n_classes: number of classes (chance level of the only-background hit rate).
        border_chance_share: area share of the border band at the image size
            (:func:`border_chance`), the chance level of ``border_focus``.
        confidence: family confidence of the class's intervals (Bonferroni-adjusted inside).
        n_boot, seed: bootstrap replicates and seed.
        rules: margins and sizes (:class:`SubgroupRules`).
        n_exemplars: exemplars kept per subgroup and for the rest of the class.
    """
    rules = rules or SubgroupRules()
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"`maps` must have shape [N, h, w], got {arr.shape}")
    n = arr.shape[0]
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"`n_classes` must be an int >= 1, got {n_classes!r}")
    values: dict[str, np.ndarray] = {}
    for key, v in stats.items():
        if key not in CONTINUOUS_STATS and key not in BINARY_STATS:
            raise ValueError(
                f"`stats` has an unknown statistic {key!r}; "
                f"known: {CONTINUOUS_STATS + BINARY_STATS}"
            )
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (n,):
            raise ValueError(f"`stats[{key!r}]` must have shape [{n}], got {a.shape}")
        values[key] = a
    if "peak_distance" not in values:
        values["peak_distance"] = peak_distance(arr)
    bf = values.get("background_focus")
    res = spray_clusters(
        arr,
        background_focus=bf if bf is not None and np.isfinite(bf).any() else None,
        max_k=rules.max_k,
        # k-NN graph of about sqrt(N) neighbours (3..10): a subgroup larger than that stays
        # its own component of the graph instead of being wired into the rest of the class
        n_neighbors=int(np.clip(round(math.sqrt(max(n, 1))), 3, 10)),
        seed=seed,
        n_exemplars=n_exemplars,
        select_k="stability",
        n_resamples=rules.n_resamples,
        min_cluster_size=rules.min_subgroup_size,
        max_maps=rules.max_maps,
    )
    labels = res.labels
    pooled = _normalised(arr) if n else np.zeros((0, 1, 1))
    names = [s for s in CONTINUOUS_STATS + BINARY_STATS if s in values]
    k = len(res.clusters)
    m_tests = max(1, k * len(names))
    adj = 1.0 - (1.0 - confidence) / m_tests
    cluster_tests: list[dict[str, StatTest]] = []
    subgroups: list[Subgroup] = []
    for cl in res.clusters:
        member = labels == cl.id
        tests: dict[str, StatTest] = {}
        if k >= 2:
            tests = _member_tests(
                names, values, member, confidence=adj, rules=rules, n_boot=n_boot,
                seed=seed + 7 * cl.id,
            )  # fmt: skip
        cluster_tests.append(tests)
        separating = tuple(t.name for t in tests.values() if t.separates)
        if not separating:
            continue
        sub = _verdict(
            cl.id,
            member,
            tests,
            separating,
            values,
            pooled,
            n_classes=n_classes,
            border_chance_share=border_chance_share,
            confidence=confidence,
            n_exemplars=n_exemplars,
        )
        subgroups.append(sub)
    if not subgroups and n >= rules.min_class_size:
        # the maps do not cluster: search the per-sample evidence for a split (issue 22)
        from auditor.analysis.spray.evidence_split import evidence_split

        split = evidence_split(
            values,
            pooled,
            n_classes=n_classes,
            border_chance_share=border_chance_share,
            confidence=confidence,
            n_boot=n_boot,
            seed=seed,
            rules=rules,
            n_exemplars=n_exemplars,
            cluster_id=k,
        )
        if split is not None:
            subgroups.append(split)
    order = {"high": 0, "medium": 1, "low": 2}
    subgroups.sort(key=lambda s: (order[s.severity], s.size, s.cluster))
    if k == 2 and len(subgroups) == 2:
        # with two clusters each is "the rest" of the other: the tests are mirror images, so
        # only one subgroup is reported (the more severe; then the smaller)
        subgroups = subgroups[:1]
    return ClassSubgroups(
        k=res.k,
        k_rule=res.k_rule,
        stability=dict(res.stability),
        eigengap=float(res.eigengap),
        labels=labels,
        cluster_sizes=tuple(c.size for c in res.clusters),
        cluster_exemplars=tuple(c.exemplars for c in res.clusters),
        cluster_background_focus=tuple(
            None
            if c.mean_background_focus is None or not np.isfinite(c.mean_background_focus)
            else float(c.mean_background_focus)
            for c in res.clusters
        ),
        cluster_tests=tuple(cluster_tests),
        subgroups=tuple(subgroups),
        confidence=confidence,
        n_clustered=res.n_clustered,
    )


def _verdict(
    cid: int,
    member: np.ndarray,
    tests: dict[str, StatTest],
    separating: tuple[str, ...],
    values: Mapping[str, np.ndarray],
    pooled: np.ndarray,
    *,
    n_classes: int,
    border_chance_share: float,
    confidence: float,
    n_exemplars: int,
) -> Subgroup:
    def up(name: str) -> bool:
        t = tests.get(name)
        return bool(t and t.separates and t.direction == "higher")

    elsewhere_stat: str | None = None
    if "background_focus" in tests:
        if up("background_focus"):
            elsewhere_stat = "background_focus"
    elif up("border_focus"):
        bt = tests["border_focus"]
        if bt.subgroup is not None and bt.subgroup > border_chance_share:
            elsewhere_stat = "border_focus"
    # sufficiency: the background alone is predicted as the class (above chance)
    ob = values.get("only_bg_hit")
    rate: tuple[float | None, float | None, float | None] = (None, None, None)
    needed_stat: str | None = None
    if ob is not None:
        v = ob[member]
        v = v[np.isfinite(v)]
        if v.size:
            w = wilson_interval(int(v.sum()), int(v.size), confidence=confidence)
            rate = (w.estimate, w.low, w.high)
            if up("only_bg_hit") and w.low > 1.0 / n_classes:
                needed_stat = "only_bg_hit"
    if needed_stat is None and up("only_fg_drop"):
        needed_stat = "only_fg_drop"
    interventions = "only_bg_hit" in tests or "only_fg_drop" in tests
    if elsewhere_stat and needed_stat:
        severity = "high"
    elif elsewhere_stat and not interventions:
        severity = "medium"
    else:
        severity = "low"
    idx = np.flatnonzero(member)
    rest = np.flatnonzero(~member)
    mean_map = pooled[idx].mean(0)
    where, (ci, cj), share, border = describe_location(mean_map)
    cell = _cells(*mean_map.shape)[ci, cj]
    per_sample = pooled[:, cell].sum(1)
    return Subgroup(
        cluster=int(cid),
        members=idx,
        class_size=int(member.size),
        tests=tests,
        separating=separating,
        elsewhere=elsewhere_stat is not None,
        elsewhere_statistic=elsewhere_stat,
        needed=needed_stat is not None,
        needed_statistic=needed_stat,
        interventions=interventions,
        severity=severity,
        where=where,
        region_share=float(per_sample[idx].mean()),
        rest_region_share=float(per_sample[rest].mean()) if rest.size else float("nan"),
        border_share=border,
        exemplars=_closest(pooled, idx, n_exemplars),
        rest_exemplars=_closest(pooled, rest, n_exemplars),
        only_bg_rate=rate,
    )


def class_to_json(res: ClassSubgroups, ids: Sequence[str]) -> dict[str, Any]:
    """The summary.json block of one class (``summary["clusters"][class]``); ids for indices."""

    def idl(a: np.ndarray) -> list[str]:
        return [str(ids[int(i)]) for i in a]

    reported = {s.cluster for s in res.subgroups}
    clusters = []
    for cid, (size, ex, bfm, tests) in enumerate(
        zip(
            res.cluster_sizes,
            res.cluster_exemplars,
            res.cluster_background_focus,
            res.cluster_tests,
        )
    ):
        clusters.append(
            {
                "id": cid,
                "size": int(size),
                "background_focus": bfm,
                "exemplars": idl(ex),
                "separates": [t.name for t in tests.values() if t.separates],
                "outlier": cid in reported,
                "gallery": [],
            }
        )
    subgroups = [
        SubgroupDetail(
            cluster=s.cluster,
            size=s.size,
            class_size=s.class_size,
            members=tuple(idl(s.members)),
            exemplars=tuple(idl(s.exemplars)),
            rest_exemplars=tuple(idl(s.rest_exemplars)),
            severity=s.severity,
            separating=tuple(s.separating),
            elsewhere=s.elsewhere,
            elsewhere_statistic=s.elsewhere_statistic,
            needed=s.needed,
            needed_statistic=s.needed_statistic,
            interventions=s.interventions,
            where=s.where,
            region_share=s.region_share,
            rest_region_share=s.rest_region_share,
            border_share=s.border_share,
            only_bg_rate=s.only_bg_rate,
        ).to_json()
        | {"tests": {k: t.to_dict() for k, t in s.tests.items()}, "gallery": []}
        | ({"split": dict(s.split)} if s.split else {})
        for s in res.subgroups
    ]
    out: dict[str, Any] = {
        "k": int(res.k),
        "k_rule": res.k_rule,
        "stability": {str(k): v for k, v in res.stability.items()},
        "eigengap": res.eigengap,
        "confidence": res.confidence,
    }
    n_all = int(res.labels.size)
    if res.n_clustered is not None and res.n_clustered < n_all:
        # additive (issue 14): only a sampled class carries it, so classes clustered whole
        # keep the block they had
        out["clusters_sample"] = {
            "n": int(res.n_clustered),
            "of": n_all,
            "rule": "spectral clustering of a seeded uniform sample of the class's maps; "
            "every other map assigned to the nearest cluster mean (pooled maps, Euclidean); "
            "cluster sizes, exemplars and the subgroup tests use all maps",
        }
    out["clusters"] = clusters
    out["subgroups"] = subgroups
    return out
