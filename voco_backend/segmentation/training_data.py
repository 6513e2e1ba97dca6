"""Labelled cases for fine-tuning: checked, mapped to class indices, preprocessed once and kept in memory.

Few-shot runs hold a handful of volumes, so the deterministic output of the recipe is cached in memory and only
the random part (class-balanced or positive/negative crops and the VoCo augmentations) runs per step, seeded by
(seed, step) so that a resumed run draws exactly what the uninterrupted one would have drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import (
    BorderPadd,
    Compose,
    Lambdad,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    Transform,
)

from voco_backend.cancel import CancelToken
from voco_backend.data.io import IMAGE_SUFFIXES, read_image
from voco_backend.data.recipe import Recipe
from voco_backend.segmentation.labels import SegmentClass, label_on_image_grid, to_class_indices
from voco_backend.segmentation.preprocess import LABEL_KEY, preprocess

KEYS = ("image", LABEL_KEY)
# Positive:negative crop centres (shared/VOCO.md §8, the official fine-tuning recipe).
POS_NEG = (9, 1)
CROPS = ("classes", "posneg")
AUGMENTATIONS = ("voco", "nnunet")
# nnU-Net's spatial augmentation cuts a crop this much larger than the ROI and resamples the ROI out of it, so a
# rotated or zoomed-out crop holds image, not padding, up to its corners (30 degrees about one axis and x1.4
# need 1.4·(cos 30° + sin 30°) = 1.9).
AFFINE_CONTEXT = 2.0
# Windowed intensities lie in [0, 1]: the margin padded round a case gets a value below them, so that crop centres
# are drawn from the case alone (as without the margin), and becomes 0 (the window's low end) once cut out.
OUTSIDE = -1.0


@dataclasses.dataclass
class LabelledImage:
    """An image and its label on the image's exact grid, as read from files."""

    name: str
    image: sitk.Image
    label: sitk.Image
    label_path: str


@dataclasses.dataclass
class Case:
    """A preprocessed case: (1, X, Y, Z) image in [0, 1] and class-index label on the same grid."""

    name: str
    image: torch.Tensor
    label: torch.Tensor


def case_name(path: str | Path) -> str:
    """A file's name without its image extension (a DICOM folder's name)."""
    name = Path(path).name
    for suffix in sorted((*IMAGE_SUFFIXES, ".seg.nrrd"), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_labelled(images: Sequence[str], labels: Sequence[str], cancel: CancelToken) -> list[LabelledImage]:
    """Read image/label pairs; each label is checked against its image's physical grid."""
    pairs = []
    for image_path, label_path in zip(images, labels, strict=True):
        cancel.check()
        image = read_image(image_path)
        label = label_on_image_grid(read_image(label_path), image, label_path)
        pairs.append(LabelledImage(case_name(image_path), image, label, str(label_path)))
    return pairs


def build_cases(
    pairs: Sequence[LabelledImage], classes: Sequence[SegmentClass], recipe: Recipe, cancel: CancelToken
) -> list[Case]:
    """Map each label to class indices (checking its values) and apply the recipe."""
    cases = []
    for pair in pairs:
        cancel.check()
        indices = to_class_indices(sitk.GetArrayViewFromImage(pair.label), classes, pair.label_path)
        data = preprocess(recipe, pair.image, indices)
        cases.append(Case(pair.name, data["image"].as_tensor(), data[LABEL_KEY].as_tensor().to(torch.uint8)))
    return cases


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Hold back ``int(n · val_fraction)`` cases (a seeded choice) for validation; none if that is 0."""
    held = int(len(cases) * val_fraction)
    if held == 0:
        return cases, []
    order = np.random.default_rng(seed).permutation(len(cases))
    val = sorted(order[:held])
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]


def train_transforms(
    roi: Sequence[int],
    samples: int,
    mirror_left_right: bool = False,
    num_classes: int = 2,
    crops: str = "classes",
    augment: str = "voco",
) -> Compose:
    """Crops of ``roi`` and their augmentations: ``augment`` ``voco`` (the official fine-tuning set: flips, rot90,
    intensity scale/shift) or ``nnunet`` (nnU-Net's default set, from MONAI transforms: see :func:`_nnunet_augment`).

    ``crops="classes"`` centres each crop on a voxel of a class drawn uniformly from the ``num_classes`` (background
    included; a class absent from a case is skipped), so a small class is seen as often as a large one;
    ``"posneg"`` is the official recipe's 9:1 foreground/background centres, which follow the classes' volumes.

    The official recipe flips every axis and rotates in the axial plane; both can turn a left structure into a
    right one, which teaches a network with lateral classes (left/right lung, kidney) to confuse them. By
    default flips and rotations therefore keep the left-right (RAS x) axis: flips along y and z, rotations in
    the y-z plane. ``mirror_left_right`` restores the official set.
    """
    keys = list(KEYS)
    flip_axes = (0, 1, 2) if mirror_left_right else (1, 2)
    if augment == "nnunet":
        context = [math.ceil(r * AFFINE_CONTEXT / 2) * 2 for r in roi]
        margin = [(c - r) // 2 for c, r in zip(context, roi, strict=True)]
        return Compose(
            [
                # A margin of OUTSIDE round the case: the larger crop fits wherever a crop of roi could be centred,
                # and the centres are drawn from the case's voxels alone, as they are without the margin.
                BorderPadd(keys="image", spatial_border=margin, value=OUTSIDE),
                BorderPadd(keys=LABEL_KEY, spatial_border=margin, value=0),
                _crop(crops, keys, context, samples, num_classes, inside_only=True),
                Lambdad(keys="image", func=_outside_as_low_end),
                *_nnunet_augment(roi, flip_axes),
            ]
        )
    return Compose(
        [
            _crop(crops, keys, roi, samples, num_classes),
            *(RandFlipd(keys=keys, prob=0.2, spatial_axis=axis) for axis in flip_axes),
            RandRotate90d(keys=keys, prob=0.2, max_k=3, spatial_axes=(0, 1) if mirror_left_right else (1, 2)),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.1),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    )


def _crop(
    crops: str,
    keys: list[str],
    size: Sequence[int],
    samples: int,
    num_classes: int,
    inside_only: bool = False,
) -> Transform:
    """The crop-centre sampler of ``crops``; ``inside_only``: no centre in the OUTSIDE margin round the case.

    ``posneg`` centres its negatives where the image is above 0 (the window's low end) in any case.
    """
    if crops == "classes":
        return RandCropByLabelClassesd(
            keys=keys,
            label_key=LABEL_KEY,
            spatial_size=list(size),
            num_classes=num_classes,
            num_samples=samples,
            warn=False,
            **({"image_key": "image", "image_threshold": OUTSIDE / 2} if inside_only else {}),
        )
    return RandCropByPosNegLabeld(
        keys=keys,
        label_key=LABEL_KEY,
        spatial_size=list(size),
        pos=POS_NEG[0],
        neg=POS_NEG[1],
        num_samples=samples,
        image_key="image",
        image_threshold=0,
    )


def _outside_as_low_end(image: torch.Tensor) -> torch.Tensor:
    """The OUTSIDE margin in a crop as the window's low end, what the recipe and the resampling pad with."""
    return image.clamp(min=0.0)


def _nnunet_augment(roi: Sequence[int], flip_axes: Sequence[int]) -> list[Transform]:
    """nnU-Net v2's default training augmentation, its probabilities and ranges, in MONAI transforms.

    Intensities here are a window mapped to [0, 1] where nnU-Net's are z-scores; about 5 standard deviations of
    the foreground span the window (--window-from-labels: its 0.5–99.5 percentiles), so the noise's standard
    deviation is nnU-Net's (up to sqrt(0.1)) divided by 5. Two differences remain: MONAI scales each axis by its
    own factor, nnU-Net all three by one; rotation and scaling are one affine applied with nnU-Net's chance of
    either (1 − 0.8²).
    """
    keys = list(KEYS)
    return [
        RandAffined(
            keys=keys,
            spatial_size=list(roi),
            prob=0.36,
            rotate_range=[math.pi / 6] * 3,
            scale_range=[(-0.3, 0.4)] * 3,
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        ),
        RandGaussianNoised(keys="image", prob=0.1, std=0.06),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
        RandAdjustContrastd(keys="image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        *(RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in flip_axes),
    ]


def sample_batch(transforms: Compose, cases: Sequence[Case], seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step``: crops of one case, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    case = cases[int(rng.integers(len(cases)))]
    transforms.set_random_state(seed=int(rng.integers(2**31)))
    samples = transforms({"image": case.image, LABEL_KEY: case.label})
    image = torch.stack([torch.as_tensor(s["image"]) for s in samples])
    label = torch.stack([torch.as_tensor(s[LABEL_KEY]) for s in samples])
    return image.float(), label.long()
