"""auditor.audit.heap.kept_heap: glibc's mmap threshold is raised inside the block, restored after.

Checked through the allocator itself: a 16 MiB ``malloc`` is served by ``mmap`` (counted in
``mallinfo2().hblkhd``) outside the block and from the heap inside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from auditor.audit.heap import kept_heap


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc without mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _mmapped_by(libc: ctypes.CDLL, size: int) -> int:
    before = libc.mallinfo2().hblkhd
    ptr = libc.malloc(size)
    assert ptr
    try:
        return int(libc.mallinfo2().hblkhd - before)
    finally:
        libc.free(ptr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_heap_serves_large_blocks_from_the_heap_and_restores() -> None:
    libc = _libc()
    size = 16 * 1024 * 1024
    with kept_heap() as applied:
        assert applied
        assert _mmapped_by(libc, size) == 0  # from the heap: no page faults next batch
    # defaults again (128 KiB threshold): a block larger than the heap's free top is mmapped
    assert _mmapped_by(libc, 16 * size) >= 16 * size
