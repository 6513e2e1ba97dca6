"""bf16 training steps on a CPU: the shallow convolutions that oneDNN's bf16 weight gradient gets wrong run in fp32.

Against the real kernel: PyTorch's own oneDNN convolution under CPU bf16 autocast, in the blocks of the network
that fine-tuning and pretraining build (``encoder10`` sees the 2³ map at 1/32 of a 64³ crop). The reference is
the same block's fp32 gradient. Without :class:`ShallowFp32Conv3d` that gradient is 90 % to inf away here (the
kernel's error, measured on this project's AMD EPYC with AVX512-BF16); with it, it is the fp32 one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from voco_backend.convolutions import SHALLOW_DEPTH, ShallowFp32Conv3d
from voco_backend.networks import SwinEncoder, build_swinunetr


def _weight_gradients(block: nn.Module, x: torch.Tensor, g: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    block.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = block(x)
    out.float().backward(g)
    return {name: p.grad.clone() for name, p in block.named_parameters() if p.dim() == 5}


@pytest.mark.parametrize("network", ["finetune", "pretrain"])
def test_the_bottleneck_of_a_64_crop_gets_its_fp32_weight_gradients_under_bf16(network):
    torch.manual_seed(0)
    net = build_swinunetr("tiny", 2) if network == "finetune" else SwinEncoder("tiny")
    block = net.encoder10  # 16·fs channels at 1/32 of the crop
    x, g = torch.randn(2, 192, 2, 2, 2), torch.randn(2, 192, 2, 2, 2)
    reference = _weight_gradients(block, x, g, bf16=False)
    assert len(reference) == 2  # its two 3³ convolutions
    for _ in range(3):  # the kernel's error is not the same every call
        got = _weight_gradients(block, x, g, bf16=True)
        for name, grad in reference.items():
            assert torch.isfinite(got[name]).all(), name
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_every_convolution_of_the_networks_is_guarded_and_keeps_its_state():
    net = build_swinunetr("tiny", 2)
    plain = nn.Conv3d(4, 4, 3)
    assert not any(type(m) is nn.Conv3d for m in net.modules())
    assert sum(type(m) is ShallowFp32Conv3d for m in net.modules()) > 20
    assert not any(type(m) is nn.Conv3d for m in SwinEncoder("tiny").modules())
    guarded = ShallowFp32Conv3d(4, 4, 3)
    assert guarded.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize(
    ("depth", "grad", "kernel", "dtype"),
    [
        (SHALLOW_DEPTH, True, 3, torch.float32),  # the case the kernel gets wrong: fp32
        (SHALLOW_DEPTH + 1, True, 3, torch.bfloat16),  # deeper: bf16 as before
        (SHALLOW_DEPTH, False, 3, torch.bfloat16),  # inference (segment): its forward is right, bf16 stays
        (SHALLOW_DEPTH, True, 1, torch.bfloat16),  # a 1³ kernel is right: bf16 stays
    ],
)
def test_only_a_shallow_training_convolution_leaves_bf16(depth, grad, kernel, dtype):
    conv = ShallowFp32Conv3d(8, 8, kernel, padding=kernel // 2)
    x = torch.randn(1, 8, depth, 4, 4)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == dtype
    assert out.shape == (1, 8, depth, 4, 4)
