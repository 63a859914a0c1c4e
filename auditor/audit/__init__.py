"""The model-facing stage: batches of images -> per-sample rows in a run store.

* :mod:`auditor.audit.runner`: the audit loop (``audit``, ``run_audit``) and ``finalize_run``;
* :mod:`auditor.audit.store`: the run directory (shards, atomic writes, resume, lock, the one
  samples row schema);
* :mod:`auditor.audit.distributed`: ``--shard I/N`` and ``torchrun`` (rank plans, agreement);
* :mod:`auditor.audit.streaming`: Poisson bootstrap blocks for the streamed aggregation;
* :mod:`auditor.audit.heap`: bounded heaps for the gallery's picks;
* :mod:`auditor.audit.modelstate`: the one train/eval flag save/restore;
* :mod:`auditor.audit.status`: the one per-sample status vocabulary;
* :mod:`auditor.audit.interrupt`: Ctrl-C (stop after the batch; twice: quit, exit 130).

Importing this package imports none of them (and no torch).
"""

import sys as _sys
import types as _types
from typing import Any as _Any


class _CallableAuditPackage(_types.ModuleType):
    """``auditor.audit`` is both this package and the public ``audit(model, dataset, out)``.

    Importing any ``auditor.audit.<module>`` binds the *package* to the attribute ``audit`` of
    :mod:`auditor`, shadowing the lazily exported function. Making the package callable keeps
    ``auditor.audit(model, dataset, out, ...)`` working whatever was imported first.
    """

    def __call__(self, *args: _Any, **kwargs: _Any) -> _Any:
        from auditor.audit.runner import audit as _audit

        return _audit(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableAuditPackage
