"""Per-crop augmentation: the transforms of VOCO.md §3, independent per crop, seedable and resumable."""

from __future__ import annotations

import itertools

import torch

from voco_backend.pretrain.augment import CropAugment

SHAPE = (1, 4, 4, 3)


def _crops(count: int) -> torch.Tensor:
    """``count`` copies of one crop whose voxels all differ, so every geometric variant is distinct."""
    return torch.arange(float(torch.Size(SHAPE).numel())).reshape(SHAPE).expand(count, *SHAPE).clone()


def _variants(crop: torch.Tensor) -> list[torch.Tensor]:
    """All results of flipping any of the three axes and rotating by k·90° in the axial plane."""
    out = []
    for flips in itertools.product((False, True), repeat=3):
        dims = [axis + 1 for axis, flip in enumerate(flips) if flip]
        flipped = crop.flip(dims) if dims else crop
        out.extend(torch.rot90(flipped, k, dims=(1, 2)) for k in range(4))
    return out


def _explain(original: torch.Tensor, augmented: torch.Tensor) -> tuple[bool, float]:
    """(geometry unchanged, intensity shift) of an augmented crop; fails if no allowed augmentation fits."""
    for index, variant in enumerate(_variants(original)):
        shift = augmented - variant
        if torch.allclose(shift, shift.flatten()[0].expand_as(shift), atol=1e-5):
            geometric_identity = bool(torch.equal(variant, original))
            assert index == 0 or not geometric_identity
            return geometric_identity, shift.flatten()[0].item()
    raise AssertionError("the augmented crop is no flip/rot90 of the original plus a constant shift")


def test_every_crop_gets_its_own_allowed_augmentation() -> None:
    crops = _crops(300)
    augmented = CropAugment(seed=0)(crops)
    assert augmented.shape == crops.shape and augmented.dtype == crops.dtype
    assert type(augmented) is torch.Tensor
    explained = [_explain(crops[0], a) for a in augmented]
    shifts = torch.tensor([shift for _, shift in explained])
    assert shifts.abs().max() <= 0.1 + 1e-6
    assert 0.38 < (shifts != 0).float().mean() < 0.62  # p = 0.5
    unchanged = sum(identity for identity, _ in explained) / len(explained)
    assert 0.3 < unchanged < 0.55  # no flip and no rotation: 0.8⁴ ≈ 0.41


def test_same_seed_same_augmentation() -> None:
    crops = torch.randn(20, *SHAPE, generator=torch.Generator().manual_seed(0))
    first = CropAugment(seed=5)(crops)
    torch.testing.assert_close(CropAugment(seed=5)(crops), first)
    assert not torch.equal(CropAugment(seed=6)(crops), first)
    reseeded = CropAugment(seed=6)
    reseeded.set_random_state(5)
    torch.testing.assert_close(reseeded(crops), first)
