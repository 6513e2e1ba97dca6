"""Each bad input of finetune/segment/evaluate is one error line naming the file or field, with its exit code."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from backend_cli import backend

from voco_backend.data.io import read_image


@pytest.fixture(scope="module")
def sts(shared_data):
    return shared_data / "ibsi_sts"


@pytest.fixture(scope="module")
def bad_labels(tmp_path_factory, sts):
    """Labels on STS_002's grid: one with a value outside the classes, one empty."""
    folder = tmp_path_factory.mktemp("labels")
    mask = read_image(sts / "STS_002_CT_mask.nii.gz")
    extra = sitk.GetArrayFromImage(mask)
    extra[0, 0, :3] = 2
    empty = np.zeros_like(extra)
    paths = {}
    for name, array in (("extra_value", extra), ("empty", empty)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(mask)
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def _finetune(sts, label, out, *extra):
    return backend(
        "finetune",
        "--images",
        str(sts / "STS_002_CT_image.nii.gz"),
        "--labels",
        str(label),
        "--out",
        str(out),
        "--classes",
        "tumour=1",
        "--model-size",
        "tiny",
        *extra,
        timeout=300,
    )


def _single_error(run, code: int) -> dict:
    assert run.returncode == code, run.stderr[-2000:]
    errors = run.of("error")
    assert len(errors) == 1 and errors[0]["exit_code"] == code
    assert "\n" not in errors[0]["message"] and "Traceback" not in run.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("missing", "no such file"),
        ("extra_value", "label value(s) 2 not among the classes (1 tumour)"),
        ("empty", "label is empty"),
        ("other_grid", "label grid does not match its image in physical space"),
    ],
)
def test_bad_training_label_is_a_data_error_naming_the_label(sts, bad_labels, tmp_path, label, message):
    path = {"missing": tmp_path / "missing.nii.gz", "other_grid": sts / "STS_003_CT_mask.nii.gz"}.get(label)
    path = path or bad_labels[label]
    error = _single_error(_finetune(sts, path, tmp_path / "model"), 3)
    assert message in error["message"]
    assert error["file"] == str(path)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["segment", "--model", "m", "--input", "ct.nii.gz", "--output", "seg.nii.gz", "--overlap", "1.5"], "overlap"),
        (["segment", "--model", "m", "--input", "ct.nii.gz", "--output", "seg.png"], "output"),
        (["evaluate", "--pred", "p.nii.gz", "--ref", "r.nii.gz", "--tolerance", "-1"], "tolerance"),
    ],
)
def test_bad_flag_value_is_a_usage_error_naming_the_field(args, field):
    error = _single_error(backend(*args, timeout=300), 2)
    assert f"field '{field}'" in error["message"]


def test_bad_finetune_flag_is_a_usage_error(sts, tmp_path):
    error = _single_error(_finetune(sts, sts / "STS_002_CT_mask.nii.gz", tmp_path / "m", "--roi", "48"), 2)
    assert "field 'roi'" in error["message"]


def test_missing_prediction_is_a_data_error_naming_it(sts, tmp_path):
    missing = tmp_path / "pred.nii.gz"
    error = _single_error(
        backend("evaluate", "--pred", str(missing), "--ref", str(sts / "STS_002_CT_mask.nii.gz"), timeout=300), 3
    )
    assert error["file"] == str(missing)


def test_model_folder_without_weights_is_a_data_error(tmp_path, sts):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    error = _single_error(
        backend(
            "segment",
            "--model",
            str(folder),
            "--input",
            str(sts / "STS_002_CT_image.nii.gz"),
            "--output",
            str(tmp_path / "seg.nii.gz"),
            timeout=300,
        ),
        3,
    )
    assert "model.pt is missing" in error["message"]
