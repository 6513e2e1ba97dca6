"""Fine-tuning crops: the augmentations keep left and right apart unless asked to mirror them."""

import torch

from voco_backend.segmentation.training_data import Case, sample_batch, train_transforms

SIDE = 80


def ramp_case() -> Case:
    """An image whose intensity rises from the right (x = 0 in RAS) to the left, with a central label."""
    image = torch.linspace(0.0, 1.0, SIDE).view(1, SIDE, 1, 1).expand(1, SIDE, SIDE, SIDE).contiguous()
    label = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.uint8)
    label[:, 20:60, 20:60, 20:60] = 1
    return Case("ramp", image, label)


def left_right_kept(mirror: bool, steps: int = 40) -> list[bool]:
    """Per crop of ``steps`` batches: does intensity still rise along x (left stays left)?"""
    transforms = train_transforms((32, 32, 32), 2, mirror_left_right=mirror)
    kept = []
    for step in range(steps):
        image, _ = sample_batch(transforms, [ramp_case()], seed=0, step=step)
        kept += [bool(crop[0, -1].mean() > crop[0, 0].mean()) for crop in image]
    return kept


def test_default_augmentation_never_swaps_left_and_right():
    assert all(left_right_kept(mirror=False))


def test_mirror_left_right_restores_the_official_flips():
    kept = left_right_kept(mirror=True)
    assert not all(kept), "no crop was mirrored or rotated in the axial plane in 80 crops"
    assert any(kept)


def two_class_case() -> Case:
    """A large class 1 filling half the volume and a small class 2 (a 4³ block) in a far corner."""
    image = torch.rand(1, SIDE, SIDE, SIDE)
    label = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.uint8)
    label[:, :40] = 1
    label[:, 72:76, 72:76, 72:76] = 2
    return Case("two", image, label)


def share_of_crops_with_small_class(crops: str, steps: int = 30) -> float:
    transforms = train_transforms((16, 16, 16), 2, num_classes=3, crops=crops)
    case = two_class_case()
    seen = [bool((label == 2).any()) for step in range(steps) for label in sample_batch(transforms, [case], 0, step)[1]]
    return sum(seen) / len(seen)


def test_class_balanced_crops_show_a_small_class_as_often_as_the_others():
    # Each of background, class 1 and class 2 centres a third of the crops: the 64-voxel class is in ~1/3 of them,
    # where the official 9:1 foreground/background centres follow volume and almost never find it.
    assert share_of_crops_with_small_class("classes") >= 0.2
    assert share_of_crops_with_small_class("posneg") < 0.1
