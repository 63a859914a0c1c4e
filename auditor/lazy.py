"""Lazy package attributes (PEP 562): a package's ``__getattr__`` imports the module that
defines a name on first use, so that importing the package does not import torch (or
WeasyPrint) until one of those names is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_attribute"]


def lazy_attribute(
    namespace: MutableMapping[str, Any], lazy: Mapping[str, str], package: str, name: str
) -> Any:
    """``name`` of the package ``package`` (its ``globals()`` is ``namespace``): imported from
    the module ``lazy[name]`` and cached in ``namespace``; ``AttributeError`` for a name
    ``lazy`` does not hold."""
    module = lazy.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
