"""Post-processing of label maps: a class keeps only its largest connected component (nnU-Net's practice).

One tumour, one liver, one spleen: scattered false positives away from the organ cost Dice, and removing every
component but the largest removes them. It hurts a class with several true parts (both lungs as one class,
metastases), so it is chosen per class from data, never assumed: ``finetune`` measures each validation with and
without it and keeps it for a class only where that class's validation Dice is higher with it; the classes are
recorded with the best model in ``model.json`` (``postprocess.largest_component``) and ``segment`` applies it
to the label map on the input's grid. SimpleITK labels the components (26-connectivity, as nnU-Net's
``skimage.measure.label`` default in 3-D).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

LARGEST_COMPONENT = "largest_component"


def keep_largest_component(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """A copy of ``labels`` in which each class of ``values`` keeps only its largest 26-connected component.

    The voxels removed become background (0); other classes are left as they are.
    """
    out = labels.copy()
    for value in values:
        mask = labels == value
        if not mask.any():
            continue
        components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
        # A copy, not GetArrayViewFromImage: a view of the temporary image would outlive it.
        ranked = sitk.GetArrayFromImage(sitk.RelabelComponent(components, sortByObjectSize=True))
        out[mask & (ranked != 1)] = 0
    return out


def keep_largest_component_image(labels: sitk.Image, values: Sequence[int]) -> sitk.Image:
    """:func:`keep_largest_component` on an image; geometry and pixel type are kept."""
    if not values:
        return labels
    out = sitk.GetImageFromArray(keep_largest_component(sitk.GetArrayFromImage(labels), values))
    out.CopyInformation(labels)
    return out
