"""Typed results of the group audit (``summary.json`` ``groups``; issue 24).

Frozen dataclasses with ``to_json``/``from_json`` like :mod:`auditor.results`; the audit
result carries them as JSON in ``AuditResult.extra["groups"]`` (an additive summary.json key)
and :func:`GroupsResult.of_summary` reads them back. Suppressed groups (fewer samples than
``[report] min_group_size``) hold no numbers at all: only ``suppressed = true``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AttributeResult", "ClassCell", "Est", "GroupStat", "GroupsResult", "Slice"]


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Est:
    """An estimate with its interval (``None`` where undefined, e.g. no mask in the group)."""

    value: float | None = None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, interval: Any) -> Est:
        """From an :class:`auditor.stats.Interval`."""
        return cls(_f(interval.estimate), _f(interval.low), _f(interval.high))

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}

    @classmethod
    def from_json(cls, d: Any) -> Est:
        d = d or {}
        return cls(_f(d.get("value")), _f(d.get("ci_low")), _f(d.get("ci_high")))


_STAT_FIELDS = (
    "accuracy",
    "background_focus",
    "energy_in_mask",
    "only_bg_accuracy",
    "only_fg_accuracy",
    "ece",
    "accuracy_vs_rest",
    "background_focus_vs_rest",
    "accuracy_vs_best",
)


@dataclass(frozen=True)
class GroupStat:
    """One level of one attribute. ``*_vs_rest``: this group minus the rest of the data, with
    an interval at the multiple-testing-adjusted level; ``accuracy_vs_best``: minus the best
    group (not adjusted). ``flagged``: a disparity finding names this group."""

    level: str
    n: int
    suppressed: bool = False
    accuracy: Est = field(default_factory=Est)
    background_focus: Est = field(default_factory=Est)
    energy_in_mask: Est = field(default_factory=Est)
    only_bg_accuracy: Est = field(default_factory=Est)
    only_fg_accuracy: Est = field(default_factory=Est)
    ece: Est = field(default_factory=Est)
    accuracy_vs_rest: Est = field(default_factory=Est)
    background_focus_vs_rest: Est = field(default_factory=Est)
    accuracy_vs_best: Est = field(default_factory=Est)
    flagged: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.suppressed:  # small cell: no number leaves the run (not even n)
            return {"level": self.level, "n": None, "suppressed": True}
        out: dict[str, Any] = {"level": self.level, "n": self.n, "suppressed": False}
        for name in _STAT_FIELDS:
            out[name] = getattr(self, name).to_json()
        out["flagged"] = self.flagged
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupStat:
        if d.get("suppressed"):
            return cls(level=str(d["level"]), n=0, suppressed=True)
        kw: dict[str, Any] = {name: Est.from_json(d.get(name)) for name in _STAT_FIELDS}
        return cls(
            level=str(d["level"]), n=int(d.get("n") or 0), flagged=bool(d.get("flagged")), **kw
        )


@dataclass(frozen=True)
class ClassCell:
    """Class × group: one-vs-rest sensitivity (recall of ``cls`` among its samples in the
    group), specificity (share of the group's other samples not predicted as ``cls``), AUROC
    of ``p_cls`` (DeLong interval) and the class-wise calibration error of ``p_cls`` (ECE with
    a bootstrap interval). ``auroc_note``: why the AUROC has no number ("not estimable: ...")
    or that it is a lower bound (top-k probabilities only); ``""`` otherwise."""

    cls: str
    level: str
    n: int
    suppressed: bool = False
    sensitivity: Est = field(default_factory=Est)
    specificity: Est = field(default_factory=Est)
    n_negative: int = 0
    auroc: Est = field(default_factory=Est)
    auroc_note: str = ""
    ece: Est = field(default_factory=Est)

    def to_json(self) -> dict[str, Any]:
        if self.suppressed:
            return {"class": self.cls, "level": self.level, "n": None, "suppressed": True}
        return {
            "class": self.cls,
            "level": self.level,
            "n": self.n,
            "suppressed": False,
            "sensitivity": self.sensitivity.to_json(),
            "specificity": self.specificity.to_json(),
            "n_negative": self.n_negative,
            "auroc": self.auroc.to_json(),
            "auroc_note": self.auroc_note,
            "ece": self.ece.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClassCell:
        return cls(
            cls=str(d["class"]),
            level=str(d["level"]),
            n=int(d.get("n") or 0),
            suppressed=bool(d.get("suppressed")),
            sensitivity=Est.from_json(d.get("sensitivity")),
            specificity=Est.from_json(d.get("specificity")),
            n_negative=int(d.get("n_negative") or 0),
            auroc=Est.from_json(d.get("auroc")),
            auroc_note=str(d.get("auroc_note") or ""),
            ece=Est.from_json(d.get("ece")),
        )


@dataclass(frozen=True)
class AttributeResult:
    """All levels of one attribute, its worst group and its largest accuracy gap."""

    name: str
    levels: tuple[GroupStat, ...]
    worst: str | None = None
    worst_accuracy: float | None = None
    largest_gap: Est = field(default_factory=Est)
    classes: tuple[ClassCell, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "levels": [g.to_json() for g in self.levels],
            "worst": self.worst,
            "worst_accuracy": self.worst_accuracy,
            "largest_gap": self.largest_gap.to_json(),
            "classes": [c.to_json() for c in self.classes],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttributeResult:
        return cls(
            name=str(d["name"]),
            levels=tuple(GroupStat.from_json(g) for g in d.get("levels") or ()),
            worst=d.get("worst"),
            worst_accuracy=_f(d.get("worst_accuracy")),
            largest_gap=Est.from_json(d.get("largest_gap")),
            classes=tuple(ClassCell.from_json(c) for c in d.get("classes") or ()),
        )

    def level(self, name: str) -> GroupStat | None:
        return next((g for g in self.levels if g.level == name), None)


@dataclass(frozen=True)
class Slice:
    """A discovered cell (``attribute = level`` and ``other = level`` or ``class = name``)
    whose accuracy is lower than the rest's (``accuracy_gap``) or whose background focus is
    higher (``attention_gap``) by more than the margin (intervals adjusted)."""

    where: tuple[tuple[str, str], ...]
    n: int
    accuracy: Est
    accuracy_vs_rest: Est
    background_focus: Est = field(default_factory=Est)
    background_focus_vs_rest: Est = field(default_factory=Est)
    accuracy_gap: bool = True
    attention_gap: bool = False

    def label(self) -> str:
        return " × ".join(f"{a} = {v}" for a, v in self.where)

    def to_json(self) -> dict[str, Any]:
        return {
            "where": [list(p) for p in self.where],
            "n": self.n,
            "accuracy": self.accuracy.to_json(),
            "accuracy_vs_rest": self.accuracy_vs_rest.to_json(),
            "background_focus": self.background_focus.to_json(),
            "background_focus_vs_rest": self.background_focus_vs_rest.to_json(),
            "accuracy_gap": self.accuracy_gap,
            "attention_gap": self.attention_gap,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Slice:
        return cls(
            where=tuple((str(a), str(v)) for a, v in d.get("where") or ()),
            n=int(d.get("n") or 0),
            accuracy=Est.from_json(d.get("accuracy")),
            accuracy_vs_rest=Est.from_json(d.get("accuracy_vs_rest")),
            background_focus=Est.from_json(d.get("background_focus")),
            background_focus_vs_rest=Est.from_json(d.get("background_focus_vs_rest")),
            accuracy_gap=bool(d.get("accuracy_gap", True)),
            attention_gap=bool(d.get("attention_gap", False)),
        )


@dataclass(frozen=True)
class GroupsResult:
    """summary.json ``groups``: the settings the tests were fixed with, then per attribute."""

    attributes: tuple[AttributeResult, ...]
    overall_accuracy: float | None = None
    overall_background_focus: float | None = None
    min_group_size: int = 10
    confidence: float = 0.95
    adjustment: str = "bonferroni"
    n_tests: int = 0
    accuracy_margin: float = 0.05
    background_focus_margin: float = 0.10
    slices: tuple[Slice, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "overall_accuracy": self.overall_accuracy,
            "overall_background_focus": self.overall_background_focus,
            "min_group_size": self.min_group_size,
            "confidence": self.confidence,
            "adjustment": self.adjustment,
            "n_tests": self.n_tests,
            "accuracy_margin": self.accuracy_margin,
            "background_focus_margin": self.background_focus_margin,
            "attributes": [a.to_json() for a in self.attributes],
            "slices": [s.to_json() for s in self.slices],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupsResult:
        return cls(
            attributes=tuple(AttributeResult.from_json(a) for a in d.get("attributes") or ()),
            overall_accuracy=_f(d.get("overall_accuracy")),
            overall_background_focus=_f(d.get("overall_background_focus")),
            min_group_size=int(d.get("min_group_size", 10)),
            confidence=float(d.get("confidence", 0.95)),
            adjustment=str(d.get("adjustment", "bonferroni")),
            n_tests=int(d.get("n_tests", 0)),
            accuracy_margin=float(d.get("accuracy_margin", 0.05)),
            background_focus_margin=float(d.get("background_focus_margin", 0.10)),
            slices=tuple(Slice.from_json(s) for s in d.get("slices") or ()),
        )

    @classmethod
    def of_summary(cls, result: Any) -> GroupsResult | None:
        """The groups of an :class:`~auditor.results.AuditResult` (or summary mapping)."""
        extra = getattr(result, "extra", None)
        raw = (extra if extra is not None else result or {}).get("groups")
        return None if not raw else cls.from_json(raw)

    def attribute(self, name: str) -> AttributeResult | None:
        return next((a for a in self.attributes if a.name == name), None)
