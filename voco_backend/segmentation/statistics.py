"""Per-class statistics of a label map on its CT's grid: voxel count, volume (mL) and mean intensity (HU).

The figures Slicer's Segment Statistics and TotalSegmentator's ``--statistics`` give; they are reported in the
``segment`` result event and written as a CSV beside the label map (``<output>.statistics.csv``, the image
suffix replaced).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from voco_backend.atomic import atomic_path
from voco_backend.data.io import IMAGE_SUFFIXES
from voco_backend.segmentation.labels import SegmentClass

COLUMNS = ("name", "value", "voxels", "volume_ml", "mean_hu")
SEG_NRRD = ".seg.nrrd"


def label_statistics(label: sitk.Image, image: sitk.Image, classes: Sequence[SegmentClass]) -> list[dict[str, Any]]:
    """One row per class: ``name``, ``value``, ``voxels``, ``volume_ml`` and ``mean_hu`` (None when empty).

    ``label`` must be on ``image``'s grid (what ``segment`` writes).
    """
    if label.GetSize() != image.GetSize():
        raise ValueError(f"label size {label.GetSize()} is not the image's {image.GetSize()}")
    values = sitk.GetArrayViewFromImage(label).ravel().astype(np.int64)
    intensities = sitk.GetArrayViewFromImage(image).ravel().astype(np.float64)
    length = max([int(values.max(initial=0)), *(c.value for c in classes)]) + 1
    counts = np.bincount(values, minlength=length)
    sums = np.bincount(values, weights=intensities, minlength=length)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    rows = []
    for c in classes:
        n = int(counts[c.value])
        rows.append(
            {
                "name": c.name,
                "value": c.value,
                "voxels": n,
                "volume_ml": round(n * voxel_ml, 4),
                "mean_hu": round(float(sums[c.value]) / n, 3) if n else None,
            }
        )
    return rows


def statistics_path(output: str | Path) -> Path:
    """``<output>.statistics.csv`` beside the label map, its image suffix replaced."""
    output = Path(output)
    name = output.name
    for suffix in (SEG_NRRD, *sorted(IMAGE_SUFFIXES, key=len, reverse=True)):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(f"{name}.statistics.csv")


def write_statistics(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV atomically (empty mean for an empty class)."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    return path
