"""Datasets in: readers per format, safe paths, transforms that keep masks aligned.

Public API::

    from auditor.data import parse_data_section, open_dataset, dataset_from_torch, iter_batches
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.data.api import dataset_from_torch, open_dataset
from auditor.data.config import DataConfig, parse_data_section
from auditor.data.safety import safe_join
from auditor.data.sample import EvalDataset, EvalSample

if TYPE_CHECKING:
    from auditor.data.loader import Batch, iter_batches


def __getattr__(name: str) -> Any:
    """The batch loader (torch) on first use: reading a dataset for finalize/report does not
    load torch (issue 14)."""
    if name in ("Batch", "iter_batches"):
        from auditor.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Batch",
    "DataConfig",
    "EvalDataset",
    "EvalSample",
    "dataset_from_torch",
    "iter_batches",
    "open_dataset",
    "parse_data_section",
    "safe_join",
]
