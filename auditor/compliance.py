"""The ``[report]`` compliance record: parsing and validation (torch-free, light; read by
:mod:`auditor.config` and by the report). Unknown keys are errors, like everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auditor.errors import ConfigError

__all__ = ["COMPLIANCE_KEYS", "DATASHEET_KEYS", "PDF_VARIANTS", "Compliance", "parse_compliance"]

#: ``[report]`` keys of the compliance record (strings unless noted).
COMPLIANCE_KEYS = (
    "intended_use",
    "provider",
    "owner",
    "model_version",
    "document_id",
    "contact",
    "previous_run",
    "limitations",  # list of strings
    "author",
    "language",
    "pdf_variant",
    "datasheet",  # table, DATASHEET_KEYS
)
#: ``[report.datasheet]`` keys: the evaluation data's datasheet (Gebru et al. 2021).
DATASHEET_KEYS = ("source", "collection", "labelling", "known_gaps")
#: PDF variants WeasyPrint can write; ``pdf/a-3b`` embeds summary.json as an attachment.
PDF_VARIANTS = ("pdf/a-3b", "pdf/ua-1")


@dataclass(frozen=True)
class Compliance:
    """The ``[report]`` compliance record; every field optional (``""`` = not given)."""

    intended_use: str = ""
    provider: str = ""
    owner: str = ""
    model_version: str = ""
    document_id: str = ""
    contact: str = ""
    previous_run: str = ""
    author: str = ""
    language: str = "en"
    pdf_variant: str = ""
    limitations: tuple[str, ...] = ()
    datasheet: Mapping[str, str] = field(default_factory=dict)


def _str(table: Mapping[str, Any], key: str, where: str, source: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{source}: [{where}] {key} must be a string, got {value!r}")
    return value.strip()


def parse_compliance(table: Mapping[str, Any], source: str = "<config>") -> Compliance:
    """Validate the compliance keys of a ``[report]`` table (other keys are ignored here:
    :mod:`auditor.config` checks the section's whole key set)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: [report] must be a table, got {type(table).__name__}")
    lims = table.get("limitations", [])
    if not isinstance(lims, list) or not all(isinstance(x, str) for x in lims):
        raise ConfigError(f"{source}: [report] limitations must be a list of strings, got {lims!r}")
    sheet = table.get("datasheet", {})
    if not isinstance(sheet, Mapping):
        raise ConfigError(f"{source}: [report] datasheet must be a table, got {sheet!r}")
    for key in sheet:
        if key not in DATASHEET_KEYS:
            raise ConfigError(
                f"{source}: unknown key [report.datasheet] {key}; allowed: "
                f"{', '.join(DATASHEET_KEYS)}"
            )
    variant = _str(table, "pdf_variant", "report", source).lower()
    if variant and variant not in PDF_VARIANTS:
        raise ConfigError(
            f"{source}: [report] pdf_variant must be one of {', '.join(PDF_VARIANTS)}, "
            f"got {table.get('pdf_variant')!r}"
        )
    simple = ("intended_use", "provider", "owner", "model_version", "document_id", "contact")
    return Compliance(
        **{k: _str(table, k, "report", source) for k in simple},
        previous_run=_str(table, "previous_run", "report", source),
        author=_str(table, "author", "report", source),
        language=_str(table, "language", "report", source) or "en",
        pdf_variant=variant,
        limitations=tuple(x.strip() for x in lims if x.strip()),
        datasheet={k: _str(sheet, k, "report.datasheet", source) for k in DATASHEET_KEYS},
    )
