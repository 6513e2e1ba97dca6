"""What both training loops (pretraining and fine-tuning) share to resume a run exactly.

The resumable checkpoint's file name, and the torch RNG states it carries so that a resumed run draws the
same dropout masks as the uninterrupted one.
"""

from __future__ import annotations

import torch

LAST_CHECKPOINT = "checkpoint_last.pt"


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch RNG states that the step needs (dropout)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
