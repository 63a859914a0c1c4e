"""cam-auditor: audit where an image classifier looks, and whether it needs the background.

The curated public API (pinned by ``tests/test_public_api.py``)::

    import auditor
    cfg = auditor.load_config("audit.toml")
    outcome = auditor.run_audit(cfg, "runs/v2")          # run directory + summary + gates
    auditor.render_report("runs/v2", pdf=True)           # re-render without the model
    auditor.compare_runs("runs/v1", "runs/v2", out="runs/v1-vs-v2")
    cams = auditor.compute_cams(model, images, labels, methods=("gradcam", "layercam"))
    run = auditor.load_run("runs/v2")                    # pandas: .samples .classes .findings
"""

from __future__ import annotations

from typing import Any

from auditor._version import __version__
from auditor.errors import (
    AuditorError,
    AuditorInputError,
    ConfigError,
    DataError,
    ModelLoadError,
    RenderError,
    ResumeMismatchError,
    UnsafePathError,
)
from auditor.lazy import lazy_attribute

__all__ = [
    "AuditOutcome",
    "AuditorError",
    "AuditorInputError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "RenderError",
    "ResumeMismatchError",
    "UnsafePathError",
    "__version__",
    "audit",
    "compare_runs",
    "compute_cams",
    "load_config",
    "load_run",
    "render_report",
    "run_audit",
    "run_demo",
]

_LAZY = {
    "AuditOutcome": "auditor.audit.runner",
    "audit": "auditor.audit.runner",  # the package auditor.audit is callable too
    "run_audit": "auditor.audit.runner",
    "run_demo": "auditor.demo",
    "load_config": "auditor.config",
    "load_run": "auditor.notebook",
    "render_report": "auditor.report",
    "compare_runs": "auditor.compare",
    "compute_cams": "auditor.cam",
}


def __getattr__(name: str) -> Any:
    """Import heavy modules (torch, weasyprint) only when their entry point is used."""
    return lazy_attribute(globals(), _LAZY, __name__, name)


def __dir__() -> list[str]:
    return sorted(__all__)
