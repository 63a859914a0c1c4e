"""Comparison gates (``[gates]`` rules with ``scope == "compare"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from auditor.analysis import gate_result
from auditor.config import GateRule
from auditor.errors import ConfigError
from auditor.results import (
    GateResult,
    Gates,
)

_INCREASE, _DECREASE = "_increase", "_decrease"


# --------------------------------------------------------------------------------------------
# gates
# --------------------------------------------------------------------------------------------
def _gate_quantity(rule: GateRule) -> tuple[str, int]:
    q = rule.quantity
    if q.endswith(_INCREASE):
        return q[: -len(_INCREASE)], 1
    if q.endswith(_DECREASE):
        return q[: -len(_DECREASE)], -1
    raise ValueError(
        f"`gates` rule {rule.name!r}: quantity must end with '_increase' or '_decrease', got {q!r}"
    )


#: A file that marks a folder as a cam-auditor comparison directory (like a run's marker).
COMPARE_MARKER = ".cam-auditor-compare"


def load_compare_gates(config: str | Path) -> tuple[GateRule, ...]:
    """The comparison gates (``max_<q>_increase`` / ``_decrease``) of a TOML file.

    ``config`` is either a gates file (only a ``[gates]`` section, only comparison gates) or
    a full audit config (validated whole, as ``auditor run --baseline`` reads it: its run
    gates belong to the run). Unknown sections and keys, run gates in a gates file,
    ``[[gates.rule]]`` tables there: errors naming the key and the file (gate registry,
    :mod:`auditor.analysis.gate_registry`).
    """
    from auditor.config import check_keys, load_config, parse_gates, split_gates

    p = Path(config)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {p}")
    try:
        raw = tomllib.loads(p.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p.name}: invalid TOML: {exc}") from exc
    if "model" in raw or "data" in raw:  # a full audit config: validated like `run` reads it
        return split_gates(load_config(p, baseline=True).gates)[1]
    check_keys(raw, ("gates",), "top level", f"{p.name} (a compare --config holds only [gates])")
    table = raw.get("gates")
    if table is None:
        raise ConfigError(
            f"{p.name}: no [gates] section (expected e.g. max_background_focus_increase = 0.05)"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{p.name}: [gates] must be a table")
    return parse_gates(table, p.name, context="compare")


def evaluate_comparison_gates(
    comparison: Mapping[str, Any], rules: Sequence[GateRule]
) -> dict[str, Any]:
    """Check comparison gates against ``comparison`` (the dict of ``comparison.json``).

    ``max_<q>_increase = t``: per class, ``value = mean_b − mean_a`` (stat ``mean``; ``ci_low``
    / ``ci_high`` use the paired interval's bounds) must be ``≤ t``. ``max_<q>_decrease = t``:
    ``value = mean_a − mean_b`` (bounds mirrored). The primary comparison is used unless the
    rule names a ``method`` both runs share. A value that is missing fails the gate, and a rule
    that checked nothing (no class with paired samples, every group suppressed) gets one failed
    result saying so: a configured gate never passes by disappearing ("0/0 passed"). Returns
    ``{"passed", "results": [{rule, class, quantity, stat, value, threshold, bound, passed,
    note}]}``, the shape of ``summary["gates"]``.
    """
    results: list[GateResult] = []
    for rule in rules:
        before = len(results)
        _evaluate_rule(comparison, rule, results)
        if len(results) == before:
            results.append(gate_result(rule, None, None, "nothing to check in this comparison"))
    return Gates.of(results).to_json()


def _evaluate_rule(
    comparison: Mapping[str, Any], rule: GateRule, results: list[GateResult]
) -> None:
    """Append the checks of one comparison gate ``rule`` to ``results``."""
    if rule.scope != "compare":
        raise ValueError(f"`rules` must have scope 'compare', got {rule.scope!r} ({rule.name})")
    base, sign = _gate_quantity(rule)
    if base.startswith("group_"):  # issue 24: per attribute / group (comparison `groups`)
        from auditor.analysis.groups.compare import group_compare_gates

        results.extend(group_compare_gates(comparison.get("groups"), rule, base, sign))
        return
    block = comparison["primary"]
    if rule.method is not None:
        block = comparison.get("methods", {}).get(rule.method) or {"classes": {}}
    for cls, entry in comparison["primary"]["classes"].items():
        if rule.classes and cls not in rule.classes:
            continue
        if not entry.get("n"):
            continue
        stat = (block["classes"].get(cls) or {}).get("metrics", {}).get(base)
        value: float | None = None
        if stat is not None and stat.get("diff") is not None:
            if rule.stat == "mean":
                value = sign * stat["diff"]
            else:
                lo, hi = stat.get("ci_low"), stat.get("ci_high")
                if lo is not None and hi is not None:
                    lo2, hi2 = (lo, hi) if sign > 0 else (-hi, -lo)
                    value = lo2 if rule.stat == "ci_low" else hi2
        results.append(gate_result(rule, cls, value, f"{base} not available in both runs"))


def checked_gate_rules(config: str | Path | None, gates: Sequence[GateRule]) -> list[GateRule]:
    """The comparison gates of ``config`` (a TOML file) and ``gates``, checked."""
    gate_rules = list(load_compare_gates(config) if config is not None else ())
    for rule in gates:
        if not isinstance(rule, GateRule):
            raise TypeError(f"`gates` must hold GateRule objects, got {type(rule).__name__}")
        if rule.scope != "compare":
            raise ValueError(
                f"`gates` rules must have scope 'compare', got {rule.scope!r} ({rule.name})"
            )
        _gate_quantity(rule)
        gate_rules.append(rule)
    return gate_rules
