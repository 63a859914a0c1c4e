"""Deprecated import path: moved to :mod:`auditor.compare.streamed` (shim kept for one release)."""

from auditor.compare.streamed import (
    CHUNK_PAIRS,
    MethodCounts,
    method_counts,
    stream_compare,
    wilcoxon_stream,
)

__all__ = ["CHUNK_PAIRS", "MethodCounts", "method_counts", "stream_compare", "wilcoxon_stream"]
