"""Resolve ``--data`` arguments (files, folders, DICOM series folders, globs, list files) into image sources."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from voco_backend.data.io import dicom_series_files, has_image_suffix
from voco_backend.errors import DataError

LIST_SUFFIXES = (".txt", ".list", ".csv", ".lst")
GLOB_CHARS = set("*?[")


def _scan_folder(folder: Path) -> list[Path]:
    """Image files and DICOM series folders under ``folder``, sorted."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        root_path = Path(root)
        images = [root_path / f for f in sorted(files) if has_image_suffix(Path(f))]
        found += images
        others = [f for f in files if not has_image_suffix(Path(f)) and not f.startswith(".")]
        if others and dicom_series_files(root_path):
            found.append(root_path)
    return found


def _read_list_file(path: Path) -> list[str]:
    """Entries of a list file: one path per line (first CSV column), relative to the list file; # comments."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split(",")[0].strip()
        if entry and not entry.startswith("#"):
            entries.append(entry if Path(entry).is_absolute() else str(path.parent / entry))
    return entries


def _expand(entry: str) -> Iterable[Path]:
    if GLOB_CHARS & set(entry):
        matches = sorted(glob.glob(entry, recursive=True))
        if not matches:
            raise DataError("the pattern matches no file", file=entry)
        for match in matches:
            yield from _expand(match)
        return
    path = Path(entry)
    if not path.exists():
        raise DataError("no such file or folder", file=path)
    if path.is_dir():
        if dicom_series_files(path):
            yield path
            return
        found = _scan_folder(path)
        if not found:
            raise DataError("folder holds no image files (NIfTI, NRRD, MHA) or DICOM series", file=path)
        yield from found
    elif path.suffix.lower() in LIST_SUFFIXES:
        for item in _read_list_file(path):
            yield from _expand(item)
    else:
        yield path


def resolve_sources(entries: Sequence[str]) -> list[Path]:
    """All image sources named by ``entries``, de-duplicated in order.

    A missing path, an empty folder or a pattern that matches nothing is a one-line :class:`DataError`;
    whether each file is actually readable is checked later, when it is preprocessed.
    """
    seen: dict[Path, None] = {}
    for entry in entries:
        for path in _expand(str(entry)):
            seen.setdefault(path.resolve(), None)
    if not seen:
        raise DataError("no image sources given")
    return list(seen)


def source_stamp(path: Path) -> str:
    """Size and modification time of a file or series folder, so an edited file is re-preprocessed."""
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
        return f"{sum(s.st_size for s in stats)}-{max((s.st_mtime_ns for s in stats), default=0)}"
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"
