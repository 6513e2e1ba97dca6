"""Resumable pretraining checkpoints: written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from voco_backend.atomic import save_torch_atomic
from voco_backend.errors import DataError
from voco_backend.resume import LAST_CHECKPOINT

STEP_PATTERN = re.compile(r"checkpoint_step(\d+)\.pt$")


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write ``checkpoint_last.pt`` and (if ``keep`` > 0) ``checkpoint_step{step}.pt``, pruning older ones."""
    save_torch_atomic(state, run_dir / LAST_CHECKPOINT)
    if keep > 0:
        save_torch_atomic(state, run_dir / f"checkpoint_step{step}.pt")
        old = sorted(run_dir.glob("checkpoint_step*.pt"), key=lambda p: int(STEP_PATTERN.search(p.name)[1]))
        for path in old[:-keep]:
            path.unlink()
    return run_dir / LAST_CHECKPOINT


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file is a one-line error."""
    if not path.exists():
        raise DataError("no checkpoint to resume; run without --resume first", file=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"not a readable checkpoint ({type(exc).__name__})", file=path) from exc
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise DataError("not a pretraining checkpoint of this program (no step/model)", file=path)
    return state
