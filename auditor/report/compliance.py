"""The compliance record around the report: who provides the model, for what use, on which
data, with which limitations, and where the report answers regulators' questions.

* :func:`auditor.compliance.parse_compliance` validates the ``[report]`` compliance keys
  (unknown keys are errors, like everywhere in the config);
* :func:`derived_limitations` words the limitations THIS run shows (methods that failed the
  sanity check, classes too small for an interval, samples without masks, skipped samples, the
  layer choice), to which the user's own are added;
* :func:`compliance_view` is the one function the report's view model calls: the verdict,
  the compliance record, the limitations, the clause map and the sign-off records
  (:class:`auditor.report.view.ComplianceView`; :func:`compliance_context` gives its template
  names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from auditor.compliance import DATASHEET_KEYS, Compliance, parse_compliance
from auditor.errors import ConfigError
from auditor.report.view import ComplianceView
from auditor.results import AuditResult, thaw

__all__ = [
    "MIN_CLASS_N",
    "compliance_context",
    "compliance_view",
    "derived_limitations",
    "record_from_run",
]

#: A class with fewer evaluated images than this gets no usable interval (worded as such).
MIN_CLASS_N = 10


def record_from_run(result: AuditResult) -> Compliance:
    """The compliance record as stored with the run (the config's ``[report]`` table); an
    invalid one (an old or hand-edited summary) reads as empty rather than failing a render."""
    cfg = result.run.config if isinstance(result.run.config, Mapping) else {}
    table = cfg.get("report") if isinstance(cfg, Mapping) else None
    if not isinstance(table, Mapping):
        return Compliance()
    try:
        return parse_compliance(thaw(table), "summary.json run.config")
    except ConfigError:
        return Compliance()


def derived_limitations(result: AuditResult) -> list[str]:
    """Limitations this run itself shows, each one sentence naming what it concerns."""
    out: list[str] = []
    for m, s in (result.sanity or {}).items():
        if not s.trustworthy:
            out.append(
                f"Method {m} failed the model-randomisation sanity check (similarity "
                f"{s.similarity if s.similarity is None else round(s.similarity, 3)} to a "
                f"randomised model): its maps are not evidence about this model."
            )
    small = sorted(n for n, c in result.classes.items() if c.n < MIN_CLASS_N)
    if small:
        shown = ", ".join(f"'{n}'" for n in small[:10]) + (" …" if len(small) > 10 else "")
        out.append(
            f"{len(small)} class(es) have fewer than {MIN_CLASS_N} evaluated images ({shown}): "
            f"their intervals are wide or absent, and no finding about them is conclusive."
        )
    if result.dataset.annotated is False:
        out.append(
            "The evaluation images carry no object masks or boxes: where the model looks could "
            "not be compared with where the object is, and no intervention ran."
        )
    out += _mask_and_group_gaps(result)
    if result.dataset.n_skipped:
        out.append(
            f"{result.dataset.n_skipped} of {result.dataset.n_samples} samples could not be "
            f"evaluated (listed under Skipped samples); the results exclude them."
        )
    out += _background_default(result)
    from auditor.analysis.fill_choice import fill_sentences
    from auditor.analysis.interpretability import from_result

    out += fill_sentences(result.extra.get("intervention_fills"))
    precondition = from_result(result)
    if precondition is not None:
        out += [r[:1].upper() + r[1:] + "." for r in precondition.reasons]
        out += [x["text"] for x in precondition.not_testable if x["kind"] == "global_cue"]
    layer = result.model.target_layer or "the target layer"
    how = "chosen automatically" if result.model.extra.get("target_layer_reason") else "as set"
    out.append(
        f"The maps are computed at {layer} ({how}); another layer can give different maps and "
        f"different findings."
    )
    return out


def _mask_and_group_gaps(result: AuditResult) -> list[str]:
    """Samples without a usable mask (the primary method's metric statuses ``no_mask``,
    ``empty_mask``, ``full_mask``) and metadata groups too small to report (issue 25)."""
    out: list[str] = []
    counts = dict((result.overall.status_counts or {}).get(result.primary_method or "", {}))
    parts = [
        f"{int(counts[k])} {what}"
        for k, what in (
            ("no_mask", "without an object mask"),
            ("empty_mask", "with an empty mask"),
            ("full_mask", "with a mask covering the whole image"),
        )
        if int(counts.get(k) or 0) > 0
    ]
    if parts and result.dataset.annotated is not False:
        out.append(
            f"Of {result.dataset.n_evaluated} evaluated samples, {', '.join(parts)}: where the "
            f"model looks and the background interventions are measured on the others only."
        )
    from auditor.group_results import GroupsResult

    groups = GroupsResult.of_summary(result)
    small = [
        f"{a.name}={g.level}" for a in (groups.attributes if groups else ()) for g in a.levels
        if g.suppressed
    ]  # fmt: skip
    if small and groups is not None:
        shown = ", ".join(small[:6]) + (" …" if len(small) > 6 else "")
        out.append(
            f"{len(small)} metadata group(s) have fewer than {groups.min_group_size} images "
            f"({shown}): no number is reported for them and no disparity about them can be "
            f"found."
        )
    return out


def _background_default(result: AuditResult) -> list[str]:
    """The background-only caveat: a class that receives (nearly) every background-only
    image is the model's default answer for an empty scene, which makes it look like a
    shortcut whether or not it is one."""
    rates = {}
    for name, c in result.classes.items():
        inter = c.interventions
        rate = None if inter is None else inter.get("only_bg_accuracy")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            rates[name] = float(rate)
    if len(rates) < 2:
        return []
    out = []
    for name, rate in rates.items():
        others = [r for n, r in rates.items() if n != name]
        if rate >= 0.9 and max(others) <= 0.1:
            out.append(
                f"With the object removed, the background-only images of class '{name}' are "
                f"still called '{name}' ({rate:.0%}) while those of every other class are not: "
                f"'{name}' may simply be the model's answer for an empty scene, which makes it "
                f"look like a shortcut. Check its maps before concluding."
            )
    return out


def compliance_view(result: AuditResult, run_dir: Path) -> ComplianceView:
    """The verdict, compliance record, limitations, clause map and sign-off records of the
    report (documented in docs/report.md)."""
    from auditor.report.clauses import clause_map
    from auditor.report.glossary import glossary
    from auditor.report.signoff import load_signoffs
    from auditor.report.verdict import failed_gate_sentence, verdict_block

    record = record_from_run(result)
    try:
        signoffs = load_signoffs(run_dir)
    except Exception:  # noqa: BLE001 - a broken file is reported by `auditor verify`
        signoffs = []
    gate_words = {
        f"{g.rule}|{g.cls if g.cls is not None else ''}": failed_gate_sentence(g)
        for g in (result.gates.results if result.gates else ())
        if not g.passed
    }
    return ComplianceView(
        verdict=verdict_block(result),
        gate_words=gate_words,
        glossary=tuple(glossary()),
        sanity_failed=tuple(
            sorted(m for m, s in (result.sanity or {}).items() if not s.trustworthy)
        ),
        record={
            **asdict(record),
            "datasheet": {k: record.datasheet.get(k, "") for k in DATASHEET_KEYS},
        },
        limitations_derived=tuple(derived_limitations(result)),
        clauses=clause_map(),
        signoffs=tuple(signoffs),
    )


def compliance_context(result: AuditResult, run_dir: Path) -> dict[str, Any]:
    """The template names of :func:`compliance_view` (``verdict``, ``compliance``,
    ``limitations_derived``, ``clauses``, ``signoffs``, ...)."""
    return compliance_view(result, run_dir).context()
