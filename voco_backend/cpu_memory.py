"""glibc malloc tuning for CPU training: keep freed activation memory mapped instead of returning it.

A CPU training step allocates and frees gigabytes of activations. By default glibc serves every block above
its mmap threshold with a fresh ``mmap`` and gives it back with ``munmap`` when freed, so each step page-faults
all of its activation memory in again (about half of a step's time here, shared/VOCO.md §9). ``retain`` serves
large blocks from the heap and never trims it, so the pages stay mapped from step to step. No library exposes
``mallopt``, hence this small ctypes call; it is a no-op where glibc is absent (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters of glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory mapped; returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    # The largest int: glibc then never trims the top of the heap.
    return ok and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
