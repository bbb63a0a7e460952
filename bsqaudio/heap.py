"""Giving freed memory back to the system between batches (glibc only; a no-op elsewhere).

Each model batch allocates and frees tens of MB (activations, mel windows, Griffin-Lim blocks).
glibc keeps much of that in its heaps, fragmented, so a process streaming an hour-long file grows
for minutes although nothing it holds grows. ``malloc_trim`` after every batch returns those pages;
it costs well under a millisecond against a batch's hundreds (measured in
docs/batch_throughput.md and docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _find_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows): nothing to trim
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory() -> None:
    """Return the heap pages freed so far to the system."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
