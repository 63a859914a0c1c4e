"""The model-facing stage: batches of images -> per-sample rows in a run store.

* :mod:`auditor.audit.runner`: the audit loop (``audit``, ``run_audit``) and ``finalize_run``;
* :mod:`auditor.audit.store`: the run directory (shards, atomic writes, resume, lock, the one
  samples row schema);
* :mod:`auditor.audit.distributed`: ``--shard I/N`` and ``torchrun`` (rank plans, agreement);
* :mod:`auditor.audit.streaming`: Poisson bootstrap blocks for the streamed aggregation;
* :mod:`auditor.audit.heap`: bounded heaps for the gallery's picks;
* :mod:`auditor.audit.modelstate`: the one train/eval flag save/restore;
* :mod:`auditor.audit.status`: the one per-sample status vocabulary.

Importing this package imports none of them (and no torch).
"""
