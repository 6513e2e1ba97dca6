"""The user's cache folder: downloaded models, registry samples, the preprocessing cache."""

from __future__ import annotations

import os
from pathlib import Path

from voco_backend.errors import UsageError

CACHE_ENV = "VOCO_CACHE_DIR"
# Kernel and device file systems: never a place for files of ours, though some accept a mkdir.
_SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def cache_dir() -> Path:
    """``$VOCO_CACHE_DIR`` or ``~/.cache/voco_backend``.

    Raises:
        UsageError: the folder (or a parent of it) exists but is not a folder, or lies on a system file system.
    """
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "voco_backend").expanduser()
    check_folder(path, CACHE_ENV)
    return path


def check_folder(path: Path, field: str) -> None:
    """Raise a one-line :class:`UsageError` naming ``field`` unless ``path`` is, or can become, a folder of ours."""
    resolved = path.resolve()
    if any(resolved == root or root in resolved.parents for root in _SYSTEM_ROOTS):
        raise UsageError(f"{field} is {path}, a system folder; set it to a folder of your own", file=field)
    for candidate in (resolved, *resolved.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise UsageError(f"{field} is {path}, but {candidate} is not a folder; set it to a folder", file=field)
            if not os.access(candidate, os.W_OK | os.X_OK) and candidate == resolved:
                raise UsageError(
                    f"{field} is {path}, a folder that is not writable; set it to a writable folder", file=field
                )
            break
