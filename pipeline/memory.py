"""The driver gives freed memory back to the OS between the phases of a run.

Two allocators keep what a phase freed for later reuse: Arrow's (mimalloc) and glibc's
malloc (Python's larger objects, Ray's core worker and gRPC). Memory one of them keeps
cannot serve the other, so the transient buffers of each phase (listing a million files,
reading the per-video records, the blocks of every stage passing through the driver,
building the report) would pile up in the driver's RSS: measured on 100,000 skipped
videos, ~500 bytes per listed video, more than the state the driver actually keeps.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import pyarrow as pa

_libc = None


def release_freed_memory() -> None:
    """Arrow's pool releases its unused pages; glibc trims its free heap pages (no-op
    where there is no glibc, e.g. macOS or musl)."""
    global _libc
    pa.default_memory_pool().release_unused()
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is not None:
        trim(0)
