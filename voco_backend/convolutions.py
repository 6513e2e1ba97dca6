"""3-D convolutions that stay right under CPU bf16 autocast: the shallow ones run in fp32 in training.

On a CPU with bf16 instructions (an AMD EPYC with AVX512-BF16 here; PyTorch 2.13's oneDNN), a 3³ convolution's
weight gradient under bf16 autocast is wrong, at times by 10³⁰ or inf, whenever the input's depth (its first
spatial axis) is 2; its output and input gradient are right, and fp32 is right everywhere. Measured over depth,
height and width 1-8 at 24 and 192 channels: every depth-2 input wrong, every other right. In SwinUNETR that is
``encoder10`` at 1/32 of a 64³ crop (VoCo's pretraining crops, the tiny fine-tuning ROI): the garbage reaches
AdamW's second moment and freezes or NaNs that block. :func:`use_shallow_fp32_convolutions` swaps
:class:`ShallowFp32Conv3d` into a built network in place, as :func:`voco_backend.attention.use_sdpa_attention`
does for the attention.
"""

from __future__ import annotations

import torch
from torch import nn

# The input depth up to which a 3-D convolution of a CPU bf16 training step runs in fp32.
SHALLOW_DEPTH = 2


class ShallowFp32Conv3d(nn.Conv3d):
    """``nn.Conv3d``, in fp32 for a depth of at most :data:`SHALLOW_DEPTH` while a CPU bf16 step trains.

    The case needs a kernel deeper than 1, autograd recording and CPU autocast in bf16; at 2³ voxels the fp32
    convolution costs nothing. Anything else is ``nn.Conv3d`` unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, in fp32 for a shallow input of a CPU bf16 training step."""
        if (
            x.shape[2] <= SHALLOW_DEPTH
            and self.kernel_size[0] > 1
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def use_shallow_fp32_convolutions(model: nn.Module) -> int:
    """Turn every ``nn.Conv3d`` of ``model`` into :class:`ShallowFp32Conv3d`, in place; returns how many.

    Only the class changes: parameters, names and the function are the same, so weights load as before.
    """
    switched = 0
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = ShallowFp32Conv3d
            switched += 1
    return switched
