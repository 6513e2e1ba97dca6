"""Writing a label map: NIfTI/NRRD/MetaImage by extension, or a Slicer ``.seg.nrrd`` with segment names/colours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from voco_backend.atomic import atomic_path
from voco_backend.data.io import ijk_to_lps, write_image
from voco_backend.segmentation.labels import SegmentClass, is_seg_nrrd


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
