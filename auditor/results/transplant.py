"""The typed result of the transplant intervention (issue 22): one per class.

Written to summary.json under ``classes[<name>]["transplant"]`` (an additive key of the class
object, kept by :class:`~auditor.results.ClassResult` in its ``extra``) and read back with
:func:`class_transplant`. Computed by :mod:`auditor.analysis.transplant` (statistics and the
decision) and :mod:`auditor.audit.transplant` (the model's forwards).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["TRANSPLANT_SOURCES", "TRANSPLANT_STATUSES", "TransplantResult", "class_transplant"]

#: ``status`` values: the decision, or why no decision was made
TRANSPLANT_STATUSES = ("confirmed", "not_confirmed", "not_run")
#: where the pasted region comes from: a named subgroup's members, the class's hot region
#: outside the object masks, the class's top-attention patch (no masks), or the outer border
#: band of the class's images (a class with a ``border_focus`` finding; session 10)
TRANSPLANT_SOURCES = ("subgroup", "class_region", "top_patch", "border_band")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pair(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"a transplant interval must be [lo, hi], got {value!r}")
    return (_opt_float(value[0]), _opt_float(value[1]))


@dataclass(frozen=True)
class TransplantResult:
    """Causal confirmation by transplant for one class.

    Attributes:
        status: ``confirmed`` | ``not_confirmed`` | ``not_run``.
        reason: why it was not run (``None`` otherwise).
        source: ``subgroup`` | ``class_region`` | ``top_patch`` | ``border_band`` (``None``
            when not run before
            a candidate was chosen).
        region: ``(x0, y0, x1, y1)`` in input pixels, half-open (``x1``, ``y1`` excluded).
        n: recipients (images of other classes not predicted as this class).
        flips: recipients predicted as this class once the region is pasted.
        control_flips: recipients predicted as this class once the control patch is pasted.
        flip_rate, flip_ci: ``flips / n`` and its Wilson interval (Wilson 1927).
        control_rate, control_ci: the same for the control patch.
        difference, difference_ci: ``flip_rate - control_rate`` and its Newcombe (1998,
            method 10) interval.
        margin: the difference a confirmation needs (besides ``difference_ci[0] > 0``).
        n_sources: source images the region was taken from.
        figure: the drawn figure (relative path in the run directory), or ``None``.
        extra: unknown keys, kept.
    """

    status: str
    reason: str | None = None
    source: str | None = None
    region: tuple[int, int, int, int] | None = None
    n: int = 0
    flips: int = 0
    control_flips: int = 0
    flip_rate: float | None = None
    flip_ci: tuple[float | None, float | None] = (None, None)
    control_rate: float | None = None
    control_ci: tuple[float | None, float | None] = (None, None)
    difference: float | None = None
    difference_ci: tuple[float | None, float | None] = (None, None)
    margin: float | None = None
    n_sources: int = 0
    figure: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    _KEYS = (
        "status", "reason", "source", "region", "n", "flips", "control_flips", "flip_rate",
        "flip_ci", "control_rate", "control_ci", "difference", "difference_ci", "margin",
        "n_sources", "figure",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.status not in TRANSPLANT_STATUSES:
            raise ValueError(f"`status` must be one of {TRANSPLANT_STATUSES}, got {self.status!r}")
        if self.source is not None and self.source not in TRANSPLANT_SOURCES:
            raise ValueError(f"`source` must be one of {TRANSPLANT_SOURCES}, got {self.source!r}")
        if self.region is not None and len(self.region) != 4:
            raise ValueError(f"`region` must be (x0, y0, x1, y1), got {self.region!r}")

    @property
    def confirmed(self) -> bool:
        return self.status == "confirmed"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "source": self.source,
            "region": None if self.region is None else [int(v) for v in self.region],
            "n": self.n,
            "flips": self.flips,
            "control_flips": self.control_flips,
            "flip_rate": self.flip_rate,
            "flip_ci": list(self.flip_ci),
            "control_rate": self.control_rate,
            "control_ci": list(self.control_ci),
            "difference": self.difference,
            "difference_ci": list(self.difference_ci),
            "margin": self.margin,
            "n_sources": self.n_sources,
            "figure": self.figure,
        }
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_json(cls, value: Any) -> TransplantResult:
        if not isinstance(value, Mapping):
            raise ValueError(f"`transplant` must be an object, got {type(value).__name__}")
        region = value.get("region")
        if region is not None and (not isinstance(region, (list, tuple)) or len(region) != 4):
            raise ValueError(f"`transplant.region` must be [x0, y0, x1, y1], got {region!r}")
        return cls(
            status=str(value.get("status")),
            reason=None if value.get("reason") is None else str(value["reason"]),
            source=None if value.get("source") is None else str(value["source"]),
            region=None if region is None else tuple(int(v) for v in region),  # type: ignore[arg-type]
            n=int(value.get("n") or 0),
            flips=int(value.get("flips") or 0),
            control_flips=int(value.get("control_flips") or 0),
            flip_rate=_opt_float(value.get("flip_rate")),
            flip_ci=_pair(value.get("flip_ci")),
            control_rate=_opt_float(value.get("control_rate")),
            control_ci=_pair(value.get("control_ci")),
            difference=_opt_float(value.get("difference")),
            difference_ci=_pair(value.get("difference_ci")),
            margin=_opt_float(value.get("margin")),
            n_sources=int(value.get("n_sources") or 0),
            figure=None if value.get("figure") is None else str(value["figure"]),
            extra=MappingProxyType({k: v for k, v in value.items() if k not in cls._KEYS}),
        )


def class_transplant(cls_result: Any) -> TransplantResult | None:
    """The transplant result of a :class:`~auditor.results.ClassResult` (``None`` when the run
    has none: transplant off, or a summary written before issue 22)."""
    raw = getattr(cls_result, "extra", {}).get("transplant")
    return None if raw is None else TransplantResult.from_json(raw)
