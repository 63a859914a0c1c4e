"""The result's vocabularies, each defined ONCE (every other module imports them from here).

* :data:`SEVERITIES`: finding severities, most severe first: the order findings are sorted,
  numbered (``F1``, ``F2``, …) and listed in;
* :data:`BLOCKING_SEVERITIES`: severities that flag a class and can block a release (the
  report's verdict, the model card's risks);
* :data:`GATE_SEVERITIES`: severities a findings gate can count (``max_findings_high``, ...);
  ``info`` never counts;
* :data:`CATEGORIES`: metric categories, in methodology order.

There is no ``critical`` level: a finding is ``high`` at most.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "BLOCKING_SEVERITIES",
    "CATEGORIES",
    "GATE_SEVERITIES",
    "SEVERITIES",
    "SEVERITY_RANK",
    "severity_rank",
]

#: Finding severities, most severe first (the order findings are listed and sorted in).
SEVERITIES: tuple[str, ...] = ("high", "medium", "low", "info")
#: ``{severity: position in SEVERITIES}`` (0 = most severe).
SEVERITY_RANK: Mapping[str, int] = MappingProxyType({s: i for i, s in enumerate(SEVERITIES)})
#: Severities that flag their class and can block a release.
BLOCKING_SEVERITIES: tuple[str, ...] = ("high", "medium")
#: Severities a findings gate counts.
GATE_SEVERITIES: tuple[str, ...] = ("high", "medium", "low")
#: Metric categories, in methodology order.
CATEGORIES: tuple[str, ...] = ("localisation", "concentration", "faithfulness", "intervention")


def severity_rank(severity: object) -> int:
    """Position of ``severity`` in :data:`SEVERITIES` (case-insensitive); an unknown value
    sorts after every known one."""
    return SEVERITY_RANK.get(str(severity).lower(), len(SEVERITIES))
