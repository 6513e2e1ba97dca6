"""How the CPU memory of a training or inference step is served (one choice per command, ``--cpu-allocator``).

A CPU step allocates and frees gigabytes of activations. By default each large block is a fresh ``mmap`` that
the kernel fills page by page (4 KiB faults) and unmaps when freed, so every step faults all of its activation
memory in again — about half of a step's time on this project's 2-core machine (shared/VOCO.md §9).

- ``hugepages`` (default): PyTorch's own switch ``THP_MEM_ALLOC_ENABLE``: CPU tensors of 2 MiB and more are
  2 MiB-aligned and advised as transparent huge pages, so a step faults 512 times fewer pages; freed memory
  still goes back to the system, so peak memory stays that of the default. Needs Linux with transparent huge
  pages in ``always`` or ``madvise`` mode, and must be chosen before the process's first large CPU tensor
  (PyTorch reads the switch once), which is why each command applies it first.
- ``retain``: glibc keeps freed memory mapped (``mallopt``); as fast for small models, but the heap fragments
  and peak memory about doubles (the B model ran out of 24 GB).
- ``default``: the C library's allocator unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from voco_backend.protocol import Reporter

CPU_ALLOCATORS = ["hugepages", "retain", "default"]
ALLOCATOR_HELP = (
    "CPU only: hugepages (transparent huge pages for large tensors), retain (glibc keeps freed memory "
    "mapped; about twice the peak memory in training) or default (the C library's)"
)
THP_MODES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_SWITCH = "THP_MEM_ALLOC_ENABLE"

# mallopt parameters of glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def apply_cpu_allocator(name: str, device: torch.device, reporter: Reporter) -> None:
    """Apply ``name`` when the command runs on the CPU; a warning when it is not available here."""
    if device.type == "cpu" and not use_cpu_allocator(name):
        reporter.log(f"--cpu-allocator {name} is not available here; using the default allocator", level="warning")


def use_cpu_allocator(name: str) -> bool:
    """Apply the named allocator to this process; returns whether it applied (False: the default stays)."""
    if name == "hugepages":
        return use_huge_pages()
    if name == "retain":
        return retain_freed_memory()
    if name == "default":
        os.environ[THP_SWITCH] = "0"
        return True
    raise ValueError(f"unknown CPU allocator {name!r}; choose from {', '.join(CPU_ALLOCATORS)}")


def huge_pages_available() -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks for them."""
    try:
        modes = THP_MODES.read_text()
    except OSError:
        return False
    return "[always]" in modes or "[madvise]" in modes


def use_huge_pages() -> bool:
    """Turn on PyTorch's transparent-huge-page allocation of large CPU tensors (before the first one)."""
    if not sys.platform.startswith("linux") or not huge_pages_available():
        return False
    os.environ[THP_SWITCH] = "1"
    return True


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory mapped; returns whether it applied.

    No library exposes ``mallopt``, hence this small ctypes call; it is a no-op where glibc is absent.
    """
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
