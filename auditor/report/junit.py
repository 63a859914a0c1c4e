"""JUnit XML of an audit: the release gates, and the findings that need action, as test cases.

CI systems (Jenkins, GitLab, GitHub test-report actions) show JUnit test cases; this file is
how an audit appears there. Layout (the de-facto schema Jenkins and junitparser read)::

    <testsuites name="cam-auditor" tests= failures= errors="0" time= timestamp=>
      <testsuite name="gates: MODEL" tests= failures= errors="0" skipped="0" time= timestamp=>
        <properties> model, model_sha256, dataset_sha256, primary_method, document_id
        <testcase classname="cam-auditor.gates" name="RULE[CLASS]" time="0">
          <failure type="gate" message="one line">the check in words: quantity, value, bound,
            threshold, note</failure>
      <testsuite name="findings: MODEL" ...>            (medium, high and critical findings)
        <testcase classname="cam-auditor.findings.KIND" name="F1 [high] CLASS: title">
          <failure type="finding.high" message="title">message, then the evidence</failure>

``time`` is the audit's duration in seconds (``run.duration_s``) on the gates suite and the
root (a gate or finding takes no time of its own: ``0``); ``timestamp`` is when the run
finished, ISO 8601 in UTC without an offset (the JUnit schema's ``xs:dateTime`` form). Only
the gates decide the exit code; the findings suite lists what a reviewer must look at, so a
CI view can fail on it or not. Low and info findings are notes and not test cases.

User text (class names, messages) passes through :func:`auditor.safe_text.xml_safe`, so a
control character cannot make the file ill-formed; the XML itself is written by
:mod:`xml.etree.ElementTree` (escaping ``<&>"``) and atomically.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET  # noqa: S405 - building our own document, not parsing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auditor.results import AuditResult, Finding, GateResult, evidence_label
from auditor.safe_text import xml_safe

__all__ = ["ACTION_SEVERITIES", "junit_xml", "write_junit"]

#: Severities that become test cases of the findings suite (ordered, most severe first).
ACTION_SEVERITIES: tuple[str, ...] = ("critical", "high", "medium")


def _s(text: object) -> str:
    return xml_safe("" if text is None else text)


def _timestamp(value: str | None) -> str | None:
    """``value`` (ISO 8601, any offset) as UTC ``YYYY-MM-DDTHH:MM:SS``; None when unreadable."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def _seconds(value: float | None) -> str:
    return f"{max(0.0, float(value)):.3f}" if value is not None else "0.000"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def _gate_words(r: GateResult) -> tuple[str, str]:
    """(one-line message, body) of a failed gate check."""
    value = "not available" if r.value is None else _number(r.value)
    threshold = "None" if r.threshold is None else repr(r.threshold)
    message = f"{r.quantity} ({r.stat}) = {value}, {r.bound} allowed {threshold}" + (
        f" ({r.note})" if r.note else ""
    )
    body = "\n".join(
        [
            f"rule: {r.rule}",
            f"class: {r.cls if r.cls is not None else 'all (run-wide)'}",
            f"quantity: {r.quantity} ({r.stat})",
            f"value: {value}",
            f"{r.bound or 'bound'} allowed: {threshold}",
        ]
        + ([f"note: {r.note}"] if r.note else [])
    )
    return message, body


def _evidence_text(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if all(v is None or isinstance(v, (int, float)) for v in value):
            lo, hi = ("—" if v is None else _number(v) for v in value)
            return f"[{lo}, {hi}]"
    if isinstance(value, (list, tuple)):
        return ", ".join(_evidence_text(v) for v in value[:20])
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_evidence_text(v)}" for k, v in value.items())
    return "—" if value is None else _number(value)


def _finding_body(f: Finding) -> str:
    lines = [f.message or f.title]
    if f.cls is not None:
        lines.append(f"class: {f.cls}")
    lines.append(f"kind: {f.kind}, severity: {f.severity}")
    evidence = {k: v for k, v in f.evidence.items() if k != "members"}
    if evidence:
        lines.append("evidence:")
        lines += [f"  {evidence_label(k)}: {_evidence_text(v)}" for k, v in evidence.items()]
    if f.examples:
        lines.append("examples: " + ", ".join(map(str, f.examples[:10])))
    return "\n".join(lines)


def _suite(
    parent: ET.Element, name: str, cases: list[tuple[str, str, tuple[str, str, str] | None]], *,
    time: str, timestamp: str | None, properties: Mapping[str, str],
) -> tuple[int, int]:  # fmt: skip
    """One ``<testsuite>``: ``cases`` are (classname, name, (type, message, body) or None)."""
    failures = sum(1 for c in cases if c[2] is not None)
    attrs = {"name": _s(name), "tests": str(len(cases)), "failures": str(failures)}
    attrs.update(errors="0", skipped="0", time=time)
    if timestamp:
        attrs["timestamp"] = timestamp
    suite = ET.SubElement(parent, "testsuite", attrs)
    if properties:
        props = ET.SubElement(suite, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", {"name": k, "value": _s(v)})
    for classname, case_name, failure in cases:
        case = ET.SubElement(
            suite, "testcase", {"classname": classname, "name": _s(case_name), "time": "0"}
        )
        if failure is not None:
            kind, message, body = failure
            el = ET.SubElement(case, "failure", {"type": kind, "message": _s(message)})
            el.text = _s(body)
    return len(cases), failures


def junit_xml(result: AuditResult, *, suite: str | None = None) -> bytes:
    """The JUnit document of ``result`` (layout in the module docstring), UTF-8 bytes.

    ``suite`` names the gates suite (default ``"gates: <model name>"``).
    """
    if not isinstance(result, AuditResult):
        raise TypeError(f"`result` must be an AuditResult, got {type(result).__name__}")
    model = str(result.model.name)
    timestamp = _timestamp(result.run.finished or result.run.started)
    time = _seconds(result.run.duration_s)
    gate_cases: list[tuple[str, str, tuple[str, str, str] | None]] = []
    for r in result.gates.results if result.gates is not None else ():
        case = r.rule + (f"[{r.cls}]" if r.cls is not None else "")
        failure = None if r.passed else ("gate", *_gate_words(r))
        gate_cases.append(("cam-auditor.gates", case, failure))
    finding_cases: list[tuple[str, str, tuple[str, str, str] | None]] = []
    for f in sorted(
        (f for f in result.findings if f.severity in ACTION_SEVERITIES),
        key=lambda f: ACTION_SEVERITIES.index(f.severity),
    ):
        where = f"{f.cls}: " if f.cls is not None else ""
        name = f"{f.id + ' ' if f.id else ''}[{f.severity}] {where}{f.title or f.kind}"
        failure = (f"finding.{f.severity}", f.title or f.message or f.kind, _finding_body(f))
        finding_cases.append((f"cam-auditor.findings.{f.kind}", name, failure))
    props = {
        "model": model,
        "model_sha256": str(result.model.sha256 or ""),
        "dataset_sha256": str(result.dataset.sha256 or ""),
        "primary_method": str(result.primary_method or ""),
    }
    props = {k: v for k, v in props.items() if v}
    root = ET.Element("testsuites", {"name": "cam-auditor"})
    totals = [
        _suite(root, suite if suite is not None else f"gates: {model}", gate_cases,
               time=time, timestamp=timestamp, properties=props),
        _suite(root, f"findings: {model}", finding_cases,
               time="0.000", timestamp=timestamp, properties={}),
    ]  # fmt: skip
    root.set("tests", str(sum(t for t, _ in totals)))
    root.set("failures", str(sum(f for _, f in totals)))
    root.set("errors", "0")
    root.set("time", time)
    if timestamp:
        root.set("timestamp", timestamp)
    ET.indent(root, space="  ")
    text = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n").encode("utf-8")


def write_junit(
    path: Path, summary: AuditResult | Mapping[str, Any], *, suite: str | None = None
) -> Path:
    """Write :func:`junit_xml` of ``summary`` (typed or a summary.json mapping) to ``path``.

    Written atomically; returns ``path``.

    Raises:
        TypeError: ``summary`` is neither an :class:`AuditResult` nor a mapping.
    """
    from auditor.audit.store import atomic_write_bytes

    if isinstance(summary, AuditResult):
        result = summary
    elif isinstance(summary, Mapping):
        result = AuditResult.from_json(summary)
    else:
        raise TypeError(
            f"`summary` must be an AuditResult or a summary.json mapping, got "
            f"{type(summary).__name__}"
        )
    path = Path(path)
    atomic_write_bytes(path, junit_xml(result, suite=suite))
    return path
