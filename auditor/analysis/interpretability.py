"""Preconditions of an audit, said loudly: is this run interpretable at all? (issue 22)

A report about where a model looks is only evidence when three preconditions hold. When one
fails, the run's verdict is **not interpretable**, with the reason, first on the report's cover,
and the gate ``require_interpretable`` (on by default) fails, so ``auditor run`` exits 1.

1. **The model does better than chance.** With :math:`k` of :math:`n` evaluated images
   correct, the Wilson 95 % interval :math:`[L, U]` of the accuracy (Wilson 1927) must lie
   above chance, :math:`b = 1/C` with :math:`C` the number of classes: :math:`L \\le b` means
   the data cannot tell this model from a uniform guess, and its maps explain a guess. (On a
   strongly unbalanced set a constant answer beats :math:`1/C`; the randomisation check, not
   this one, is what catches a model whose maps ignore what it learned.)
2. **The map has room to show a place.** A CAM is the target layer's grid upsampled: with a
   grid of :math:`h \\times w \\le 3 \\times 3` cells every "object" and "background" region
   shares cells, so energy-in-mask and every statistic built on it measure the upsampling
   kernel, not the model (a 2 x 2 grid has four possible peaks). Judged on the finest target
   layer; unknown (an old run) is "not measured", not a failure.
3. **The primary method passes the model-randomisation sanity check** (Adebayo et al. 2018,
   "Sanity Checks for Saliency Maps", NeurIPS): if its maps barely change when the head is
   re-initialised, they do not depend on what the model learned. Not run, or a similarity
   undefined on every image (constant maps, NaN), is "not measured".

The thresholds are the issue's (chance, 3 x 3, the sanity check's own threshold), fixed before
any benchmark number was read. A precondition that could not be measured is listed as such and
never makes the run "not interpretable" by itself.

**What no map can test** is said too, in ``not_testable`` (and the report's limitations): a
global cue (a colour cast, blur, contrast, noise level or compression spread over the whole
image) has no place, so a map cannot point at it and the mask interventions cannot remove it;
a silent report says nothing about such cues. Without masks or boxes, where the model looks
cannot be compared with the object and no intervention runs.

``summary.json`` gains the additive key ``interpretability``::

    {"interpretable": bool, "reasons": [str, ...],
     "checks": {"accuracy_vs_chance": {...}, "map_grid": {...}, "sanity": {...}},
     "not_testable": [{"kind": "global_cue", "text": str}, ...]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auditor.format import fmt_interval
from auditor.results import AuditResult, freeze

__all__ = [
    "GATE_KEY",
    "GLOBAL_CUE_TEXT",
    "MAX_UNINTERPRETABLE_GRID",
    "Interpretability",
    "assess",
    "attach",
    "from_result",
]

#: the gate that turns "not interpretable" into exit 1 (on unless set to false)
GATE_KEY = "require_interpretable"
#: a target-layer grid of at most this many cells per side cannot localise anything
MAX_UNINTERPRETABLE_GRID = 3


@dataclass(frozen=True)
class Interpretability:
    """The verdict on the preconditions: ``interpretable`` and the reasons it is not."""

    interpretable: bool
    reasons: tuple[str, ...] = ()
    checks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: what this audit cannot test, each ``{"kind", "text"}`` (module docstring)
    not_testable: tuple[Mapping[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "interpretable": self.interpretable,
            "reasons": list(self.reasons),
            "checks": {k: dict(v) for k, v in self.checks.items()},
            "not_testable": [dict(x) for x in self.not_testable],
        }


#: the sentence every report carries: global cues have no place a map could show
GLOBAL_CUE_TEXT = (
    "Global cues could not be tested: a colour cast, blur, contrast, noise level or "
    "compression spread over the whole image has no place a map can point at, and the mask "
    "interventions cannot remove it; this report says nothing about whether the model uses one."
)


def _not_testable(result: AuditResult) -> tuple[Mapping[str, str], ...]:
    out = [{"kind": "global_cue", "text": GLOBAL_CUE_TEXT}]
    if result.dataset.annotated is False:
        out.append({
            "kind": "no_masks",
            "text": "Without object masks or boxes, where the model looks was not compared "
            "with the object, and no intervention tested whether it depends on the background. "
            "A cue that every image of a class carries beside the object (a second object, a "
            "class-wide background) cannot be told from the object itself; only cues in the "
            "border band, or on part of a class whose maps lie apart, were tested (by the "
            "transplant).",
        })  # fmt: skip
    return tuple(out)


def _chance_check(result: AuditResult) -> tuple[dict[str, Any], str | None]:
    """Precondition 1: the accuracy interval's lower end above the chance baseline."""
    ov = result.overall
    lo, hi = ov.accuracy_ci
    n_classes = len(result.classes) or (result.model.num_classes or 0)
    if ov.accuracy is None or lo is None or not ov.n or n_classes < 2:
        return {"measured": False, "reason": "accuracy or its interval not available"}, None
    chance = 1.0 / n_classes
    check = {
        "measured": True,
        "accuracy": ov.accuracy,
        "ci": [lo, hi],
        "n": ov.n,
        "chance": chance,
        "passed": bool(lo > chance),
    }
    if lo > chance:
        return check, None
    return check, (
        f"the accuracy {ov.accuracy:.0%} (95% interval {fmt_interval(lo, hi or 0, sep=' to ')}, "
        f"{ov.n} images) does not lie above chance ({chance:.0%}): the maps may explain a guess"
    )


def _grid_check(result: AuditResult) -> tuple[dict[str, Any], str | None]:
    """Precondition 2: the finest target-layer grid larger than 3 x 3."""
    raw = result.model.extra.get("cam_grid")
    grids = [
        (int(g[0]), int(g[1]))
        for g in (raw or ())
        if isinstance(g, (list, tuple)) and len(g) == 2
    ]
    if not grids:
        return {"measured": False, "reason": "the target layer's grid was not recorded"}, None
    h, w = max(grids, key=lambda g: g[0] * g[1])
    small = h <= MAX_UNINTERPRETABLE_GRID and w <= MAX_UNINTERPRETABLE_GRID
    check = {"measured": True, "grid": [h, w], "max_uninterpretable": MAX_UNINTERPRETABLE_GRID,
             "passed": not small}  # fmt: skip
    if not small:
        return check, None
    return check, (
        f"the map grid is {h}x{w} (at most {MAX_UNINTERPRETABLE_GRID}x"
        f"{MAX_UNINTERPRETABLE_GRID}): object and background share cells, so the map cannot "
        "show where the model looks"
    )


def _sanity_check(result: AuditResult) -> tuple[dict[str, Any], str | None]:
    """Precondition 3: the primary method passes the randomisation sanity check."""
    prim = result.primary_method
    s = (result.sanity or {}).get(prim)
    if s is None:
        why = (result.sanity_status.reason if result.sanity_status else None) or "not run"
        return {"measured": False, "method": prim, "reason": str(why)}, None
    if s.similarity is None or s.similarity != s.similarity:  # NaN: no image where defined
        return {"measured": False, "method": prim,
                "reason": "the similarity is undefined on every image (constant maps)"}, None
    check = {"measured": True, "method": prim, "similarity": s.similarity,
             "threshold": s.threshold, "passed": bool(s.trustworthy)}  # fmt: skip
    if s.trustworthy:
        return check, None
    sim = "n/a" if s.similarity is None else f"{s.similarity:.2f}"
    return check, (
        f"the primary method {prim} fails the model-randomisation sanity check (similarity "
        f"{sim} to a randomised model): its maps do not depend on what the model learned"
    )


def assess(result: AuditResult) -> Interpretability:
    """The three preconditions of the module docstring on a finished result."""
    checks: dict[str, Mapping[str, Any]] = {}
    reasons: list[str] = []
    for name, fn in (
        ("accuracy_vs_chance", _chance_check),
        ("map_grid", _grid_check),
        ("sanity", _sanity_check),
    ):
        check, reason = fn(result)
        checks[name] = check
        if reason is not None:
            reasons.append(reason)
    return Interpretability(not reasons, tuple(reasons), checks, _not_testable(result))


def attach(result: AuditResult) -> AuditResult:
    """``result`` with ``summary.json`` key ``interpretability`` (additive, in ``extra``)."""
    verdict = assess(result)
    return result.replace(
        extra=freeze({**dict(result.extra), "interpretability": verdict.to_json()})
    )


def from_result(result: AuditResult) -> Interpretability | None:
    """The stored verdict of a run (``None`` for runs written before it existed)."""
    raw = result.extra.get("interpretability")
    if not isinstance(raw, Mapping) or "interpretable" not in raw:
        return None
    return Interpretability(
        bool(raw["interpretable"]),
        tuple(str(r) for r in raw.get("reasons") or ()),
        {str(k): dict(v) for k, v in (raw.get("checks") or {}).items() if isinstance(v, Mapping)},
        tuple(
            {"kind": str(x.get("kind")), "text": str(x.get("text"))}
            for x in raw.get("not_testable") or ()
            if isinstance(x, Mapping)
        ),
    )
