"""A model card from the typed result, in model-card-toolkit's field structure.

The JSON follows the structure of model-card-toolkit's schema (``model_details``,
``model_parameters``, ``quantitative_analysis``, ``considerations``; Mitchell et al. 2019,
"Model Cards for Model Reporting"); the Markdown renders the same content for people.
Values are copied from ``summary.json`` and the ``[report]`` compliance record; nothing is
computed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auditor.results import AuditResult
from auditor.results.vocab import BLOCKING_SEVERITIES

__all__ = ["model_card", "model_card_markdown", "write_model_card"]


def _metric(kind: str, value: float | None, slice_: str, ci: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "value": "" if value is None else f"{value:.4f}"}
    if slice_:
        out["slice"] = slice_
    if ci is not None and len(ci) == 2 and None not in ci:
        out["confidence_interval"] = {
            "lower_bound": f"{float(ci[0]):.4f}",
            "upper_bound": f"{float(ci[1]):.4f}",
        }
    return out


def _performance(result: AuditResult) -> list[dict[str, Any]]:
    primary = result.primary_method
    rows = [_metric("accuracy", result.overall.accuracy, "", result.overall.accuracy_ci)]
    for name, c in result.classes.items():
        rows.append(_metric("accuracy", c.accuracy, f"class={name}", c.accuracy_ci))
        bf = c.stat(primary, "background_focus")
        if bf is not None and bf.mean is not None:
            rows.append(
                _metric(
                    f"background_focus ({primary})",
                    bf.mean,
                    f"class={name}",
                    (bf.ci_low, bf.ci_high),
                )
            )
    return rows


def model_card(result: AuditResult, run_dir: Path) -> dict[str, Any]:
    """The model card as a JSON-able dict (model-card-toolkit field structure)."""
    from auditor.report.compliance import derived_limitations, record_from_run

    rec = record_from_run(result)
    owners = [{"name": n, "contact": rec.contact} for n in (rec.provider, rec.owner) if n]
    gates = result.gates
    considerations: dict[str, Any] = {
        "use_cases": [{"description": rec.intended_use}] if rec.intended_use else [],
        "limitations": [{"description": x} for x in derived_limitations(result)]
        + [{"description": x} for x in rec.limitations],
        "ethical_considerations": [
            {
                "name": f"[{f.severity}] {f.title}",
                "mitigation_strategy": "Review the evidence in the audit report (finding "
                f"{f.id}) before release.",
            }
            for f in result.findings
            if f.severity in BLOCKING_SEVERITIES
        ],
    }
    sheet = dict(rec.datasheet)
    return {
        "schema_version": "0.0.2",
        "model_details": {
            "name": str(result.model.name or result.model.source or "model"),
            "overview": (
                f"Audit of where the model looks (class activation maps, "
                f"{', '.join(result.methods)}) on {result.dataset.n_evaluated} evaluation images"
                + (
                    f"; release gates {'passed' if gates.passed else 'FAILED'}"
                    if gates is not None and gates.results
                    else ""
                )
                + "."
            ),
            "version": {
                "name": rec.model_version or str(result.model.sha256 or "")[:12],
                # the schema's "format": "date" is RFC 3339 full-date (YYYY-MM-DD)
                "date": str(result.run.finished or result.run.started or "")[:10],
            },
            "owners": owners,
            "references": [{"reference": "report.pdf"}, {"reference": "summary.json"}],
        },
        "model_parameters": {
            "model_architecture": str(result.model.source or ""),
            "data": [
                {
                    "name": str(result.dataset.name or "evaluation set"),
                    # "format": "uri": only a source that is a URI is a link (any source
                    # is in the description)
                    **({"link": src} if "://" in (src := str(sheet.get("source") or "")) else {}),
                    "sensitive": {"sensitive_data": []},
                    "description": "; ".join(f"{k}: {v}" for k, v in sheet.items() if v),
                }
            ],
        },
        "quantitative_analysis": {"performance_metrics": _performance(result)},
        "considerations": considerations,
    }


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (the same content, for people)."""
    d = card["model_details"]
    lines = [f"# Model card: {d['name']}", "", d["overview"], ""]
    lines += [f"- Version: {d['version']['name']} ({d['version']['date']})"]
    for o in d["owners"]:
        lines.append(f"- Owner: {o['name']}" + (f" <{o['contact']}>" if o["contact"] else ""))
    cons = card["considerations"]
    if cons["use_cases"]:
        lines += ["", "## Intended use", "", cons["use_cases"][0]["description"]]
    lines += [
        "",
        "## Performance",
        "",
        "| Metric | Slice | Value | 95% interval |",
        "|---|---|---|---|",
    ]
    for m in card["quantitative_analysis"]["performance_metrics"]:
        ci = m.get("confidence_interval")
        interval = f"{ci['lower_bound']} – {ci['upper_bound']}" if ci else ""
        slice_ = m.get("slice", "all").replace("|", "\\|")
        lines.append(f"| {m['type']} | {slice_} | {m['value']} | {interval} |")
    lines += ["", "## Limitations", ""] + [f"- {x['description']}" for x in cons["limitations"]]
    if cons["ethical_considerations"]:
        lines += ["", "## Risks found by the audit", ""]
        lines += [f"- {x['name']}" for x in cons["ethical_considerations"]]
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: Path) -> tuple[Path, Path]:
    """Write ``model_card.json`` and ``model_card.md`` into the run; return both paths."""
    from auditor.audit.store import atomic_write_bytes
    from auditor.report.context import load_result

    run_dir = Path(run_dir)
    card = model_card(load_result(run_dir), run_dir)
    js, md = run_dir / "model_card.json", run_dir / "model_card.md"
    atomic_write_bytes(js, (json.dumps(card, indent=1) + "\n").encode("utf-8"))
    atomic_write_bytes(md, model_card_markdown(card).encode("utf-8"))
    return js, md
