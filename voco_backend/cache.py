"""The user's cache folder: downloaded models, registry samples, the preprocessing cache."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "VOCO_CACHE_DIR"


def cache_dir() -> Path:
    """``$VOCO_CACHE_DIR`` or ``~/.cache/voco_backend``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "voco_backend").expanduser()
