"""DataLoader workers build the very batches of the single-process pipeline, so resume stays exact."""

import torch

from voco_backend.pretrain.dataset import CropBatcher, batches
from voco_backend.pretrain.geometry import CropGrid


def _batcher() -> CropBatcher:
    generator = torch.Generator().manual_seed(0)
    volumes = [torch.rand(1, 140, 136, 40, generator=generator) for _ in range(3)]
    grid = CropGrid(region_xy=128, depth=32, grid=2)
    return CropBatcher(volumes, [0, 1, 2], grid, random_crops=2, per_step=2, region_mode="crop", seed=5)


def test_workers_and_a_resumed_start_give_the_batches_of_an_uninterrupted_run():
    batcher = _batcher()
    uninterrupted = list(batches(batcher, 0, 5))
    resumed = list(batches(batcher, 2, 5, workers=2))
    assert len(resumed) == 3
    for ours, reference in zip(resumed, uninterrupted[2:], strict=True):
        assert ours.indices == reference.indices
        assert torch.equal(ours.crops, reference.crops)
        assert torch.equal(ours.targets, reference.targets)
    assert not torch.equal(uninterrupted[0].crops, uninterrupted[1].crops)  # steps do differ
