"""One process per run folder: a second ``pretrain``/``finetune`` on the same ``--out`` is refused while one runs.

Two runs in one folder would interleave their checkpoints, and each start's clean-up of a killed run's temporary
files (:func:`voco_backend.atomic.remove_orphans`) would delete the other's file in the middle of its write. The
lock is the operating system's advisory lock on the folder itself (POSIX ``flock`` on the directory; on Windows,
``msvcrt`` on a ``.voco.lock`` file in it), so it needs no clean-up: it goes with the process, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from voco_backend.errors import UsageError

WINDOWS_LOCK_FILE = ".voco.lock"


@contextlib.contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Create ``folder`` and hold its lock for the block; :class:`UsageError` if another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.name == "nt":  # pragma: no cover - Windows has no flock on directories
        with _windows_lock(folder):
            yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(_IN_USE, file=folder) from None
        yield
    finally:
        os.close(fd)  # releases the lock


_IN_USE = "is in use by another run (one process per --out): wait for it to end, or choose another --out"


@contextlib.contextmanager
def _windows_lock(folder: Path) -> Iterator[None]:  # pragma: no cover - exercised on Windows only
    import msvcrt

    with open(folder / WINDOWS_LOCK_FILE, "a+b") as handle:
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            raise UsageError(_IN_USE, file=folder) from None
        try:
            yield
        finally:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
