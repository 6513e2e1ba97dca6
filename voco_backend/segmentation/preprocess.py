"""The shared deterministic recipe applied to images already in memory (and their class-index labels).

Training and inference both hold the SimpleITK image already (training checks the label against it, inference
needs its grid to restore the output), so they ask the data layer for its pipeline without the file-loading step
(``deterministic_transforms(..., load=False)``); the rest runs unchanged.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from voco_backend.data.io import to_metatensor
from voco_backend.data.recipe import Recipe, deterministic_transforms

LABEL_KEY = "label"


def preprocess(recipe: Recipe, image: sitk.Image, label: np.ndarray | None = None) -> dict[str, MetaTensor]:
    """Apply ``recipe`` to ``image`` and optionally to a class-index array on the image's grid (z, y, x order).

    Returns:
        ``{"image": (1, X, Y, Z) float, "label": (1, X, Y, Z) int16}`` in RAS at the recipe spacing, cropped
        to the foreground and padded; each MetaTensor's affine maps its voxels to physical RAS millimetres.
    """
    steps = deterministic_transforms(recipe, LABEL_KEY if label is not None else None, load=False)
    data = {"image": to_metatensor(image)}
    if label is not None:
        label_image = sitk.GetImageFromArray(label)
        label_image.CopyInformation(image)
        data[LABEL_KEY] = to_metatensor(label_image, torch.int16)
    return steps(data)
