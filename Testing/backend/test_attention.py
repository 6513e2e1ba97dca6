"""SDPA window attention: the same function and gradients as MONAI's own WindowAttention, same state dict."""

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from voco_backend.attention import NARROW_HEAD, SDPAWindowAttention, use_sdpa_attention
from voco_backend.networks import build_swinunetr

WINDOW = (7, 7, 7)


def _grads(module: torch.nn.Module, inputs: torch.Tensor, call) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Output, input gradient and parameter gradients of a weighted sum of ``call(module, x)``."""
    module.zero_grad(set_to_none=True)
    x = inputs.clone().requires_grad_()
    out = call(module, x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    return out.detach(), x.grad, {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def _close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float, name: str) -> None:
    """fp32 agreement relative to the tensor's scale (a gradient summed over many tokens is large)."""
    scale = reference.abs().max().item()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=tolerance * scale, msg=name)


def _assert_same(reference: tuple, ours: tuple, tolerance: float) -> None:
    _close(ours[0], reference[0], tolerance, "output")
    _close(ours[1], reference[1], tolerance, "input gradient")
    assert ours[2].keys() == reference[2].keys()
    for name in reference[2]:
        _close(ours[2][name], reference[2][name], tolerance, name)


# Heads of 4 channels (a tiny model's) and of 16 (B's) take different products in backward (NARROW_HEAD).
@pytest.mark.parametrize("dim", [12, 48], ids=["head-width-4", "head-width-16"])
@pytest.mark.parametrize("shifted", [False, True], ids=["windows", "shifted-windows"])
def test_window_attention_equals_monai_forward_and_backward(shifted, dim):
    torch.manual_seed(0)
    heads = 3
    assert (dim // heads < NARROW_HEAD) == (dim == 12)
    reference = WindowAttention(dim, heads, WINDOW, qkv_bias=True)
    with torch.no_grad():  # a trained-looking bias (MONAI initialises it near zero)
        reference.relative_position_bias_table.normal_()
    ours = copy.deepcopy(reference)
    assert use_sdpa_attention(ours) == 1 and type(ours) is SDPAWindowAttention
    # MONAI's own shifted-window mask of a 14³ feature map: 8 windows of 343 tokens, shift 3.
    mask = compute_mask([14, 14, 14], WINDOW, (3, 3, 3), torch.device("cpu")) if shifted else None
    x = torch.randn(2 * 8, 343, dim)  # 2 crops × 8 windows

    def call(module, inputs):
        return module(inputs, mask)

    _assert_same(_grads(reference, x, call), _grads(ours, x, call), tolerance=1e-5)


# In fp32, rounding through the whole network's norms reaches ~1e-3 of a few gradients' scale (summation order);
# in float64 the two agree to rounding, which shows it is the same function. fp32 is checked per block above.
def test_whole_swinunetr_forward_backward_equals_monai_and_keeps_the_state_dict():
    dtype, tolerance = torch.float64, 1e-9
    torch.manual_seed(0)
    plain = build_swinunetr("tiny", out_channels=2, sdpa_attention=False).to(dtype)
    ours = build_swinunetr("tiny", out_channels=2).to(dtype)
    ours.load_state_dict(plain.state_dict())  # strict: same keys, same shapes
    assert list(ours.state_dict()) == list(SwinUNETR(1, 2, feature_size=12, use_v2=True).state_dict())
    assert sum(type(m) is SDPAWindowAttention for m in ours.modules()) == 8  # 2 blocks × 4 stages
    x = torch.randn(1, 1, 64, 64, 64, dtype=dtype)

    def call(module, inputs):
        return module(inputs)

    _assert_same(_grads(plain, x, call), _grads(ours, x, call), tolerance)


def test_attention_dropout_is_refused():
    module = WindowAttention(12, 3, WINDOW, attn_drop=0.1)
    with pytest.raises(ValueError, match="attn_drop"):
        use_sdpa_attention(module)


def _relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("shifted", [False, True], ids=["windows", "shifted-windows"])
def test_bf16_autocast_training_attention_is_as_close_to_fp32_as_monais_own(shifted):
    """Training on a CPU with bf16 instructions autocasts to bf16 (devices.training_precision).

    Our attention's output and gradients under bf16 autocast, against fp32, are within twice the error of MONAI's
    own attention under the same autocast (and within 3 %): the fused forward and the fp32 chunked backward add no
    error of their own beyond bf16's.
    """
    torch.manual_seed(0)
    dim, heads = 24, 3
    reference = WindowAttention(dim, heads, WINDOW, qkv_bias=True)
    with torch.no_grad():
        reference.relative_position_bias_table.normal_()
    ours = copy.deepcopy(reference)
    use_sdpa_attention(ours)
    mask = compute_mask([14, 14, 14], WINDOW, (3, 3, 3), torch.device("cpu")) if shifted else None
    x = torch.randn(2 * 8, 343, dim)

    def call(module, inputs):
        return module(inputs, mask)

    def call_bf16(module, inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(inputs, mask).float()

    def named(result: tuple) -> dict:
        return {"output": result[0], "input gradient": result[1], **result[2]}

    exact, monai_bf16, ours_bf16 = (
        named(_grads(module, x, how)) for module, how in ((reference, call), (reference, call_bf16), (ours, call_bf16))
    )
    for label, reference_value in exact.items():
        theirs = _relative_l2(monai_bf16[label], reference_value)
        mine = _relative_l2(ours_bf16[label], reference_value)
        assert mine <= max(2 * theirs, 1e-3) and mine < 0.03, (label, mine, theirs)
