"""The user's model leaves as it came: one context manager for train/eval flags.

``preserved_training_flags(model)`` records every submodule's ``training`` flag and restores
each one on exit, also when the body raises (restoring only the root's flag would lose a
submodule the user had deliberately left in train or eval mode). With ``eval=True`` the whole
model is put in eval mode for the body.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when called: finalize/report never load torch
    from torch import nn

__all__ = ["preserved_training_flags"]


@contextlib.contextmanager
def preserved_training_flags(model: nn.Module, *, eval: bool = False) -> Iterator[nn.Module]:  # noqa: A002
    """Restore every submodule's ``training`` flag on exit; ``eval=True``: eval mode inside.

    Raises:
        TypeError: ``model`` is not a :class:`torch.nn.Module`.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval:
            model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
