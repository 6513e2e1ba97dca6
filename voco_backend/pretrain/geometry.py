"""Crop geometry of VoCo: base crops, random crops and their overlap targets (VOCO.md §3).

The region is R×R×D (array axes 0 and 1 in the axial plane, axis 2 = z, never split), cut into an n×n grid
of base crops of side c = R/n. Base crop k = i·n + j covers axis 0 in [i·c, (i+1)·c) and axis 1 in
[j·c, (j+1)·c). A random crop of the same size has its centre in [c/2, R − c/2) so it lies inside the region;
its target for base k is the fraction of its area that lies in base k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from voco_backend.errors import UsageError

Box = tuple[slice, slice, slice]

# SwinUNETR needs every side a multiple of 32; its in-plane path needs at least 64 (5 halvings to 2).
_MULTIPLE = 32
_MIN_XY = 64


@dataclass(frozen=True)
class CropGrid:
    """Region and grid of one recipe: TPAMI ``CropGrid()``, 10k ``CropGrid(384, 96, 4, crop_resize=64)``.

    Attributes:
        region_xy: in-plane side R of the region, in voxels.
        depth: depth D of the region (and of every crop), in voxels.
        grid: number n of base crops along each in-plane axis.
        crop_resize: if set, every crop is resized to this cube side before it enters the network.
    """

    region_xy: int = 192
    depth: int = 64
    grid: int = 3
    crop_resize: int | None = None

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise UsageError(f"field 'grid' must be >= 2 (n×n base crops), got {self.grid}")
        if self.region_xy <= 0 or self.region_xy % self.grid:
            raise UsageError(
                f"field 'region_xy' must be a positive multiple of grid ({self.grid}), got {self.region_xy}"
            )
        if self.crop_resize is None:
            _check_side("region_xy", self.crop, _MIN_XY, "the crop side region_xy/grid")
            _check_side("depth", self.depth, _MULTIPLE, "depth")
            return
        if self.crop % 2:
            raise UsageError(f"field 'region_xy' must give an even crop side region_xy/grid, got {self.crop}")
        if self.depth <= 0:
            raise UsageError(f"field 'depth' must be positive, got {self.depth}")
        _check_side("crop_resize", self.crop_resize, _MIN_XY, "crop_resize")

    @property
    def crop(self) -> int:
        """Side c of a crop in the region, before any resize."""
        return self.region_xy // self.grid

    @property
    def num_bases(self) -> int:
        """Number of base crops, n²."""
        return self.grid * self.grid


def _check_side(name: str, value: int, minimum: int, what: str) -> None:
    """Raise a one-line :class:`UsageError` unless ``value`` is a multiple of 32 and at least ``minimum``."""
    if value < minimum or value % _MULTIPLE:
        raise UsageError(
            f"field '{name}': {what} must be a multiple of {_MULTIPLE} and >= {minimum} "
            f"for the SwinUNETR encoder, got {value}"
        )


def base_boxes(grid: CropGrid) -> list[Box]:
    """The n² base-crop boxes of the region; index k = i·n + j with i along array axis 0."""
    c, n = grid.crop, grid.grid
    return [
        (slice(i * c, (i + 1) * c), slice(j * c, (j + 1) * c), slice(0, grid.depth)) for i in range(n) for j in range(n)
    ]


def sample_centres(grid: CropGrid, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random-crop centres (count, 2), each coordinate uniform over the integers [c/2, R − c/2)."""
    half = grid.crop // 2
    return rng.integers(half, grid.region_xy - half, size=(count, 2), dtype=np.int64)


def random_box(grid: CropGrid, centre: np.ndarray | tuple[int, int]) -> Box:
    """The box of the c×c×D random crop centred at ``centre`` (axis 0, axis 1)."""
    half = grid.crop // 2
    cx, cy = (int(v) for v in centre)
    return slice(cx - half, cx + half), slice(cy - half, cy + half), slice(0, grid.depth)


def overlap_targets(grid: CropGrid, centres: np.ndarray) -> np.ndarray:
    """Fraction of each random crop's area inside each base crop, (count, n²) float32; rows sum to 1."""
    c, half = grid.crop, grid.crop // 2
    starts = np.arange(grid.grid) * c
    centres = np.asarray(centres, dtype=np.int64)

    def extent(axis: int) -> np.ndarray:
        lo = np.maximum(starts[None, :], centres[:, axis, None] - half)
        hi = np.minimum(starts[None, :] + c, centres[:, axis, None] + half)
        return np.clip(hi - lo, 0, None)

    area = extent(0)[:, :, None] * extent(1)[:, None, :]
    return (area.reshape(len(centres), grid.num_bases) / float(c * c)).astype(np.float32)


def extract_crops(region: torch.Tensor, grid: CropGrid, centres: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the random crops and the base crops out of one region (C, R, R, D).

    Returns:
        Random crops (count, C, c, c, D) and base crops (n², C, c, c, D); with ``crop_resize`` set, every crop
        is resized (trilinear, ``align_corners=True`` as the 10k code resizes) to a ``crop_resize`` cube.
    """
    expected = (grid.region_xy, grid.region_xy, grid.depth)
    if region.ndim != 4 or tuple(region.shape[1:]) != expected:
        raise ValueError(f"region must have shape (C, {', '.join(map(str, expected))}), got {tuple(region.shape)}")
    randoms = torch.stack([region[(slice(None), *random_box(grid, centre))] for centre in centres])
    bases = torch.stack([region[(slice(None), *box)] for box in base_boxes(grid)])
    if grid.crop_resize is None:
        return randoms, bases
    size = (grid.crop_resize,) * 3
    return (
        F.interpolate(randoms, size=size, mode="trilinear", align_corners=True),
        F.interpolate(bases, size=size, mode="trilinear", align_corners=True),
    )
