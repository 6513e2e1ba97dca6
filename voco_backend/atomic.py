"""Write outputs under a temporary name and rename them into place, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure remove it.

    The temporary name keeps the final suffixes so that writers that pick a format by extension (SimpleITK,
    NRRD) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name.split('.')[0]}.", suffix=PARTIAL_MARK + suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


PARTIAL_MARK = ".partial"


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` left in ``folder`` when a process was killed.

    Called when a run starts in its folder (one run per folder: a second process on the same ``--out`` is
    refused by the run-folder checks), so only files of a dead run are removed. Returns what was removed.
    """
    removed = []
    for path in Path(folder).glob(f".*{PARTIAL_MARK}*"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (checkpoints, encoder exports)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
