"""The preprocessing cache: unreadable files are skipped by name, the second pass reads no image file."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import voco_backend.data.recipe as recipe_module
from voco_backend.cancel import CancelToken
from voco_backend.data.recipe import Recipe
from voco_backend.errors import DataError
from voco_backend.pretrain.dataset import CachedVolumes, CropBatcher, require_volumes
from voco_backend.pretrain.geometry import CropGrid
from voco_backend.protocol import Reporter

RECIPE = Recipe(spacing=(3.0, 3.0, 3.0), min_size=(128, 128, 32))


@pytest.fixture()
def sources(tmp_path, sample_ct):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(flat))
    return [sample_ct["CTChest4.nrrd"], broken, flat]


def test_unreadable_files_are_skipped_by_name_with_a_count(tmp_path, sources, capsys):
    volumes = CachedVolumes(sources, RECIPE, tmp_path / "cache")
    failed = volumes.prepare(range(3), Reporter(), CancelToken())
    assert sorted(failed) == [1, 2]
    assert "expected a 3-D image" in failed[2]
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.nii.gz" in err and "flat.nrrd" in err


def test_no_readable_volume_is_one_line_error(sources):
    with pytest.raises(DataError, match="none of the 2 sources") as info:
        require_volumes([], 2, {1: "cannot read image", 2: "expected a 3-D image"}, sources)
    assert "\n" not in str(info.value)


def test_second_pass_and_second_run_read_no_image_file(tmp_path, sample_ct, monkeypatch):
    calls = []
    real = recipe_module.read_image
    monkeypatch.setattr(recipe_module, "read_image", lambda p: calls.append(p) or real(p))
    volumes = CachedVolumes([sample_ct["CTChest4.nrrd"]], RECIPE, tmp_path / "cache")
    assert volumes.prepare([0], Reporter(enabled=False), CancelToken()) == {}
    first = volumes[0]
    again = CachedVolumes([sample_ct["CTChest4.nrrd"]], RECIPE, tmp_path / "cache")[0]
    assert len(calls) == 1
    assert torch.equal(first, again)
    assert first.dtype == torch.float32 and float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert tuple(first.shape[1:]) >= (128, 128, 32)


def test_a_changed_recipe_gets_its_own_cache(tmp_path, sample_ct):
    a = CachedVolumes([sample_ct["CTChest4.nrrd"]], RECIPE, tmp_path)
    b = CachedVolumes([sample_ct["CTChest4.nrrd"]], Recipe(spacing=(2.0, 2.0, 2.0)), tmp_path)
    assert a.cache_dir != b.cache_dir


def test_small_volume_is_padded_into_a_full_batch_deterministically():
    small = torch.rand(1, 40, 50, 20)  # smaller than the 128×128×32 region on every axis
    grid = CropGrid(128, 32, 2)
    batcher = CropBatcher([small], [0], grid, random_crops=2, per_step=1, region_mode="crop", seed=3)
    batch = batcher(5)
    assert batch.crops.shape == (2 + 4, 1, 64, 64, 32)
    assert batch.targets.shape == (1, 2, 4)
    assert torch.allclose(batch.targets.sum(-1), torch.ones(1, 2))
    assert torch.equal(batcher(5).crops, batch.crops)
    assert not torch.equal(batcher(6).crops, batch.crops)
