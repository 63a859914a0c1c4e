"""Typed results of the group audit (``summary.json`` ``groups``; issue 24).

Frozen dataclasses whose JSON form is derived from their fields by the one result codec
(:func:`auditor.results.codec.encode`/:func:`~auditor.results.codec.decode`, issue 21); the
audit result carries them as JSON in ``AuditResult.extra["groups"]`` (an additive summary.json
key) and :func:`GroupsResult.of_summary` reads them back. Suppressed groups (fewer samples
than ``[report] min_group_size``) hold no numbers at all: their JSON object is written by a
small custom encode (``level``/``class``, ``n = null``, ``suppressed = true``).

Reading keeps the rules of the hand-written pairs it replaced: a number that is not finite
reads as ``None`` (:func:`_finite`), a missing ``level``/``class``/``name`` is an error
(``KeyError``), a missing count reads as ``0``, a missing setting as its default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from auditor.results.codec import decode, encode, jfield

__all__ = ["AttributeResult", "ClassCell", "Est", "GroupStat", "GroupsResult", "Slice"]


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# ``decode`` hooks: (raw JSON value, the whole object, the enclosing key) -> value
# --------------------------------------------------------------------------------------------
def _finite(raw: Any, obj: Mapping[str, Any], name: str | None) -> float | None:
    """A finite float, ``None`` for null/NaN/inf (a non-number raises ``ValueError``)."""
    return _f(raw)


def _count(raw: Any, obj: Mapping[str, Any], name: str | None) -> int:
    """A count: missing/``null`` reads as 0."""
    return int(raw or 0)


def _required(key: str) -> Callable[[Any, Mapping[str, Any], str | None], str]:
    """A key that must be there (``KeyError`` naming it), read as a string."""

    def read(raw: Any, obj: Mapping[str, Any], name: str | None) -> str:
        return str(obj[key])

    return read


def _setting(conv: Callable[[Any], Any], default: Any) -> Any:
    """A setting: missing/``null`` reads as ``default``, else ``conv(raw)`` (which raises on
    a value it cannot read: no silent wrong number)."""

    def read(raw: Any, obj: Mapping[str, Any], name: str | None) -> Any:
        return conv(default if raw is None else raw)

    return read


def _read_where(raw: Any, obj: Mapping[str, Any], name: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(a), str(v)) for a, v in raw or ())


def _read_levels(raw: Any, obj: Mapping[str, Any], name: str | None) -> tuple[GroupStat, ...]:
    return tuple(GroupStat.from_json(g) for g in raw or ())


def _est() -> Any:
    """An :class:`Est` field (missing/``null`` reads as an empty estimate)."""
    return jfield(default_factory=Est)


@dataclass(frozen=True)
class Est:
    """An estimate with its interval (``None`` where undefined, e.g. no mask in the group)."""

    value: float | None = jfield(None, decode=_finite)
    low: float | None = jfield(None, key="ci_low", decode=_finite)
    high: float | None = jfield(None, key="ci_high", decode=_finite)

    @classmethod
    def of(cls, interval: Any) -> Est:
        """From an :class:`auditor.stats.Interval`."""
        return cls(_f(interval.estimate), _f(interval.low), _f(interval.high))

    def to_json(self) -> dict[str, float | None]:
        return encode(self)

    @classmethod
    def from_json(cls, d: Any) -> Est:
        return decode(cls, d or None, "estimate")


_NO_EST = Est()


@dataclass(frozen=True)
class GroupStat:
    """One level of one attribute. ``*_vs_rest``: this group minus the rest of the data, with
    an interval at the multiple-testing-adjusted level; ``accuracy_vs_best``: minus the best
    group (not adjusted). ``flagged``: a disparity finding names this group."""

    level: str = jfield(decode=_required("level"))
    n: int = jfield(decode=_count)
    suppressed: bool = False
    accuracy: Est = _est()
    background_focus: Est = _est()
    energy_in_mask: Est = _est()
    only_bg_accuracy: Est = _est()
    only_fg_accuracy: Est = _est()
    ece: Est = _est()
    accuracy_vs_rest: Est = _est()
    background_focus_vs_rest: Est = _est()
    accuracy_vs_best: Est = _est()
    flagged: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.suppressed:  # small cell: no number leaves the run (not even n)
            return {"level": self.level, "n": None, "suppressed": True}
        return encode(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupStat:
        if d.get("suppressed"):  # numbers in a suppressed object are not read
            return cls(level=str(d["level"]), n=0, suppressed=True)
        return decode(cls, d, "groups.level")


@dataclass(frozen=True)
class ClassCell:
    """Class × group: one-vs-rest sensitivity (recall of ``cls`` among its samples in the
    group), specificity (share of the group's other samples not predicted as ``cls``), AUROC
    of ``p_cls`` (DeLong interval) and the class-wise calibration error of ``p_cls`` (ECE with
    a bootstrap interval). ``auroc_note``: why the AUROC has no number ("not estimable: ...")
    or that it is a lower bound (top-k probabilities only); ``""`` otherwise."""

    cls: str = jfield(key="class", decode=_required("class"))
    level: str = jfield(decode=_required("level"))
    n: int = jfield(decode=_count)
    suppressed: bool = False
    sensitivity: Est = _est()
    specificity: Est = _est()
    n_negative: int = jfield(0, decode=_count)
    auroc: Est = _est()
    auroc_note: str = ""
    ece: Est = _est()

    def to_json(self) -> dict[str, Any]:
        if self.suppressed:
            return {"class": self.cls, "level": self.level, "n": None, "suppressed": True}
        return encode(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClassCell:
        return decode(cls, d, "groups.class")


@dataclass(frozen=True)
class AttributeResult:
    """All levels of one attribute, its worst group and its largest accuracy gap."""

    name: str = jfield(decode=_required("name"))
    levels: tuple[GroupStat, ...] = jfield(decode=_read_levels)
    worst: str | None = None
    worst_accuracy: float | None = jfield(None, decode=_finite)
    largest_gap: Est = _est()
    classes: tuple[ClassCell, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttributeResult:
        return decode(cls, d, "groups.attribute")

    def level(self, name: str) -> GroupStat | None:
        return next((g for g in self.levels if g.level == name), None)


@dataclass(frozen=True)
class Slice:
    """A discovered cell (``attribute = level`` and ``other = level`` or ``class = name``)
    whose accuracy is lower than the rest's (``accuracy_gap``) or whose background focus is
    higher (``attention_gap``) by more than the margin (intervals adjusted)."""

    where: tuple[tuple[str, str], ...] = jfield(decode=_read_where)
    n: int = jfield(decode=_count)
    accuracy: Est = jfield(missing=_NO_EST)
    accuracy_vs_rest: Est = jfield(missing=_NO_EST)
    background_focus: Est = _est()
    background_focus_vs_rest: Est = _est()
    accuracy_gap: bool = True
    attention_gap: bool = False

    def label(self) -> str:
        return " × ".join(f"{a} = {v}" for a, v in self.where)

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Slice:
        return decode(cls, d, "groups.slice")


@dataclass(frozen=True)
class GroupsResult:
    """summary.json ``groups``: the settings the tests were fixed with, then per attribute."""

    _JSON_ORDER = (
        "overall_accuracy",
        "overall_background_focus",
        "min_group_size",
        "confidence",
        "adjustment",
        "n_tests",
        "accuracy_margin",
        "background_focus_margin",
        "attributes",
        "slices",
    )

    attributes: tuple[AttributeResult, ...]
    overall_accuracy: float | None = jfield(None, decode=_finite)
    overall_background_focus: float | None = jfield(None, decode=_finite)
    min_group_size: int = jfield(10, decode=_setting(int, 10))
    confidence: float = jfield(0.95, decode=_setting(float, 0.95))
    adjustment: str = jfield("bonferroni", decode=_setting(str, "bonferroni"))
    n_tests: int = jfield(0, decode=_setting(int, 0))
    accuracy_margin: float = jfield(0.05, decode=_setting(float, 0.05))
    background_focus_margin: float = jfield(0.10, decode=_setting(float, 0.10))
    slices: tuple[Slice, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupsResult:
        return decode(cls, d, "groups")

    @classmethod
    def of_summary(cls, result: Any) -> GroupsResult | None:
        """The groups of an :class:`~auditor.results.AuditResult` (or summary mapping)."""
        extra = getattr(result, "extra", None)
        raw = (extra if extra is not None else result or {}).get("groups")
        return None if not raw else cls.from_json(raw)

    def attribute(self, name: str) -> AttributeResult | None:
        return next((a for a in self.attributes if a.name == name), None)
