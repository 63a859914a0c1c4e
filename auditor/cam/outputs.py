"""Model outputs → logits: the one helper every forward of the audit goes through.

Classifiers return logits in several wrappers: a plain ``Tensor [B, C]``; a tuple whose first
item is the logits (Hugging Face ``return_dict=False``, auxiliary-head nets); an object with a
``.logits`` attribute (Hugging Face ``ImageClassifierOutput``) or a mapping with a ``"logits"``
key. :func:`logits_of` unwraps all of them; the CAM engine, the interventions, the
faithfulness curves and the sanity check use it, so a Hugging Face model runs everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["logits_of"]


def logits_of(output: Any) -> Tensor:
    """The logits ``Tensor`` inside a model's output (see the module docstring).

    Raises:
        TypeError: no logits tensor can be found; the message names the output's type.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"the model must return a logits Tensor [B, C] (or a tuple whose first item is one, or "
        f"an output with .logits), got {type(output).__name__}"
    )
