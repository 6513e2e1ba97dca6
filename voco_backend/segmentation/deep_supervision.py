"""Deep supervision for fine-tuning: 1×1×1 heads on SwinUNETR's coarser decoder outputs, in training only.

nnU-Net's form: each of the decoder's outputs at 1/2, 1/4 and 1/8 of the crop's side gets its own logits, its
loss is the run's loss against the label map downsampled (nearest) to that size, and the weights halve per level
and sum to one (so the loss keeps its scale and the learning rate its meaning). MONAI's ``DeepSupervisionLoss``
does the downsampling and the weighted sum.

The network is left as it is: forward hooks keep the decoder outputs while it trains, and the heads live beside
it, so ``model.pt`` is exactly a SwinUNETR-v2 state dict that ``segment`` and every other reader load; the heads
are saved only in ``checkpoint_last.pt``, for resuming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DeepSupervisionLoss
from torch import nn
from torch.nn.modules.loss import _Loss

# SwinUNETR's decoder blocks from fine to coarse: outputs at 1/2, 1/4, 1/8 of the input side, with 1, 2 and 4
# times the feature size in channels.
DECODERS = ("decoder2", "decoder3", "decoder4")


def level_weights(levels: int) -> list[float]:
    """The loss weights of the full-resolution output and ``levels`` coarser ones: halving, summing to one."""
    weights = [0.5**level for level in range(levels + 1)]
    return [w / sum(weights) for w in weights]


class DeepSupervision(nn.Module):
    """The heads of one SwinUNETR, and the hooks that keep its decoder outputs while it trains.

    Args:
        net: MONAI's SwinUNETR (its ``decoder2``-``decoder4`` are hooked).
        feature_size: its feature size.
        out_channels: its output channels (background included).
    """

    def __init__(self, net: nn.Module, feature_size: int, out_channels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Conv3d(feature_size * 2**level, out_channels, kernel_size=1) for level in range(len(DECODERS))
        )
        self._kept: dict[str, torch.Tensor] = {}
        for name in DECODERS:
            getattr(net, name).register_forward_hook(self._keeper(name))

    def _keeper(self, name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if module.training:  # not in validation or inference: nothing is held there
                self._kept[name] = output

        return keep

    def outputs(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """The network's logits, then the heads' logits of the forward that made them, fine to coarse."""
        kept, self._kept = self._kept, {}
        if set(kept) != set(DECODERS):
            raise RuntimeError("deep supervision needs the network's forward in training mode first")
        return [logits] + [head(kept[name]) for head, name in zip(self.heads, DECODERS, strict=True)]


def deep_supervision_loss(loss: _Loss) -> DeepSupervisionLoss:
    """``loss`` summed over the full-resolution output and the heads' outputs with :func:`level_weights`."""
    return DeepSupervisionLoss(loss, weights=level_weights(len(DECODERS)))
