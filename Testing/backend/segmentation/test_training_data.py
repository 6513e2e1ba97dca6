"""Fine-tuning crops: the augmentations keep left and right apart unless asked to mirror them, every label stays
on its image, and small classes are seen; for the official (voco) set and nnU-Net's."""

import pytest
import torch

from voco_backend.segmentation.training_data import AUGMENTATIONS, Case, sample_batch, train_transforms

SIDE = 80


def ramp_case() -> Case:
    """An image whose intensity rises from the right (x = 0 in RAS) to the left, with a central label."""
    image = torch.linspace(0.2, 1.0, SIDE).view(1, SIDE, 1, 1).expand(1, SIDE, SIDE, SIDE).contiguous()
    label = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.uint8)
    label[:, 20:60, 20:60, 20:60] = 1
    return Case("ramp", image, label)


def left_right_kept(mirror: bool, steps: int = 40, augment: str = "voco") -> list[bool]:
    """Per crop of ``steps`` batches: does intensity still rise along x (left stays left)?

    Measured as the correlation of intensity with x over the crop's voxels of the case (above 0.1): a rotated or
    zoomed-out crop also shows the window's low end (0) beyond the case's edge.
    """
    transforms = train_transforms((32, 32, 32), 2, mirror_left_right=mirror, augment=augment)
    x = torch.arange(32.0).view(32, 1, 1).expand(32, 32, 32)
    kept = []
    for step in range(steps):
        image, _ = sample_batch(transforms, [ramp_case()], seed=0, step=step)
        for crop in image:
            inside = crop[0] > 0.1
            kept.append(bool(torch.corrcoef(torch.stack([x[inside], crop[0][inside]]))[0, 1] > 0))
    return kept


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_default_augmentation_never_swaps_left_and_right(augment):
    # nnU-Net's rotations (up to 30 degrees) tilt the x axis but never turn it round.
    assert all(left_right_kept(mirror=False, augment=augment))


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_mirror_left_right_restores_the_official_flips(augment):
    kept = left_right_kept(mirror=True, augment=augment)
    assert not all(kept), "no crop was mirrored or rotated in the axial plane in 80 crops"
    assert any(kept)


def two_class_case() -> Case:
    """A large class 1 filling half the volume and a small class 2 (a 4³ block) in a far corner."""
    image = torch.rand(1, SIDE, SIDE, SIDE)
    label = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.uint8)
    label[:, :40] = 1
    label[:, 72:76, 72:76, 72:76] = 2
    return Case("two", image, label)


def share_of_crops_with_small_class(crops: str, steps: int = 30, augment: str = "voco") -> float:
    transforms = train_transforms((16, 16, 16), 2, num_classes=3, crops=crops, augment=augment)
    case = two_class_case()
    seen = [bool((label == 2).any()) for step in range(steps) for label in sample_batch(transforms, [case], 0, step)[1]]
    return sum(seen) / len(seen)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_class_balanced_crops_show_a_small_class_as_often_as_the_others(augment):
    # Each of background, class 1 and class 2 centres a third of the crops: the 64-voxel class is in ~1/3 of them,
    # where the official 9:1 foreground/background centres follow volume and almost never find it. nnU-Net's set
    # cuts a larger crop out of a padded case first: its centres must fall as a crop of the ROI's would.
    assert share_of_crops_with_small_class("classes", augment=augment) >= 0.2
    assert share_of_crops_with_small_class("posneg", augment=augment) < 0.1


def sphere_case() -> Case:
    """A bright ball (0.9) labelled 1 off-centre in a dim case (0.2): where the label is, the image is bright."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(SIDE, dtype=torch.float32),) * 3, indexing="ij"))
    inside = ((grid - torch.tensor([30.0, 45.0, 50.0]).view(3, 1, 1, 1)) ** 2).sum(0) < 12.0**2
    image = torch.where(inside, 0.9, 0.2)[None]
    return Case("ball", image, inside[None].to(torch.uint8))


def test_nnunet_augmentation_keeps_every_label_on_its_image():
    """Rotation, scaling and the intensity transforms move image and label together; labels stay whole values.

    In each crop the bright voxels (above the midpoint of the ball's and the rest's mean) are the labelled ones:
    a label shifted by a few voxels against its image would cut that Dice.
    """
    transforms = train_transforms((32, 32, 32), 2, augment="nnunet")
    case, agreement = sphere_case(), []
    for step in range(40):
        images, labels = sample_batch(transforms, [case], seed=1, step=step)
        assert images.shape == labels.shape == (2, 1, 32, 32, 32)
        assert set(labels.unique().tolist()) <= {0, 1}
        for image, label in zip(images, labels, strict=True):
            ball = label.bool()
            if ball.sum() > 500 and (~ball).sum() > 500:
                bright = image > (image[ball].mean() + image[~ball].mean()) / 2
                agreement.append(float(2 * (bright & ball).sum() / (bright.sum() + ball.sum())))
    assert len(agreement) >= 20
    assert min(agreement) > 0.85, sorted(agreement)[:5]


def test_nnunet_augmentation_rotates_and_rescales_some_crops():
    """The affine part acts: some label crops differ from every crop an axis-aligned cut of the case could give."""
    transforms = train_transforms((32, 32, 32), 1, augment="nnunet")
    case = sphere_case()
    volumes = {int(sample_batch(transforms, [case], seed=2, step=step)[1].sum()) for step in range(30)}
    # An axis-aligned crop holding the whole ball shows it at its own volume; a scaled one at another.
    whole = int(case.label.sum())
    assert any(abs(v - whole) > 0.1 * whole for v in volumes if v > whole / 2)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_a_step_draws_the_same_batch_again(augment):
    """Resume exactness: a step's batch is a function of (seed, step) alone."""
    transforms = train_transforms((32, 32, 32), 2, augment=augment)
    case = sphere_case()
    first = sample_batch(transforms, [case], seed=3, step=7)
    sample_batch(transforms, [case], seed=3, step=8)
    again = sample_batch(train_transforms((32, 32, 32), 2, augment=augment), [case], seed=3, step=7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
