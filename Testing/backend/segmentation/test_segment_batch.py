"""``segment --input A B C --output-dir DIR``: files, DICOM series folders and list files, one model load,
a result per volume, a failing volume reported and the others done."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
import torch
from backend_cli import TINY_FINETUNE as TINY
from backend_cli import backend

from voco_backend.cli import main
from voco_backend.networks import SwinEncoder
from voco_backend.weights import export_encoder


@pytest.fixture(scope="module")
def model(tmp_path_factory, shared_data):
    """A 1-step tiny model (accuracy is not the point: the batch's files and events are)."""
    work = tmp_path_factory.mktemp("batch_model")
    torch.manual_seed(0)
    encoder = export_encoder(SwinEncoder("tiny"), work / "encoder.pt")
    sts = shared_data / "ibsi_sts"
    run = backend(
        "finetune", "--images", str(sts / "STS_002_CT_image.nii.gz"), "--labels", str(sts / "STS_002_CT_mask.nii.gz"),
        "--classes", "tumour=1", "--init", str(encoder), "--steps", "1", "--val-every", "1", *TINY,
        "--out", str(work / "model"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return work / "model"


@pytest.mark.slow
def test_batch_segments_every_volume_once_loaded_and_reports_the_broken_one(model, shared_data, tmp_path):
    sts = shared_data / "ibsi_sts"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    listed = tmp_path / "cases.txt"
    listed.write_text(f"# two cases\n{sts / 'STS_003_CT_image.nii.gz'}\nbroken.nii.gz\n")
    second = sts / "STS_008_CT_image.nii.gz"  # a second small CT (DICOM folders go through the same read_image)
    out = tmp_path / "out"
    run = backend(
        "segment",
        "--model",
        str(model),
        "--input",
        str(listed),
        str(second),
        "--output-dir",
        str(out),
        "--interpolation",
        "nearest",
    )
    assert run.returncode == 3, run.stderr[-2000:]
    (error,) = run.of("error")
    assert error["file"] == str(broken) and error["message"].startswith("1 of 3 volumes failed, the others are done")
    *volumes, summary = run.of("result")
    assert [v["input"] for v in volumes] == [str(sts / "STS_003_CT_image.nii.gz"), str(second)]
    assert [v["volume"] for v in volumes] == [1, 3]
    assert summary["outputs"] == [str(out / "STS_003_CT_image_seg.nii.gz"), str(out / "STS_008_CT_image_seg.nii.gz")]
    assert [f["input"] for f in summary["failed"]] == [str(broken)]
    assert sum("model " in e["message"] for e in run.of("log") if e["message"].startswith("model ")) == 1
    for volume, source in zip(volumes, (sts / "STS_003_CT_image.nii.gz", second), strict=True):
        label = sitk.ReadImage(volume["output"])
        reader = sitk.ImageSeriesReader()
        image = (
            sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(source)))
            if source.is_dir()
            else sitk.ReadImage(str(source))
        )
        assert label.GetSize() == image.GetSize() and label.GetOrigin() == pytest.approx(image.GetOrigin())
        assert volume["statistics"][0]["name"] == "tumour"
    assert {p.name for p in out.iterdir()} == {
        "STS_003_CT_image_seg.nii.gz",
        "STS_003_CT_image_seg.statistics.csv",
        "STS_008_CT_image_seg.nii.gz",
        "STS_008_CT_image_seg.statistics.csv",
    }


def test_batch_usage_errors(tmp_path, capsys):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert main(["segment", "--model", "m", "--input", str(a), str(b), "--output", str(tmp_path / "x.nii.gz")]) == 2
    assert main(["segment", "--model", "m", "--input", str(a)]) == 2
    assert (
        main(["segment", "--model", "m", "--input", str(a), "--output-dir", str(tmp_path), "--output-suffix", ".png"])
        == 2
    )
    assert "output_suffix" in capsys.readouterr().out
