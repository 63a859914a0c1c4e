"""The typed result of the transplant intervention (issue 22): one per class.

Written to summary.json under ``classes[<name>]["transplant"]`` (an additive key of the class
object, kept by :class:`~auditor.results.ClassResult` in its ``extra``) and read back with
:func:`class_transplant`. Computed by :mod:`auditor.analysis.transplant` (statistics and the
decision) and :mod:`auditor.audit.transplant` (the model's forwards).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from auditor.results.codec import decode, encode, extra_field, jfield

__all__ = ["TRANSPLANT_SOURCES", "TRANSPLANT_STATUSES", "TransplantResult", "class_transplant"]

#: ``status`` values: the decision, or why no decision was made
TRANSPLANT_STATUSES = ("confirmed", "not_confirmed", "not_run")
#: where the pasted region comes from: a named subgroup's members, the class's hot region
#: outside the object masks, the class's top-attention patch (no masks), or the outer border
#: band of the class's images (a class with a ``border_focus`` finding; session 10)
TRANSPLANT_SOURCES = ("subgroup", "class_region", "top_patch", "border_band")


def _read_status(value: Any, obj: Mapping[str, Any], name: str | None) -> str:
    return str(value)  # a missing status is refused by __post_init__


def _read_region(value: Any, obj: Mapping[str, Any], name: str | None) -> Any:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"`transplant.region` must be [x0, y0, x1, y1], got {value!r}")
    return tuple(int(v) for v in value)


def _write_region(value: Any) -> Any:
    return None if value is None else [int(v) for v in value]


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

    status: str = jfield(decode=_read_status)
    reason: str | None = None
    source: str | None = None
    region: tuple[int, int, int, int] | None = jfield(
        None, decode=_read_region, encode=_write_region
    )
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
    extra: Mapping[str, Any] = extra_field()

    _JSON_STRICT = True  # a value that is not a number is refused, never read as None

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
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> TransplantResult:
        if not isinstance(value, Mapping):
            raise ValueError(f"`transplant` must be an object, got {type(value).__name__}")
        return decode(cls, value, "transplant")


def class_transplant(cls_result: Any) -> TransplantResult | None:
    """The transplant result of a :class:`~auditor.results.ClassResult` (``None`` when the run
    has none: transplant off, or a summary written before issue 22)."""
    raw = getattr(cls_result, "extra", {}).get("transplant")
    return None if raw is None else TransplantResult.from_json(raw)
