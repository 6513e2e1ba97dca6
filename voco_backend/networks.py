"""MONAI SwinUNETR-v2 networks of the VoCo family and the encoder path used for pretraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import PatchMergingV2
from torch import nn

from voco_backend.attention import use_sdpa_attention
from voco_backend.convolutions import use_shallow_fp32_convolutions
from voco_backend.errors import UsageError

FEATURE_SIZES: dict[str, int] = {"tiny": 12, "B": 48, "L": 96, "H": 192}
ENCODER_PREFIXES: tuple[str, ...] = ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10")

MERGE_MONAI13 = "monai1.3"
MERGE_MONAI15 = "monai1.5"
MERGE_ORDERS: tuple[str, ...] = (MERGE_MONAI13, MERGE_MONAI15)
# MONAI 1.3.0's PatchMerging concatenation order of a 2x2x2 block, (D, H, W) offsets of the (B, D, H, W, C)
# tensor, repeated entries included: the official VoCo/VoComni weights were trained with it (VOCO.md §7).
MONAI13_OFFSETS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (1, 0, 1),
    (0, 1, 0),
    (0, 0, 1),
    (1, 1, 1),
)


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether the state-dict ``key`` is one of ``prefixes`` or lies below one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def in_encoder(key: str) -> bool:
    """Whether a SwinUNETR-v2 state-dict ``key`` is on the encoder path (what a VoCo encoder file holds)."""
    return under(key, ENCODER_PREFIXES)


class PatchMergingMonai13(PatchMergingV2):
    """MONAI 1.3.0's ``PatchMerging``: the function the official VoCo weights compute.

    MONAI 1.5 changed the voxel order of ``PatchMerging`` (MONAI #8284 / PR #8285); keys and shapes are the
    same, so only a subclass restoring the old order reproduces the authors' networks.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge each 2x2x2 block of (B, D, H, W, C) into (B, D/2, H/2, W/2, 2C)."""
        if x.dim() != 5:
            return super().forward(x)
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in MONAI13_OFFSETS], -1)
        return self.reduction(self.norm(x))


def check_merge_order(merge_order: str) -> str:
    """``merge_order`` itself, or a one-line error naming the allowed values."""
    if merge_order not in MERGE_ORDERS:
        raise UsageError(f"field 'merge_order' must be one of {', '.join(MERGE_ORDERS)}, got {merge_order!r}")
    return merge_order


def feature_size_of(model_size: str) -> int:
    """Feature size of a model size name (``tiny`` 12, ``B`` 48, ``L`` 96, ``H`` 192)."""
    if model_size not in FEATURE_SIZES:
        raise UsageError(f"field 'model_size' must be one of {', '.join(FEATURE_SIZES)}, got {model_size!r}")
    return FEATURE_SIZES[model_size]


def build_swinunetr(
    model_size: str,
    out_channels: int,
    in_channels: int = 1,
    *,
    gradient_checkpointing: bool = False,
    flash_attention: bool = False,
    merge_order: str = MERGE_MONAI13,
    sdpa_attention: bool = True,
) -> SwinUNETR:
    """The segmentation network: SwinUNETR-v2 with patch-merging downsampling, as VoCo uses it.

    ``merge_order`` ``monai1.3`` (default) is the network the official weights were trained in; ``monai1.5``
    is MONAI >= 1.5's own order, which models made by earlier versions of this program were trained in.
    ``sdpa_attention`` (default) runs the window attention through PyTorch's fused kernel in training too
    (:mod:`voco_backend.attention`); ``False`` keeps MONAI's attention (then ``flash_attention`` applies).
    """
    downsample = PatchMergingMonai13 if check_merge_order(merge_order) == MERGE_MONAI13 else "merging"
    net = SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size_of(model_size),
        use_v2=True,
        downsample=downsample,
        use_checkpoint=gradient_checkpointing,
        use_flash_attention=flash_attention,
    )
    if sdpa_attention:
        use_sdpa_attention(net)
    use_shallow_fp32_convolutions(net)
    return net


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """On a CPU, hold the network's 3-D convolution weights channels-last (NDHWC), in place; returns whether it did.

    oneDNN's 3-D convolutions run faster forward and backward in that layout than in PyTorch's default NCDHW
    (a 3³ convolution of two 64³ crops of 12-24 channels: 2-3× in a profiling run; a whole tiny fine-tuning
    step: 0.76×, ``benchmarks/finetune_step.py``, rows ``finetune`` and ``finetune+ncdhw``). Values, names and
    shapes are unchanged (a state dict saved from it loads anywhere); only summation order moves, within fp32
    rounding. On CUDA the layout is left as it is (not measured there). Fine-tuning and segment use it;
    pretraining does not (no gain for its step, ``benchmarks/pretrain_throughput.py``).
    """
    if device.type != "cpu":
        return False
    model.to(memory_format=torch.channels_last_3d)
    return True


class SwinEncoder(nn.Module):
    """The encoder path of SwinUNETR-v2 (``swinViT`` and ``encoder{1,2,3,4,10}``) giving a 24·fs embedding.

    Submodule names equal SwinUNETR's, so ``state_dict()`` is exactly the official VoCo 145-key layout.
    The embedding concatenates global-average-pooled enc0, enc1, enc2, enc3 and dec4 (hidden state 3 is not
    used for SSL).
    """

    def __init__(
        self,
        model_size: str,
        in_channels: int = 1,
        gradient_checkpointing: bool = False,
        merge_order: str = MERGE_MONAI13,
        sdpa_attention: bool = True,
    ) -> None:
        super().__init__()
        full = build_swinunetr(
            model_size,
            out_channels=1,
            in_channels=in_channels,
            gradient_checkpointing=gradient_checkpointing,
            merge_order=merge_order,
            sdpa_attention=sdpa_attention,
        )
        self.feature_size = feature_size_of(model_size)
        self.merge_order = merge_order
        self.normalize = full.normalize
        for name in ENCODER_PREFIXES:
            self.add_module(name, getattr(full, name))

    @property
    def embedding_dim(self) -> int:
        """Width of :meth:`forward`'s output: 24·feature_size."""
        return 24 * self.feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map crops (N, C, X, Y, Z), sides multiples of 32, to embeddings (N, 24·fs)."""
        hidden = self.swinViT(x, self.normalize)
        features = (
            self.encoder1(x),
            self.encoder2(hidden[0]),
            self.encoder3(hidden[1]),
            self.encoder4(hidden[2]),
            self.encoder10(hidden[4]),
        )
        return torch.cat([f.mean(dim=(2, 3, 4)) for f in features], dim=1)
