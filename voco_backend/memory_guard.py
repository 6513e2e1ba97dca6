"""Refuse a training step that cannot fit: estimate its peak memory before the first step (exit 4 with advice).

Without this, a step too large for the machine meets the kernel's OOM killer (CPU) with no message from us,
or a CUDA out-of-memory error deep inside backward. The estimate is linear in what drives a step's memory:

    peak ≈ runtime + parameters · bytes per parameter (weights, gradients, AdamW-amsgrad state, teacher)
           + crops · voxels per crop · (a + b · feature size)   (activations kept for backward)

with a and b fitted to measured peak RSS of encoder steps of this project (fp32, CPU, SDPA window attention,
2 and 6 crops of 64³: tiny 0.40 + 0.42 GB per crop, B 0.67 + 1.00 GB per crop), plus a 10% margin.
``VOCO_MEMORY_LIMIT_GB`` replaces the device's free memory as the limit (to test the guard, or to keep a share
of a machine for others).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from voco_backend.errors import OutOfMemory, UsageError

LIMIT_ENV = "VOCO_MEMORY_LIMIT_GB"
GB = 1e9

# Bytes held for backward per crop voxel: a + b · feature size (SwinUNETR-v2 encoder, fp32). MONAI's gradient
# checkpointing covers the Swin blocks only; with the SDPA attention it kept 80% of B's activations here
# (2 crops: 1.63 GB instead of 2.00 GB above the model).
ACTIVATION_BYTES_PER_VOXEL = 1100.0
ACTIVATION_BYTES_PER_FEATURE = 64.0
CHECKPOINTED_FRACTION = 0.8
# The full SwinUNETR (fine-tuning) adds its decoder, about as much again as the encoder path.
DECODER_FACTOR = 2.0
# Weights, gradient and the three AdamW-amsgrad moments, fp32.
BYTES_PER_PARAMETER = 5 * 4
# The Python process with torch and MONAI loaded, and the data of a step.
RUNTIME_BYTES = 0.6 * GB


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What sizes a training step's memory."""

    feature_size: int
    parameters: int
    crops: int
    crop_voxels: int
    gradient_checkpointing: bool = False
    half_precision: bool = False
    decoder: bool = False
    extra_parameters: int = 0  # e.g. a whole-network EMA teacher (weights only)


def estimated_as_half_precision(device: torch.device, amp: bool) -> bool:
    """Whether a training step with ``--amp`` is estimated at half precision: on CUDA only.

    A CPU's bf16 autocast is estimated as fp32: it measured 0.63-0.83x that peak, so the guard errs safe.
    """
    return device.type == "cuda" and amp


def estimate_peak_bytes(shape: StepShape) -> float:
    """The estimated peak memory of one step of ``shape``, in bytes."""
    per_voxel = ACTIVATION_BYTES_PER_VOXEL + ACTIVATION_BYTES_PER_FEATURE * shape.feature_size
    if shape.gradient_checkpointing:
        per_voxel *= CHECKPOINTED_FRACTION
    if shape.decoder:
        per_voxel *= DECODER_FACTOR
    if shape.half_precision:
        per_voxel *= 0.6  # bf16/fp16 activations, fp32 norms and master weights
    activations = shape.crops * shape.crop_voxels * per_voxel
    return RUNTIME_BYTES + shape.parameters * BYTES_PER_PARAMETER + shape.extra_parameters * 4 + activations


def available_bytes(device: torch.device) -> tuple[float, str]:
    """The memory a step may use on ``device`` and where that figure comes from."""
    override = os.environ.get(LIMIT_ENV)
    if override:
        try:
            return float(override) * GB, f"${LIMIT_ENV}"
        except ValueError:
            raise UsageError(f"${LIMIT_ENV} must be a number of GB, got {override!r}") from None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"free memory of {torch.cuda.get_device_name(device)}"
    return _available_ram(), "available RAM"


def _available_ram() -> float:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def processes_per_machine(world: int) -> int:
    """How many training processes share this machine: torchrun's ``LOCAL_WORLD_SIZE``, else the world."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def check_step_memory(shape: StepShape, device: torch.device, processes: int, advice: str) -> float:
    """Raise :class:`OutOfMemory` (exit 4) when a step of ``shape`` on each of ``processes`` cannot fit.

    ``processes`` is how many ranks share this machine's RAM (CPU) — each GPU has its own memory. Returns the
    estimate in bytes.
    """
    need = estimate_peak_bytes(shape)
    have, source = available_bytes(device)
    sharing = processes if device.type == "cpu" else 1
    if need * sharing > have:
        ranks = f" × {sharing} processes" if sharing > 1 else ""
        raise OutOfMemory(f"a step needs about {need / GB:.1f} GB{ranks} but {source} is {have / GB:.1f} GB; {advice}")
    return need
