"""Config checks of multi-label (sigmoid) gates: ``min_label_auroc`` and
``min_label_average_precision`` (issue 26).

Torch-free (``auditor.config`` imports it). The per-label AUROC (DeLong interval) and average
precision (stratified bootstrap interval) of summary.json ``labels``
(:mod:`auditor.analysis.multilabel`) are gated per label; they exist only in a run with
``[model] output = "sigmoid"``, so in any other run these gates are refused while the config
is read (exit 2), before they could fail unevaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auditor.errors import ConfigError

__all__ = ["LABEL_GATES", "LABEL_GATE_QUANTITIES", "check_label_gates"]

#: gate key -> gate quantity (bound "min": value >= threshold)
LABEL_GATES: Mapping[str, str] = {
    "min_label_auroc": "label_auroc",
    "min_label_average_precision": "label_average_precision",
}
#: gate quantity -> the statistic's key in summary.json ``labels.labels.<label>``
LABEL_GATE_QUANTITIES: Mapping[str, str] = {
    "label_auroc": "auroc",
    "label_average_precision": "average_precision",
}


def check_label_gates(raw_gates: Mapping[str, Any], output: str, source: str) -> None:
    """Refuse a label gate in a run whose ``[model] output`` is not ``"sigmoid"``."""
    for key in raw_gates:
        if key in LABEL_GATES and output != "sigmoid":
            raise ConfigError(
                f"{source}: [gates] {key} gates the per-label statistics of a multi-label run; "
                f'it needs [model] output = "sigmoid", got output = {output!r} (for one label '
                f"per image use min_accuracy)"
            )
