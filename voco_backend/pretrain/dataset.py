"""Pretraining data: cached preprocessed volumes, and the per-step batch of random and base crops.

Every random choice of step ``s`` on rank ``r`` comes from a generator seeded with ``(seed, s, r)``, so a
resumed run draws exactly the batches an uninterrupted run would, with no data-RNG state to checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import PersistentDataset
from monai.transforms import CastToTyped, Compose
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from voco_backend.atomic import save_torch_atomic
from voco_backend.cancel import CancelToken
from voco_backend.data.recipe import Recipe, deterministic_transforms
from voco_backend.data.sources import source_stamp
from voco_backend.errors import DataError, find_user_error
from voco_backend.pretrain.augment import CropAugment
from voco_backend.pretrain.geometry import CropGrid, extract_crops, overlap_targets, sample_centres
from voco_backend.protocol import Reporter


class AtomicPersistentDataset(PersistentDataset):
    """MONAI's PersistentDataset whose cache entries appear atomically (written beside, then renamed).

    MONAI writes an entry in the system temp folder and moves it into the cache; across file systems that
    move is a copy, so a second process filling the same cache (``pretrain --preprocess-only`` on several
    machines or ranks) could read half an entry. Here the entry is renamed into place within the cache folder.
    """

    def _cachecheck(self, item_transformed: dict) -> dict:
        hashfile = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
        if hashfile.is_file():
            return super()._cachecheck(item_transformed)  # MONAI's load
        result = self._pre_transform(deepcopy(item_transformed))
        save_torch_atomic(convert_to_tensor(result, convert_numeric=False, track_meta=self.track_meta), hashfile)
        return result


class CachedVolumes:
    """Deterministically preprocessed volumes, cached on disk as float16 (MONAI PersistentDataset).

    The cache folder is keyed by :meth:`Recipe.key`, each entry by the source path, size and mtime, so a second
    epoch (or a second run with the same recipe) reads no DICOM/NIfTI at all.
    """

    def __init__(self, sources: Sequence[Path], recipe: Recipe, cache_root: Path) -> None:
        self.sources = list(sources)
        self.cache_dir = Path(cache_root) / recipe.key()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        items = [{"image": str(p), "stamp": source_stamp(p)} for p in self.sources]
        # Flat, so that PersistentDataset caches every step (a nested Compose counts as random).
        steps = [deterministic_transforms(recipe), CastToTyped(keys="image", dtype=torch.float16)]
        transform = Compose(steps).flatten()
        self._dataset = AtomicPersistentDataset(items, transform, cache_dir=self.cache_dir)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Volume ``index`` as a float32 (1, X, Y, Z) tensor in [0, 1]."""
        return torch.as_tensor(self._dataset[index]["image"]).float()

    def prepare(self, indices: Sequence[int], reporter: Reporter, cancel: CancelToken) -> dict[int, str]:
        """Preprocess (or find cached) ``indices``; returns the unreadable ones as index → one-line reason."""
        failed: dict[int, str] = {}
        for done, index in enumerate(indices):
            cancel.check()
            try:
                self._dataset[index]
            except Exception as exc:  # a transform failing on odd data must not end a long run
                user_error = find_user_error(exc)
                failed[index] = user_error.message if user_error else f"{type(exc).__name__}: {_first_line(exc)}"
            if index in failed:
                reporter.log(
                    f"skipped {self.sources[index]}: {failed[index]}",
                    level="warning",
                    file=str(self.sources[index]),
                )
            reporter.progress("preprocess", done + 1, len(indices))
        return failed


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]


@dataclasses.dataclass
class Batch:
    """One step's forward batch, volume-major: all random crops, then all base crops."""

    crops: torch.Tensor  # (V·sw + V·K, 1, c, c, D)
    targets: torch.Tensor  # (V, sw, K)
    indices: list[int]

    def pin_memory(self) -> Batch:
        """This batch with its crops in page-locked memory (DataLoader's ``pin_memory`` calls it)."""
        return dataclasses.replace(self, crops=self.crops.pin_memory())


def step_indices(step: int, num_items: int, per_step: int, rank: int, world: int, seed: int) -> list[int]:
    """The volume indices of ``step`` on ``rank``: DistributedSampler order, reshuffled every epoch."""
    sampler = DistributedSampler(range(num_items), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    per_rank = len(sampler)
    steps_per_epoch = math.ceil(per_rank / per_step)
    epoch, position = divmod(step, steps_per_epoch)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[(position * per_step + k) % per_rank] for k in range(per_step)]


class CropBatcher:
    """Cuts a region from each volume, then random and base crops with their overlap targets, augmented."""

    def __init__(
        self,
        volumes: CachedVolumes | Sequence[torch.Tensor],
        valid: Sequence[int],
        grid: CropGrid,
        random_crops: int,
        per_step: int,
        region_mode: str,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shift_prob: float = 0.5,
    ) -> None:
        self.volumes = volumes
        self.shift_prob = shift_prob
        self.valid = list(valid)
        self.grid = grid
        self.random_crops = random_crops
        self.per_step = per_step
        self.region_mode = region_mode
        self.seed = seed
        self.rank = rank
        self.world = world

    def region(self, volume: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A (1, R, R, D) region: a random crop of the (padded) volume, or the whole volume resized (10k code:
        trilinear, ``align_corners=True``)."""
        size = (self.grid.region_xy, self.grid.region_xy, self.grid.depth)
        if self.region_mode == "resize":
            return F.interpolate(volume[None], size=size, mode="trilinear", align_corners=True)[0]
        pad = [max(0, s - v) for s, v in zip(size, volume.shape[1:], strict=True)]
        if any(pad):
            volume = F.pad(volume, [p for side in reversed(pad) for p in (side // 2, side - side // 2)])
        starts = [int(rng.integers(0, v - s + 1)) for s, v in zip(size, volume.shape[1:], strict=True)]
        return volume[
            :,
            starts[0] : starts[0] + size[0],
            starts[1] : starts[1] + size[1],
            starts[2] : starts[2] + size[2],
        ]

    def __call__(self, step: int) -> Batch:
        """The batch of ``step`` (deterministic in seed, step and rank)."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        picks = step_indices(step, len(self.valid), self.per_step, self.rank, self.world, self.seed)
        indices = [self.valid[p] for p in picks]
        randoms, bases, targets = [], [], []
        for index in indices:
            region = self.region(self.volumes[index], rng)
            centres = sample_centres(self.grid, self.random_crops, rng)
            crops_r, crops_b = extract_crops(region, self.grid, centres)
            randoms.append(crops_r)
            bases.append(crops_b)
            targets.append(torch.as_tensor(overlap_targets(self.grid, centres)))
        augment = CropAugment(seed=int(rng.integers(2**31 - 1)), shift_prob=self.shift_prob)
        crops = augment(torch.cat(randoms + bases))
        return Batch(crops=crops.contiguous(), targets=torch.stack(targets), indices=indices)


def prefetch(batcher: CropBatcher, first: int, last: int, depth: int = 2) -> Iterator[Batch]:
    """Yield ``batcher(s)`` for s in [first, last) while the next batches are built in a background thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        for step in range(first, last):
            if stop.is_set():
                return
            try:
                item: object = batcher(step)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                item = exc
            slots.put(item)

    worker = threading.Thread(target=produce, daemon=True, name="voco-prefetch")
    worker.start()
    try:
        for _ in range(first, last):
            item = slots.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


class _Steps(Dataset):
    """Steps ``first``… as a map-style dataset: item ``i`` is the batch of step ``first + i``."""

    def __init__(self, batcher: CropBatcher, first: int, last: int) -> None:
        self.batcher, self.first, self.last = batcher, first, last

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, index: int) -> Batch:
        return self.batcher(self.first + index)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers cut crops side by side; the training process keeps the cores' threads


def batches(batcher: CropBatcher, first: int, last: int, workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """The batches of steps [first, last): built by ``workers`` DataLoader processes, or a background thread.

    A batch depends only on (seed, step, rank), never on which worker built it, so a resumed run gets the
    batches of an uninterrupted one with any number of workers. ``pin_memory`` (CUDA) makes the copy to the
    device non-blocking.
    """
    if workers == 0:
        for batch in prefetch(batcher, first, last):
            yield batch.pin_memory() if pin_memory else batch
        return
    loader = DataLoader(
        _Steps(batcher, first, last),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None,
        collate_fn=_keep,
        # Its own generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG, which
        # the training step's dropout also draws from, and a resumed run would then differ from an uninterrupted one.
        generator=torch.Generator().manual_seed(first),
    )
    yield from loader


def _keep(batch: Batch) -> Batch:
    return batch


def require_volumes(valid: Sequence[int], total: int, failed: dict[int, str], sources: Sequence[Path]) -> None:
    """Fail with one line when no readable volume is left."""
    if not valid:
        first = next(iter(failed.items()), None)
        detail = f"; first: {sources[first[0]]}: {first[1]}" if first else ""
        raise DataError(f"none of the {total} sources could be read{detail}")
