"""The deterministic preprocessing recipe shared by pretraining, fine-tuning and segmentation.

Load with SimpleITK → channel-first RAS → resample to the recipe spacing (unless it is None: the scan's own
spacing, as the CVPR/10k pretraining code does) → window HU to [0, 1] → crop to the foreground (windowed values
above ``foreground_threshold``) → pad to a minimum size. Everything here is deterministic, so its output can be
cached on disk, keyed by :meth:`Recipe.key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from voco_backend.data.io import read_image, to_metatensor

CACHE_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Deterministic preprocessing parameters (what a model was trained with and must be applied with)."""

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    window: tuple[float, float] = (-1000.0, 1000.0)
    min_size: tuple[int, int, int] = (64, 64, 64)
    crop_foreground: bool = True
    foreground_threshold: float = 0.0

    def key(self) -> str:
        """A short hash that changes whenever the recipe (or the cache format) changes."""
        blob = json.dumps({"v": CACHE_FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """JSON-safe form (stored in model metadata)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Recipe:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class LoadSitkd(MapTransform):
    """Load each key's path (file or DICOM series folder) with SimpleITK as a (1, X, Y, Z) RAS MetaTensor.

    MONAI's own ITKReader needs the ``itk`` package; this project reads with SimpleITK, hence this bridge.
    """

    def __init__(self, keys: Sequence[Hashable], dtypes: Sequence[torch.dtype] | None = None) -> None:
        super().__init__(keys)
        self.dtypes = list(dtypes) if dtypes else [torch.float32] * len(self.keys)

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        for key, dtype in zip(self.keys, self.dtypes, strict=True):
            image = read_image(out[key])
            tensor = to_metatensor(image, dtype)
            tensor.meta["filename_or_obj"] = str(out[key])
            out[key] = tensor
        return out


class _Above:
    """``select_fn`` of CropForegroundd: windowed values above a threshold (a class, so the pipeline pickles)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


def deterministic_transforms(recipe: Recipe, label_key: str | None = None, load: bool = True) -> Compose:
    """The cacheable part of the pipeline for ``image`` (and optionally a label under ``label_key``).

    Args:
        load: start by reading the keys' paths (:class:`LoadSitkd`); ``False`` for data already in memory as
            (1, X, Y, Z) MetaTensors with their RAS affine (:func:`voco_backend.data.io.to_metatensor`).
    """
    keys = ["image"] + ([label_key] if label_key else [])
    modes = ["bilinear"] + (["nearest"] if label_key else [])
    steps: list = [LoadSitkd(keys, [torch.float32] + ([torch.int16] if label_key else []))] if load else []
    steps.append(Orientationd(keys=keys, axcodes="RAS", labels=None))
    if recipe.spacing is not None:
        steps.append(Spacingd(keys=keys, pixdim=recipe.spacing, mode=modes))
    steps += [
        ScaleIntensityRanged(
            keys="image", a_min=recipe.window[0], a_max=recipe.window[1], b_min=0.0, b_max=1.0, clip=True
        ),
    ]
    if recipe.crop_foreground:
        steps.append(
            CropForegroundd(
                keys=keys, source_key="image", select_fn=_Above(recipe.foreground_threshold), allow_smaller=True
            )
        )
    steps += [
        SpatialPadd(keys=keys, spatial_size=recipe.min_size, mode="constant"),
        EnsureTyped(keys=keys, track_meta=True),
    ]
    return Compose(steps)
