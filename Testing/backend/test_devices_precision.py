"""Segment's ``--precision auto``: bf16 only where the hardware computes it (emulated bf16 is 14x slower)."""

from __future__ import annotations

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


def test_the_probe_asks_onednn_and_answers_a_bool():
    assert devices.cpu_has_native_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
