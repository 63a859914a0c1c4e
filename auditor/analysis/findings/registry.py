"""The finding-rule registry: what a rule reads (:class:`RuleContext`), its thresholds
(:class:`FindingRules`), :func:`finding_rule` to register one, and running, numbering and
flagging (:func:`run_rules`, :func:`number_findings`, :func:`apply_flags`).

The rules themselves live in the family modules of this package (``background``,
``attention``, ``subgroups``, ``sanity``, ``absolute``, ``run``); see the package docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from auditor.analysis.aggregate import PrimaryColumns
from auditor.format import fmt
from auditor.results import ClassClusters, ClassResult, Finding, SanityResult
from auditor.results.vocab import BLOCKING_SEVERITIES, SEVERITY_RANK

__all__ = [
    "FINDING_RULES",
    "SEVERITY_ORDER",
    "FindingRule",
    "FindingRules",
    "RuleContext",
    "apply_flags",
    "class_finding",
    "collapsed",
    "describe_rules",
    "finding_rule",
    "fmt_or_na",
    "number_findings",
    "pct",
    "per_class",
    "run_rules",
    "unregister_rule",
]

SEVERITY_ORDER = SEVERITY_RANK  # auditor.results.vocab


@dataclass(frozen=True)
class FindingRules:
    """Thresholds of the finding rules (printed in the report's methodology)."""

    margin: float = 0.05
    lift_ratio: float = 0.75
    drop_margin: float = 0.10
    sanity_strong: float = 0.8
    disagreement: float = 0.25
    wrong_reasons_share: float = 0.5
    border_band_share: float = 0.36
    #: multi-label (sigmoid) runs, per label index: the chance baseline of the only-background
    #: test of ``absolute_background`` = the model's positive rate for the label on images
    #: WITHOUT it (None: no such image, the test does not run); None for single-label runs,
    #: whose chance is 1 / number of classes (issue 26)
    label_chance: tuple[float | None, ...] | None = None

    def describe(self, confidence: float) -> dict[str, str]:
        """``{rule name: description}`` for every registered rule, in order."""
        return describe_rules(self, confidence)


@dataclass(frozen=True)
class RuleContext:
    """What a finding rule may read: the class results (before flags), the primary method's
    per-sample columns, the other analyses' results and the thresholds."""

    classes: Mapping[str, ClassResult]
    primary: str
    methods: tuple[str, ...]
    samples: PrimaryColumns
    rules: FindingRules
    confidence: float
    clusters: Mapping[str, ClassClusters]
    sanity: Mapping[str, SanityResult]

    def baseline(self, values: np.ndarray, ci: int) -> float | None:
        """Mean of ``values`` over the samples of every other class (finite values only)."""
        others = values[(self.samples.labels != ci) & np.isfinite(values)]
        return float(others.mean()) if len(others) else None


@dataclass(frozen=True)
class FindingRule:
    name: str
    fn: Callable[[RuleContext], list[Finding]]
    describe: Callable[[FindingRules, float], str]


_RULES: dict[str, FindingRule] = {}
#: Registered rules by name, in the order they run (read-only).
FINDING_RULES: Mapping[str, FindingRule] = MappingProxyType(_RULES)


def finding_rule(
    name: str, *, describe: Callable[[FindingRules, float], str]
) -> Callable[[Callable[[RuleContext], list[Finding]]], Callable[[RuleContext], list[Finding]]]:
    """Register ``fn`` as the finding rule ``name`` with its methodology ``describe``."""

    def deco(fn: Callable[[RuleContext], list[Finding]]) -> Callable[[RuleContext], list[Finding]]:
        if name in _RULES:
            raise ValueError(f"finding rule {name!r} is already registered")
        _RULES[name] = FindingRule(name, fn, describe)
        return fn

    return deco


def unregister_rule(name: str) -> None:
    """Remove the finding rule ``name`` (a plugin's or a test's); a built-in rule may be
    removed too, so callers restore what they remove. Raises ``KeyError`` naming it."""
    if name not in _RULES:
        raise KeyError(f"no finding rule {name!r} is registered (known: {', '.join(_RULES)})")
    del _RULES[name]


def describe_rules(rules: FindingRules, confidence: float) -> dict[str, str]:
    return {name: r.describe(rules, confidence) for name, r in _RULES.items()}


def pct(confidence: float) -> str:
    return f"{confidence:.0%}"


def fmt_or_na(v: Any, spec: str = ".0%") -> str:
    return fmt(v, spec, missing="n/a")


def per_class(
    ctx: RuleContext, check: Callable[[str, ClassResult], Finding | None]
) -> list[Finding]:
    """The shape of a per-class rule: ``check(name, class_result)`` for each class in order,
    keeping the findings it returns (``None``: the class raises nothing)."""
    out: list[Finding] = []
    for name, c in ctx.classes.items():
        found = check(name, c)
        if found is not None:
            out.append(found)
    return out


def class_finding(
    name: str, kind: str, severity: str, headline: str, message: str, evidence: Mapping[str, Any]
) -> Finding:
    """A finding about class ``name``, titled ``'name': headline``."""
    return Finding(
        cls=name,
        kind=kind,
        severity=severity,
        title=f"'{name}': {headline}",
        message=message,
        evidence=evidence,
    )


def collapsed(ctx: RuleContext, intervention: str) -> bool:
    """Whether the intervention's fill collapsed (:mod:`auditor.analysis.fill_collapse`)."""
    from auditor.analysis import fill_collapse as fc

    p, n_classes = ctx.samples, len(ctx.classes)
    if intervention == "only_bg":
        res = fc.only_bg_collapse(
            p.labels, p.preds, p.only_bg_pred, n_classes, confidence=ctx.confidence
        )
    else:
        fg = p.interventions.get("only_fg_correct")
        res = fc.only_fg_collapse(
            p.labels, p.correct, fg, n_classes, confidence=ctx.confidence, preds=p.preds,
            only_fg_pred=p.only_fg_pred,
        )  # fmt: skip
    return res.collapsed


def run_rules(ctx: RuleContext, rules: Sequence[str] | None = None) -> list[Finding]:
    """The findings of every registered rule (or of those named), in the order produced."""
    findings: list[Finding] = []
    for name in rules or list(_RULES):
        findings.extend(_RULES[name].fn(ctx))
    return findings


def number_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Sorted by severity, class and kind (stable), with ids ``F1``, ``F2``, …"""
    order = sorted(
        range(len(findings)),
        key=lambda i: (
            SEVERITY_ORDER[findings[i].severity],
            str(findings[i].cls),
            findings[i].kind,
            i,
        ),
    )
    return [replace(findings[i], id=f"F{k + 1}") for k, i in enumerate(order)]


def apply_flags(
    classes: Mapping[str, ClassResult], findings: Sequence[Finding], primary: str
) -> dict[str, ClassResult]:
    """Classes with their ``flags`` (kinds of their findings, in the order the rules produced
    them), ``flagged`` (a high or medium finding) and ``risk`` = mean background focus +
    max(only-foreground drop, 0) + 0.25 × number of flags (the report's ordering key).
    """
    flags: dict[str, list[str]] = {name: [] for name in classes}
    flagged: dict[str, bool] = {name: False for name in classes}
    for f in findings:
        if f.cls is None or f.cls not in classes:
            continue
        if f.severity in BLOCKING_SEVERITIES:
            flagged[f.cls] = True
        if f.kind not in flags[f.cls]:
            flags[f.cls].append(f.kind)
    out: dict[str, ClassResult] = {}
    for name, c in classes.items():
        bf = c.stat(primary, "background_focus")
        drop = c.interventions.only_fg_drop if c.interventions is not None else None
        risk = float(
            ((bf.mean if bf is not None else None) or 0.0)
            + max(drop or 0.0, 0.0)
            + 0.25 * len(flags[name])
        )
        out[name] = replace(c, flags=tuple(flags[name]), flagged=flagged[name], risk=risk)
    return out
