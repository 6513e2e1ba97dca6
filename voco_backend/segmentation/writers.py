"""Writing a label map: NIfTI/NRRD/MetaImage by extension, or a Slicer ``.seg.nrrd`` with segment names/colours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from voco_backend.atomic import atomic_path
from voco_backend.data.io import write_image
from voco_backend.segmentation.labels import SegmentClass, is_seg_nrrd


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """The 4×4 voxel (i, j, k) → LPS-mm matrix of an image (the frame ``.seg.nrrd`` headers use)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_label_map(label: sitk.Image, path: str | Path, classes: Sequence[SegmentClass]) -> Path:
    """Write ``label`` atomically; a ``.seg.nrrd`` carries one segment (name, colour, value) per class."""
    path = Path(path)
    if not is_seg_nrrd(path):
        write_image(label, path)
        return path
    import slicerio

    segmentation = {
        "voxels": sitk.GetArrayFromImage(label).transpose(2, 1, 0),
        "ijkToLPS": ijk_to_lps(label),
        "segments": [
            {"id": f"Segment_{c.value}", "name": c.name, "color": list(c.color), "labelValue": c.value, "layer": 0}
            for c in classes
        ],
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path
