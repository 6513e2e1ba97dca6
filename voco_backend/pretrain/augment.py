"""Per-crop augmentation of VoCo (VOCO.md §3), seedable and resumable from a checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np
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

    def state(self) -> dict[str, Any]:
        """The full random state as plain Python types, loadable with ``torch.load(weights_only=True)``."""
        return {"transforms": [_random_state_to_dict(t.R) for t in self._transforms.transforms]}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a random state captured by :meth:`state`."""
        saved = state["transforms"]
        if len(saved) != len(self._transforms.transforms):
            raise ValueError(
                f"augmentation state holds {len(saved)} transforms, expected {len(self._transforms.transforms)}"
            )
        for transform, entry in zip(self._transforms.transforms, saved, strict=True):
            transform.R.set_state(_random_state_from_dict(entry))


def _random_state_to_dict(rng: np.random.RandomState) -> dict[str, Any]:
    """A numpy legacy ``RandomState`` state as a pickle-free dict."""
    name, keys, pos, has_gauss, cached_gaussian = rng.get_state(legacy=True)
    return {
        "name": str(name),
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _random_state_from_dict(entry: dict[str, Any]) -> tuple[str, np.ndarray, int, int, float]:
    """Inverse of :func:`_random_state_to_dict`, in the form ``RandomState.set_state`` takes."""
    return (
        entry["name"],
        np.asarray(entry["keys"], dtype=np.uint32),
        int(entry["pos"]),
        int(entry["has_gauss"]),
        float(entry["cached_gaussian"]),
    )
