"""Per-crop augmentation of VoCo (VOCO.md §3), seedable: the crop dataset seeds one per sample from its generator."""

from __future__ import annotations

import torch
from monai.transforms import Compose, RandFlip, RandRotate90, RandShiftIntensity
from monai.utils import convert_to_tensor


class CropAugment:
    """Flip each axis (p 0.2), rotate 90° in the axial plane (p 0.2), shift intensity ±0.1 (p 0.5; 10k p 0.1).

    Every crop of a batch draws its own augmentation, after cropping and after the targets are computed.

    Args:
        seed: seed of the random state; ``None`` seeds from the operating system.
        shift_prob: probability of the intensity shift (TPAMI code 0.5, CVPR/10k code 0.1).
    """

    def __init__(self, seed: int | None = None, shift_prob: float = 0.5) -> None:
        self._transforms = Compose(
            [
                RandFlip(prob=0.2, spatial_axis=0),
                RandFlip(prob=0.2, spatial_axis=1),
                RandFlip(prob=0.2, spatial_axis=2),
                RandRotate90(prob=0.2, spatial_axes=(0, 1)),
                RandShiftIntensity(offsets=0.1, prob=shift_prob),
            ]
        )
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None) -> None:
        """Reseed every transform (deterministically from ``seed`` unless it is ``None``)."""
        self._transforms.set_random_state(seed=seed)

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """Augment each crop of (N, C, X, Y, Z) independently; X == Y, so the shape is kept."""
        return torch.stack([convert_to_tensor(self._transforms(crop), track_meta=False) for crop in crops])
