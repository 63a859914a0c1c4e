"""Provenance of a run: the versions of Python and of every library its result depends on."""

from __future__ import annotations

import platform

__all__ = ["PROVENANCE_DISTRIBUTIONS", "library_versions"]

#: the distributions whose versions a run records (those not installed are left out)
PROVENANCE_DISTRIBUTIONS = (
    "cam-auditor",
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "pyarrow",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "jinja2",
    "weasyprint",
    "pycocotools",
    "safetensors",
    "defusedxml",
)


def library_versions() -> dict[str, str]:
    """Versions of Python and every library the result depends on (provenance)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in PROVENANCE_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
