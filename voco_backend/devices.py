"""Where a command runs and in which precision: the device choice, and the autocast dtype of training and inference.

Every command takes ``--device auto|cpu|cuda`` (:data:`DEVICES`, :func:`resolve_device`); training steps use
:func:`training_precision` (``--amp``), inference :func:`resolve_precision` (``--precision``); both enter
:func:`autocast`.
"""

from __future__ import annotations

import contextlib

import torch

from voco_backend.errors import UsageError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# `auto` on a CPU is bf16 only where the CPU computes bf16 natively (AVX512-BF16 or AMX): there
# benchmarks/segment_speed.py measured bf16 autocast 14.0 s vs fp32 16.5 s end to end (tiny chest model, lung2,
# 27 windows), 99.95% of voxels unchanged, Dice >= 0.989 on every structure above 0.1% of the volume. On an
# AVX2-only CPU bf16 is emulated: one 64^3 window of the tiny network took 72 s in bf16 against 5.2 s in fp32,
# so `auto` is fp32 there. On CUDA `auto` is bf16 (fp16 where bf16 is unsupported).


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a one-line usage error."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("field 'device' is cuda but no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    return torch.device("cuda", local_rank)


def cuda_half_dtype() -> torch.dtype:
    """The half precision of this GPU: bf16 where supported, else fp16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def training_precision(device: torch.device, amp: bool) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype of a training step and whether the loss needs scaling (fp16); ``None`` = fp32.

    With ``amp``: on CUDA bf16 where supported, else fp16 with loss scaling; on a CPU bf16 where the CPU computes
    it natively (:func:`cpu_has_native_bf16`), else fp32. On this project's AMX CPU bf16 autocast measured
    (benchmarks/pretrain_throughput.py, finetune_step.py) a B pretraining step 20.2 s against 33.0 s in fp32 and
    a B fine-tuning step (2 crops of 96³) 28.2 s against 47.9 s, at 0.63-0.66x the peak RSS; emulated bf16 is
    many times slower than fp32 (see :data:`PRECISIONS`' note).
    """
    if not amp:
        return None, False
    if device.type == "cuda":
        dtype = cuda_half_dtype()
        return dtype, dtype == torch.float16
    return (torch.bfloat16 if cpu_has_native_bf16() else None), False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), as PyTorch's CPU probe reads them.

    Not oneDNN's ``_is_mkldnn_bf16_supported``: that is also true on AVX-512 CPUs without bf16 instructions,
    where oneDNN emulates bf16. False where the probe cannot be asked.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The inference autocast dtype for ``precision`` (one of :data:`PRECISIONS`) on ``device`` (``None`` = fp32)."""
    if precision == "auto":
        if device.type == "cuda":
            return cuda_half_dtype()
        precision = "bf16" if cpu_has_native_bf16() else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``, or nothing for fp32 (``None``)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
