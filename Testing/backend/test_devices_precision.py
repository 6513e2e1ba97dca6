"""``--precision auto`` and training ``--amp`` on a CPU: bf16 only where the hardware computes it (emulated bf16 is
14x slower)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from voco_backend import devices


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.resolve_precision("auto", torch.device("cpu")) is expected


def test_explicit_precisions_are_kept_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert devices.resolve_precision("bf16", cpu) is torch.bfloat16
    assert devices.resolve_precision("fp16", cpu) is torch.float16
    assert devices.resolve_precision("fp32", cpu) is None


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as the Linux kernel reads them (CPUID), from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("/proc/cpuinfo has no flags line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo is Linux's")
def test_the_probe_agrees_with_the_kernels_cpu_flags():
    """bf16 instructions (AVX512-BF16 or AMX), not oneDNN's answer, which is also yes where it emulates bf16."""
    flags = _cpu_flags()
    assert devices.cpu_has_native_bf16() is bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_training_on_a_cpu_autocasts_to_bf16_only_with_bf16_instructions(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.training_precision(torch.device("cpu"), amp=True) == (expected, False)
    assert devices.training_precision(torch.device("cpu"), amp=False) == (None, False)
