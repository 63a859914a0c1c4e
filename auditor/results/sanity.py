"""The typed model-randomisation check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"): one :class:`SanityResult` per method and ONE :class:`SanityStatus` saying whether the
check ran, why not, and what was randomised.

In ``summary.json`` they are ``sanity`` (``{method: result}``) and ``sanity_status``
(``{"run", "reason", "randomised"}``). The run directory's ``sanity.json`` (and the shard
manifests) store both in one object, the status under the reserved key ``"_status"``;
:class:`SanityCheck` is the only code that reads or writes that key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from auditor.results.codec import decode, encode, extra_field, jfield, require_object

__all__ = ["SANITY_STATES", "SanityCheck", "SanityResult", "SanityState", "SanityStatus"]

#: whether the check ran: ``"run"``, or ``"not_run"`` (``SanityStatus.reason`` says why)
SanityState = Literal["run", "not_run"]
SANITY_STATES: tuple[str, ...] = ("run", "not_run")

#: the key of the status in ``sanity.json`` (never a method name: methods do not start with _)
_STATUS_KEY = "_status"


@dataclass(frozen=True)
class SanityResult:
    """Model-randomisation check of one method (Adebayo et al. 2018): Spearman rank
    correlation ``ρ(M, M_rand)`` of the maps before/after the layers in ``randomised`` were
    re-initialised; ``trustworthy`` is ``ρ < threshold`` (the map depends on the weights)."""

    similarity: float | None = None
    threshold: float | None = None
    trustworthy: bool = True
    n: int = 0
    randomised: tuple[str, ...] = ()
    extra: Mapping[str, Any] = extra_field()

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> SanityResult:
        return decode(cls, value, "sanity")


def _state_of_run(raw: Any, obj: Mapping[str, Any], name: str | None) -> str:
    return "run" if raw else "not_run"


@dataclass(frozen=True)
class SanityStatus:
    """Whether the sanity check ran (``state``), why not (``reason``) and which modules it
    randomised. JSON: ``{"run": true|false, "reason": ..., "randomised": [...]}``."""

    state: SanityState = jfield(
        key="run", encode=lambda state: state == "run", decode=_state_of_run
    )
    reason: str | None = None
    randomised: tuple[str, ...] = ()
    extra: Mapping[str, Any] = extra_field()

    def __post_init__(self) -> None:
        if self.state not in SANITY_STATES:
            raise ValueError(f"`state` must be one of {SANITY_STATES}, got {self.state!r}")
        object.__setattr__(self, "randomised", tuple(str(m) for m in self.randomised))

    @classmethod
    def ran(cls, reason: str, randomised: tuple[str, ...] | list[str]) -> SanityStatus:
        """The check ran with the modules ``randomised`` re-initialised."""
        return cls("run", reason, tuple(randomised))

    @classmethod
    def not_run(cls, reason: str) -> SanityStatus:
        """The check did not run, because ``reason``."""
        return cls("not_run", reason, ())

    @property
    def run(self) -> bool:
        """``True`` when the check ran (the JSON's ``run``)."""
        return self.state == "run"

    def get(self, key: str, default: Any = None) -> Any:
        """The JSON value of ``key`` (``"run"``, ``"reason"``, ``"randomised"``, an extra):
        code written for the plain mapping this class replaced keeps working."""
        return self.to_json().get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, value: Any) -> SanityStatus:
        return decode(cls, value, "sanity_status")


@dataclass(frozen=True)
class SanityCheck:
    """What the check produced for a run: the status and each checked method's result (the
    content of ``sanity.json``)."""

    status: SanityStatus
    results: Mapping[str, SanityResult] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", MappingProxyType(dict(self.results)))

    @classmethod
    def not_run(cls, reason: str) -> SanityCheck:
        return cls(SanityStatus.not_run(reason))

    def to_json(self) -> dict[str, Any]:
        """``{method: result, ..., "_status": status}`` (``sanity.json``)."""
        out: dict[str, Any] = {m: r.to_json() for m, r in self.results.items()}
        out[_STATUS_KEY] = self.status.to_json()
        return out

    @classmethod
    def from_json(cls, value: Any) -> SanityCheck:
        """Read ``sanity.json`` (or a shard manifest's ``sanity``); a record written before
        the status existed (``{"_skipped": reason}``) reads as not run with that reason, a
        record without any status as not run ("not run")."""
        d = require_object(value, "sanity.json")
        raw = d.get(_STATUS_KEY)
        if raw is not None:
            status = SanityStatus.from_json(raw)
        elif "_skipped" in d:
            status = SanityStatus.not_run(str(d["_skipped"]))
        else:
            status = SanityStatus.not_run("not run")
        results = {
            str(m): SanityResult.from_json(r) for m, r in d.items() if not str(m).startswith("_")
        }
        return cls(status, results)
