"""The gate registry: every ``[gates]`` key, where it applies and what it needs (issue 23).

ONE place declares each gate; config validation (run config, ``compare --config``, the
shard/finalize config), typo suggestions, ``auditor gates`` and the evaluation read it. A
gate is a :class:`GateSpec`:

* ``key``: the shorthand in ``[gates]`` (``max_background_focus = 0.6``);
* ``quantity`` and ``bound`` (``max``: value <= threshold; ``min``: value >= threshold);
* ``applies``: the commands whose gates it is: ``"run"`` (a single audit), ``"compare"``
  (``auditor compare --config`` and ``auditor run --baseline RUN``), ``"groups"``;
* ``level``: what one check looks at: ``"class"``, ``"overall"``, ``"method"``, ``"group"``,
  ``"findings"`` (a count over the run's findings);
* ``needs``: inputs the run must produce: ``"masks"``, ``"interventions"``,
  ``"faithfulness"``, ``"baseline"``.

Registering a new gate (issue 24's ``min_group_accuracy``, issue 22's
``require_interpretable``) is ONE call to :func:`register_gate` here, plus its evaluation.
A gate whose inputs the run does not produce, or that is configured where it does not apply,
is a :class:`~auditor.errors.ConfigError` (exit 2) naming the key, the file and why, raised
while the config is read: before any model is loaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# the intervention and faithfulness quantities have one definition, in auditor.config
from auditor.config import FAITHFULNESS_QUANTITIES, INTERVENTION_QUANTITIES
from auditor.errors import ConfigError
from auditor.results.vocab import GATE_SEVERITIES

__all__ = [
    "GATES",
    "GateSpec",
    "check_rule_context",
    "gate_spec",
    "gate_table",
    "group_gate_keys",
    "register_gate",
    "suggest_gates",
]

APPLIES = ("run", "compare", "groups")
LEVELS = ("class", "overall", "method", "group", "findings")
NEEDS = ("masks", "interventions", "faithfulness", "baseline")
SEVERITIES = GATE_SEVERITIES

@dataclass(frozen=True)
class GateSpec:
    """One registered gate key (see the module docstring for the fields)."""

    key: str
    quantity: str
    bound: str
    applies: tuple[str, ...]
    level: str
    needs: tuple[str, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        if self.bound not in ("min", "max"):
            raise ValueError(f"GateSpec {self.key!r}: `bound` must be min/max, got {self.bound!r}")
        for name, values, allowed in (
            ("applies", self.applies, APPLIES),
            ("needs", self.needs, NEEDS),
        ):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"GateSpec {self.key!r}: unknown `{name}` {bad!r}")
        if self.level not in LEVELS:
            raise ValueError(f"GateSpec {self.key!r}: unknown `level` {self.level!r}")


_REGISTRY: dict[str, GateSpec] = {}
#: every registered gate, by key (read-only view; filled on first use)
GATES: Mapping[str, GateSpec] = MappingProxyType(_REGISTRY)


def register_gate(spec: GateSpec) -> GateSpec:
    """Add ``spec`` to the registry (the ONE place a new gate is declared)."""
    if spec.key in _REGISTRY and _REGISTRY[spec.key] != spec:
        raise ValueError(f"gate {spec.key!r} is already registered differently")
    _REGISTRY[spec.key] = spec
    return spec


def _quantity_needs(q: str, mask_metrics: Iterable[str]) -> tuple[str, ...]:
    if q in INTERVENTION_QUANTITIES:
        return ("interventions",)
    if q in FAITHFULNESS_QUANTITIES:
        return ("faithfulness",)
    return ("masks",) if q in set(mask_metrics) else ()


def _register_builtin() -> None:
    from auditor.metrics.names import MASK_METRICS
    from auditor.metrics.registry import METRICS

    metrics = tuple(METRICS)
    quantities = tuple(dict.fromkeys(metrics + ("accuracy",) + INTERVENTION_QUANTITIES))
    for q in quantities:
        needs = _quantity_needs(q, MASK_METRICS)
        for bound in ("max", "min"):
            word = "at most" if bound == "max" else "at least"
            if q not in FAITHFULNESS_QUANTITIES:  # faithfulness has no per-class subset
                register_gate(
                    GateSpec(f"{bound}_{q}", q, bound, ("run",), "class", needs,
                             f"every class's mean {q} {word} the threshold")
                )  # fmt: skip
            register_gate(
                GateSpec(f"{bound}_overall_{q}", q, bound, ("run",), "overall", needs,
                         f"the whole set's {q} {word} the threshold")
            )  # fmt: skip
        for change in ("increase", "decrease"):
            register_gate(
                GateSpec(f"max_{q}_{change}", f"{q}_{change}", "max", ("compare",), "class",
                         needs + ("baseline",),
                         f"per class, the {change} of {q} from the baseline run at most the "
                         f"threshold")
            )  # fmt: skip
    _register_group_gates()
    register_gate(
        GateSpec("require_interpretable", "interpretable", "min", ("run",), "overall", (),
                 "the run is interpretable: accuracy above chance, map grid larger than 3x3, "
                 "primary method passes the randomisation check (on unless set to false)")
    )  # fmt: skip
    from auditor.config_detection import (
        DETECTION_COMPARE_QUANTITIES,
        DETECTION_GATES,
        DETECTION_GROUP_GATES,
    )

    for key, (q, bound) in DETECTION_GROUP_GATES.items():  # issue 26: detection + [data] groups
        word = "at least" if bound == "min" else "at most"
        what = {
            "group_detection_recall": "the worst shown group's detection recall",
            "group_detection_recall_gap": "the best minus the worst shown group's recall",
            "group_detection_precision": "the worst shown group's detection precision",
        }[q]
        register_gate(
            GateSpec(key, q, bound, ("run",), "group", (),
                     f"detection audits, per attribute: {what} (or one group's) {word} the "
                     f"threshold")
        )  # fmt: skip

    for key, (q, bound) in DETECTION_GATES.items():  # issue 26: [model] task = "detection"
        word = "at most" if bound == "max" else "at least"
        register_gate(
            GateSpec(key, q, bound, ("run",), "class", ("masks",),
                     f"detection audits: every class's {q} {word} the threshold")
        )  # fmt: skip
    for q in DETECTION_COMPARE_QUANTITIES:  # issue 26: two detection runs compared
        for change in ("increase", "decrease"):
            register_gate(
                GateSpec(f"max_{q}_{change}", f"{q}_{change}", "max", ("compare",), "class",
                         ("masks", "baseline"),
                         f"detection audits: per class, the {change} of {q} from the baseline "
                         f"run at most the threshold")
            )  # fmt: skip
    from auditor.config_multilabel import LABEL_GATES

    for key, q in LABEL_GATES.items():  # issue 26: [model] output = "sigmoid"
        register_gate(
            GateSpec(key, q, "min", ("run",), "class", (),
                     f"multi-label runs: every label's {q.removeprefix('label_')} at least the "
                     f"threshold (not estimable: fails)")
        )  # fmt: skip
    for sev in SEVERITIES:
        register_gate(
            GateSpec(f"max_findings_{sev}", f"findings_{sev}", "max", ("run",), "findings", (),
                     f"the number of {sev}-severity findings at most the threshold")
        )  # fmt: skip


def _register_group_gates() -> None:
    """Issue 24's gates on ``[data] groups``: the run gates (parsed in ``auditor.config``,
    number or ``{attribute = t, "attribute=level" = t}``; evaluated by
    :mod:`auditor.analysis.groups.gates`) and the comparison gates on the paired per-group
    changes (comparison.json ``groups``; :mod:`auditor.analysis.groups.compare`)."""
    for key, q, bound, doc in (
        ("min_group_accuracy", "group_accuracy", "min",
         "per attribute, the worst shown group's accuracy (or one group's) at least the threshold"),
        ("max_group_accuracy_gap", "group_accuracy_gap", "max",
         "per attribute, the best minus the worst shown group's accuracy at most the threshold"),
        ("max_group_background_focus_gap", "group_background_focus_gap", "max",
         "per attribute, the highest minus the lowest group background focus at most the "
         "threshold"),
    ):  # fmt: skip
        register_gate(GateSpec(key, q, bound, ("run",), "group", (), doc))
    for key, q, doc in (
        ("max_group_accuracy_gap_increase", "group_accuracy_gap_increase",
         "per attribute, the change of the largest group accuracy gap (B - A) at most the "
         "threshold"),
        ("max_group_accuracy_decrease", "group_accuracy_decrease",
         "per shown group, its paired accuracy drop (A - B) at most the threshold"),
        ("max_group_background_focus_increase", "group_background_focus_increase",
         "per shown group, its paired background focus rise (B - A) at most the threshold"),
    ):  # fmt: skip
        register_gate(GateSpec(key, q, "max", ("compare",), "group", ("baseline",), doc))


def group_gate_keys() -> tuple[str, ...]:
    """The registered run gates on ``[data] groups`` (level ``"group"``) of classifier runs;
    the detection runs' group gates are :data:`auditor.config_detection.DETECTION_GROUP_GATES`."""
    from auditor.config_detection import DETECTION_GROUP_GATES

    _ensure()
    return tuple(
        k
        for k, s in _REGISTRY.items()
        if s.level == "group" and "run" in s.applies and k not in DETECTION_GROUP_GATES
    )


def _ensure() -> None:
    if not _REGISTRY:
        _register_builtin()


def gate_spec(key: str) -> GateSpec | None:
    """The registered gate ``key``, ``None`` if there is none."""
    _ensure()
    return _REGISTRY.get(key)


def suggest_gates(key: str, n: int = 3) -> list[str]:
    """The ``n`` registered keys closest to ``key`` (no duplicates), best first."""
    _ensure()
    return list(dict.fromkeys(difflib.get_close_matches(key, list(_REGISTRY), n=n, cutoff=0.5)))


def unknown_gate_error(key: str, source: str, section: str = "gates") -> ConfigError:
    """The error for a key that is no registered gate, with the closest 3 as suggestions."""
    close = suggest_gates(key)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    why = ""
    if key.startswith(("max_", "min_")) and key.split("_", 1)[1] in FAITHFULNESS_QUANTITIES:
        q = key.split("_", 1)[1]
        why = (
            f" ({q} is measured on a seeded subset of the whole set, not per class: use "
            f"{key[:4]}overall_{q})"
        )
    return ConfigError(
        f"{source}: unknown gate [{section}] {key}{why}{hint} (`auditor gates` lists them all)"
    )


def _where_text(spec: GateSpec) -> str:
    if spec.applies == ("compare",):
        return "`auditor compare --config` or `auditor run --baseline RUN`"
    return "a run config (`auditor run`)"


def check_rule_context(
    key: str,
    *,
    quantity: str,
    level: str,
    context: str,
    source: str,
    settings: Any = None,
    baseline: bool = False,
    has_masks: bool | None = None,
) -> None:
    """Refuse a gate configured where it does not apply or whose inputs will not exist.

    ``context``: ``"run"`` (a run or shard/finalize config) or ``"compare"`` (``compare
    --config``). ``settings``: the run's :class:`~auditor.config.AuditSettings` (interventions,
    faithfulness), ``baseline``: ``auditor run --baseline`` was given, ``has_masks``: whether
    the dataset carries annotations (``None``: not known yet).
    """
    where = f"{source}: [gates] {key}"
    is_compare = quantity.endswith(("_increase", "_decrease"))
    if context == "compare" and not is_compare:
        raise ConfigError(
            f"{where}: is a run gate (it applies to a single audit), not a comparison gate; "
            f"`auditor compare --config` takes only max_<quantity>_increase / _decrease gates "
            f"(put run gates in the run's config)"
        )
    if context == "run" and is_compare and not baseline:
        raise ConfigError(
            f"{where}: is a comparison gate: it needs a baseline run and applies in "
            f"`auditor compare RUN_A RUN_B --config FILE` or `auditor run CONFIG --baseline RUN`"
        )
    if is_compare:
        return
    q = quantity
    if level == "class" and q in FAITHFULNESS_QUANTITIES:
        raise ConfigError(
            f"{where}: {q} is measured on a seeded subset of the whole set, not per class; "
            f"use scope = \"overall\" (or max_overall_{q} / min_overall_{q})"
        )
    if settings is not None:
        if q in INTERVENTION_QUANTITIES and not settings.interventions:
            raise ConfigError(
                f"{where}: {q} needs the interventions, but [audit] interventions = false"
            )
        if q in FAITHFULNESS_QUANTITIES and settings.faithfulness_samples == 0:
            raise ConfigError(
                f"{where}: {q} needs faithfulness, but [audit] faithfulness_samples = 0"
            )
    if has_masks is False:
        from auditor.metrics.names import MASK_METRICS

        if q in MASK_METRICS or q in INTERVENTION_QUANTITIES:
            raise ConfigError(f"{where}: {q} needs object masks or boxes; the dataset has none")


def gate_table() -> list[dict[str, str]]:
    """Every registered gate as ``{key, applies, level, needs, doc}`` (``auditor gates``)."""
    _ensure()
    return [
        {
            "key": s.key,
            "applies": ", ".join(s.applies),
            "level": s.level,
            "needs": ", ".join(s.needs) or "-",
            "doc": s.doc,
        }
        for s in sorted(_REGISTRY.values(), key=lambda s: (s.applies, s.level, s.key))
    ]


def where_applies(spec: GateSpec) -> str:
    """Human text for where ``spec`` applies (for messages)."""
    return _where_text(spec)


_ensure()  # the built-in gates are registered on import; GATES is complete from the start
