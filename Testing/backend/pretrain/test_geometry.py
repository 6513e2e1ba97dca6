"""Crop geometry and overlap targets of VoCo (VOCO.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voco_backend.errors import UsageError
from voco_backend.pretrain.geometry import (
    CropGrid,
    base_boxes,
    extract_crops,
    overlap_targets,
    random_box,
    sample_centres,
)

TPAMI = CropGrid()


def test_recipes_have_the_published_geometry() -> None:
    assert (TPAMI.region_xy, TPAMI.depth, TPAMI.grid, TPAMI.crop, TPAMI.num_bases) == (192, 64, 3, 64, 9)
    ten_k = CropGrid(384, 96, 4, crop_resize=64)
    assert (ten_k.crop, ten_k.num_bases) == (96, 16)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"region_xy": 190}, "region_xy"),
        ({"region_xy": 96, "grid": 3}, "region_xy"),
        ({"depth": 48}, "depth"),
        ({"grid": 1, "region_xy": 64}, "grid"),
        ({"region_xy": 384, "depth": 96, "grid": 4, "crop_resize": 48}, "crop_resize"),
        ({"region_xy": 297, "depth": 96, "grid": 3, "crop_resize": 64}, "region_xy"),
    ],
)
def test_invalid_grid_names_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(UsageError, match=f"field '{field}'") as info:
        CropGrid(**kwargs)
    assert "\n" not in str(info.value)


def test_crop_resize_frees_the_crop_and_depth_from_the_encoder_constraints() -> None:
    grid = CropGrid(region_xy=150, depth=20, grid=3, crop_resize=64)
    assert grid.crop == 50


def test_base_boxes_index_and_tile_the_region_exactly() -> None:
    boxes = base_boxes(TPAMI)
    assert len(boxes) == 9
    assert boxes[0] == (slice(0, 64), slice(0, 64), slice(0, 64))
    assert boxes[1] == (slice(0, 64), slice(64, 128), slice(0, 64))  # k = i·n + j: j runs along axis 1
    assert boxes[3] == (slice(64, 128), slice(0, 64), slice(0, 64))
    assert boxes[8] == (slice(128, 192), slice(128, 192), slice(0, 64))
    cover = np.zeros((192, 192, 64), dtype=int)
    for box in boxes:
        cover[box] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize(
    ("centre", "expected"),
    [
        ((32, 32), {0: 1.0}),
        ((64, 64), {0: 0.25, 1: 0.25, 3: 0.25, 4: 0.25}),
        ((32, 96), {1: 1.0}),
        ((32, 64), {0: 0.5, 1: 0.5}),
        ((64, 32), {0: 0.5, 3: 0.5}),
        ((159, 159), {4: 1 / 64 / 64, 5: 63 / 64 / 64, 7: 63 / 64 / 64, 8: 63 * 63 / 64 / 64}),
        ((48, 112), {1: 0.75 * 0.75, 2: 0.75 * 0.25, 4: 0.25 * 0.75, 5: 0.25 * 0.25}),
    ],
)
def test_overlap_targets_hand_checked(centre: tuple[int, int], expected: dict[int, float]) -> None:
    target = overlap_targets(TPAMI, np.array([centre]))
    assert target.shape == (1, 9)
    assert target.dtype == np.float32
    want = np.zeros(9, dtype=np.float32)
    for k, value in expected.items():
        want[k] = value
    np.testing.assert_allclose(target[0], want, rtol=0, atol=1e-7)


def test_random_crops_lie_inside_the_region_and_targets_are_overlap_fractions() -> None:
    rng = np.random.default_rng(0)
    centres = sample_centres(TPAMI, 500, rng)
    assert centres.shape == (500, 2)
    assert np.issubdtype(centres.dtype, np.integer)
    assert centres.min() == 32 and centres.max() == 159  # [c/2, R − c/2), both ends reached in 500 draws
    targets = overlap_targets(TPAMI, centres)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert ((targets > 0).sum(axis=1) <= 4).all()
    assert ((targets > 0).sum(axis=1) == 4).any()
    bases = base_boxes(TPAMI)
    for centre, target in zip(centres[:50], targets[:50], strict=True):
        box = random_box(TPAMI, centre)
        assert box[0].start >= 0 and box[0].stop <= 192 and box[1].start >= 0 and box[1].stop <= 192
        assert box[0].stop - box[0].start == 64 and box[1].stop - box[1].start == 64 and box[2] == slice(0, 64)
        mask = np.zeros((192, 192), dtype=bool)
        mask[box[:2]] = True
        fractions = [mask[b[:2]].sum() / 64**2 for b in bases]
        np.testing.assert_allclose(target, fractions, atol=1e-7)


def test_sample_centres_is_reproducible_from_the_generator() -> None:
    first = sample_centres(TPAMI, 4, np.random.default_rng(7))
    again = sample_centres(TPAMI, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)


def test_extract_crops_returns_the_voxels_of_the_boxes() -> None:
    grid = CropGrid(region_xy=128, depth=32, grid=2)
    region = torch.arange(2 * 128 * 128 * 32, dtype=torch.float32).reshape(2, 128, 128, 32)
    centres = np.array([[32, 32], [50, 90], [95, 64]])
    randoms, bases = extract_crops(region, grid, centres)
    assert randoms.shape == (3, 2, 64, 64, 32)
    assert bases.shape == (4, 2, 64, 64, 32)
    torch.testing.assert_close(randoms[1], region[:, 18:82, 58:122, :])
    torch.testing.assert_close(randoms[0], bases[0])  # a crop centred on base 0 is base 0
    torch.testing.assert_close(bases[1], region[:, 0:64, 64:128, :])
    torch.testing.assert_close(bases[2], region[:, 64:128, 0:64, :])


def test_extract_crops_resizes_every_crop_when_asked() -> None:
    grid = CropGrid(region_xy=192, depth=40, grid=2, crop_resize=64)
    region = torch.zeros(1, 192, 192, 40)
    region[:, 96:, :, :] = 1.0  # bases 2 and 3 are bright
    randoms, bases = extract_crops(region, grid, np.array([[48, 48], [144, 48]]))
    assert randoms.shape == (2, 1, 64, 64, 64)
    assert bases.shape == (4, 1, 64, 64, 64)
    torch.testing.assert_close(bases[:, 0].mean(dim=(1, 2, 3)), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(randoms[:, 0].mean(dim=(1, 2, 3)), torch.tensor([0.0, 1.0]))


def test_extract_crops_rejects_a_region_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(C, 192, 192, 64\)"):
        extract_crops(torch.zeros(1, 192, 192, 32), TPAMI, np.array([[96, 96]]))
