"""Per-class statistics of a label map on real CT, against SimpleITK's LabelStatisticsImageFilter."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.statistics import label_statistics, statistics_path, write_statistics


def test_statistics_match_simpleitk_on_real_ct(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator"
    image = sitk.ReadImage(str(folder / "example_ct.nii.gz"))
    label = sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))
    label.CopyInformation(image)  # the same grid (checked below), only rounding in the headers differs
    assert np.allclose(label.GetSpacing(), image.GetSpacing())
    names = json.loads((folder / "labels_total_v2.json").read_text())
    present = np.unique(sitk.GetArrayViewFromImage(label))
    values = [*(int(v) for v in present if v)][:12]
    values.append(int(present.max()) + 1)  # and a class that is absent
    classes = [SegmentClass(str(names.get(str(v), f"class_{v}")), v, (1.0, 0.0, 0.0)) for v in values]

    rows = label_statistics(label, image, classes)

    reference = sitk.LabelStatisticsImageFilter()
    reference.Execute(sitk.Cast(image, sitk.sitkFloat64), label)
    voxel_ml = np.prod(image.GetSpacing()) / 1000.0
    for row, c in zip(rows, classes, strict=True):
        assert (row["name"], row["value"]) == (c.name, c.value)
        if not reference.HasLabel(c.value):
            assert row["voxels"] == 0 and row["volume_ml"] == 0 and row["mean_hu"] is None
            continue
        assert row["voxels"] == reference.GetCount(c.value)
        assert row["volume_ml"] == pytest.approx(reference.GetCount(c.value) * voxel_ml, abs=1e-4)
        assert row["mean_hu"] == pytest.approx(reference.GetMean(c.value), abs=1e-3)

    path = write_statistics(rows, statistics_path(tmp_path / "seg.seg.nrrd"))
    assert path == tmp_path / "seg.statistics.csv"
    with path.open() as stream:
        table = list(csv.DictReader(stream))
    assert [int(r["voxels"]) for r in table] == [r["voxels"] for r in rows]
    assert table[-1]["mean_hu"] == ""


def test_statistics_path_replaces_the_image_suffix(tmp_path):
    for name in ("ct_seg.nii.gz", "ct_seg.nii", "ct_seg.nrrd", "ct_seg.seg.nrrd", "ct_seg.mha"):
        assert statistics_path(tmp_path / name).name == "ct_seg.statistics.csv"
