"""``evaluate``: exact Dice values on a real tumour label, physical-space resampling, the report files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from backend_cli import backend

from voco_backend.data.io import read_image
from voco_backend.segmentation.evaluation import evaluate_pair
from voco_backend.segmentation.labels import parse_classes

SHIFT = 3


@pytest.fixture(scope="module")
def mask_path(shared_data):
    return shared_data / "ibsi_sts" / "STS_002_CT_mask.nii.gz"


@pytest.fixture(scope="module")
def mask(mask_path):
    return read_image(mask_path)


def _write(image: sitk.Image, path):
    sitk.WriteImage(image, str(path))
    return path


def test_label_against_itself_is_perfect(mask_path):
    result, _, _ = evaluate_pair(mask_path, mask_path, None, 2.0)
    assert result["label_1"] == {
        "value": 1,
        "dice": 1.0,
        "hd95_mm": 0.0,
        "surface_dice": 1.0,
        "ref_voxels": 17090,
        "pred_voxels": 17090,
    }


def test_copy_shifted_by_k_voxels_gives_the_analytic_dice(tmp_path, mask, mask_path):
    ref = sitk.GetArrayFromImage(mask).astype(bool)  # (z, y, x)
    assert not ref[:, :, -SHIFT:].any()  # the shift loses no voxel
    shifted = np.zeros_like(ref)
    shifted[:, :, SHIFT:] = ref[:, :, :-SHIFT]
    expected = 2 * (ref & shifted).sum() / (ref.sum() + shifted.sum())
    pred = sitk.GetImageFromArray(shifted.astype(np.uint8))
    pred.CopyInformation(mask)
    step = SHIFT * mask.GetSpacing()[0]
    result, _, _ = evaluate_pair(_write(pred, tmp_path / "shifted.nii.gz"), mask_path, None, step + 1e-3)
    metrics = result["label_1"]
    assert metrics["dice"] == pytest.approx(expected, abs=1e-6)
    assert 0 < expected < 0.95
    # every surface point moved by exactly `step` mm: all within a tolerance of `step`, none farther
    assert metrics["surface_dice"] == pytest.approx(1.0)
    assert 0 < metrics["hd95_mm"] <= step + 1e-6


def test_prediction_on_another_grid_is_resampled_in_physical_space(tmp_path, mask, mask_path):
    flipped_block = sitk.Flip(mask, [False, True, False])[10:150, :, 2:46]  # y-flipped array, cropped
    spacing = mask.GetSpacing()
    fine_spacing = [spacing[0] / 2, spacing[1] / 2, spacing[2]]
    fine_origin = np.subtract(mask.GetOrigin(), [spacing[0] / 4, spacing[1] / 4, 0]).tolist()  # 2×2 per voxel
    fine_size = [2 * mask.GetSize()[0], 2 * mask.GetSize()[1], mask.GetSize()[2]]
    fine = sitk.Resample(
        mask, fine_size, sitk.Transform(), sitk.sitkNearestNeighbor, fine_origin, fine_spacing, mask.GetDirection()
    )
    for name, pred in (("flipped_block", flipped_block), ("fine", fine)):
        assert pred.GetSize() != mask.GetSize() or pred.GetDirection() != mask.GetDirection()
        result, _, _ = evaluate_pair(_write(pred, tmp_path / f"{name}.nrrd"), mask_path, None, 2.0)
        assert result["label_1"]["dice"] == pytest.approx(1.0), name


def test_cli_pairs_folders_by_name_and_writes_json_csv_and_png(tmp_path, mask, shared_data):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir()
    refs.mkdir()
    _write(mask, refs / "case_a.nii.gz")
    _write(mask, preds / "case_a.nrrd")
    empty = sitk.Image(mask) * 0
    _write(empty, preds / "case_b.nii.gz")
    _write(mask, refs / "case_b.nii.gz")
    out = tmp_path / "eval" / "report.json"
    run = backend(
        "evaluate",
        "--pred",
        str(preds),
        "--ref",
        str(refs),
        "--out",
        str(out),
        "--classes",
        "tumour=1",
        "--images",
        str(shared_data / "ibsi_sts" / "STS_002_CT_image.nii.gz"),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["cases"]["case_a"]["tumour"]["dice"] == 1.0
    assert report["cases"]["case_b"]["tumour"] == {
        "value": 1,
        "dice": 0.0,
        "hd95_mm": None,
        "surface_dice": 0.0,
        "ref_voxels": 17090,
        "pred_voxels": 0,
    }
    assert report["mean"]["tumour"]["dice"] == pytest.approx(0.5)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["case"], r["class"], r["dice"]) for r in rows] == [
        ("case_a", "tumour", "1.0"),
        ("case_b", "tumour", "0.0"),
    ]
    assert sorted(p.name for p in out.parent.glob("*.png")) == ["report_case_a.png", "report_case_b.png"]
    assert run.of("result")[0]["report"] == str(out)


def test_named_classes_report_absent_classes_as_undefined(mask_path):
    result, _, _ = evaluate_pair(mask_path, mask_path, parse_classes(["tumour=1", "edema=2"]), 2.0)
    assert result["edema"] == {
        "value": 2,
        "dice": None,
        "hd95_mm": None,
        "surface_dice": None,
        "ref_voxels": 0,
        "pred_voxels": 0,
    }


def test_segments_of_a_seg_nrrd_reference_name_the_classes(tmp_path, sample_ct, sample_segment_names):
    """A Slicer segmentation as reference: the report speaks of its segments by name, not label_N."""
    reference = sample_ct["Segmentation.seg.nrrd"]
    prediction = tmp_path / "pred.nii.gz"
    sitk.WriteImage(read_image(reference), str(prediction))
    run = backend("evaluate", "--pred", str(prediction), "--ref", str(reference), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    mean = run.of("result")[0]["mean"]
    assert list(mean) == sample_segment_names
    assert all(metrics["dice"] == 1.0 for metrics in mean.values())
