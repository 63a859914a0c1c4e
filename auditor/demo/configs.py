"""Configs on the demo's model and data, all derived from ONE template.

:data:`auditor.demo.shortcut.DEMO_CONFIG` is the demo's config (``auditor demo``,
``example_audits/demo/config-*.toml``); its ``[model]`` and ``[data]`` tables (the factory,
the weights, the classes, the input size and normalisation) are the single source of every
other config on the demo's model: the tests' cheap presets (``tests/conftest.py``) and the
docs sandbox (``tests/test_docs_run.py``) take them from :func:`demo_config_text` with their own
``[audit]``, ``[gates]`` and ``[report]`` bodies, so a change of the demo's data or model
reaches all of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from auditor.demo.shortcut import DEMO_CONFIG

__all__ = ["demo_config_text", "demo_tables"]


def demo_tables(
    weights: str | Path,
    manifest: str | Path = "data/manifest.csv",
    name: str | None = None,
) -> str:
    """The ``[model]`` and ``[data]`` tables of :data:`DEMO_CONFIG` with ``weights``,
    ``manifest`` and the model ``name`` (``None``: no ``name`` key) filled in."""
    start, end = DEMO_CONFIG.index("[model]\n"), DEMO_CONFIG.index("[audit]\n")
    tables = DEMO_CONFIG[start:end]
    tables = re.sub(r"^name = .*\n", "" if name is None else f"name = {json.dumps(name)}\n",
                    tables, count=1, flags=re.M)  # fmt: skip
    tables = tables.replace('"{weights}"', json.dumps(str(weights)))
    tables = tables.replace('"data/manifest.csv"', json.dumps(str(manifest)))
    if re.search(r"\{\w+\}", tables):
        raise ValueError(f"DEMO_CONFIG's [model]/[data] hold an unfilled placeholder: {tables!r}")
    return tables


def demo_config_text(
    *,
    weights: str | Path,
    audit: str,
    manifest: str | Path = "data/manifest.csv",
    name: str | None = None,
    gates: str = "",
    report: str = "",
    header: str = "",
) -> str:
    """A config on the demo's model and data: ``header`` (comment lines), the demo's
    ``[model]``/``[data]`` (:func:`demo_tables`), then the ``[audit]``, ``[gates]`` (when not
    empty) and ``[report]`` (when not empty) bodies given."""
    text = header + demo_tables(weights, manifest, name) + "[audit]\n" + audit
    if gates:
        text += "\n[gates]\n" + gates
    if report:
        text += "\n[report]\n" + report
    return text
