"""A 1-shot fine-tune of the tiny network on a real STS case, then ``segment`` on NIfTI, NRRD and DICOM input.

The model is trained once per module (3 steps, roi 64, 4 mm recipe: seconds on 2 cores); accuracy is not
claimed, the files, the loading report, cancel/resume and the geometry are.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch
from backend_cli import TINY_FINETUNE as TINY
from backend_cli import backend, events, start

from voco_backend.commands.finetune import ENCODER_LR_SCALE, FinetuneConfig
from voco_backend.data.io import read_image
from voco_backend.data.recipe import Recipe
from voco_backend.networks import SwinEncoder, build_swinunetr
from voco_backend.segmentation.evaluation import on_reference_grid
from voco_backend.segmentation.inference import restore_to_grid
from voco_backend.segmentation.preprocess import preprocess
from voco_backend.weights import export_encoder

VERTEBRAE_T11_T12 = [32, 33]  # TotalSegmentator v2 label values (labels_total_v2.json)


@pytest.fixture(scope="module")
def finetune_args(tmp_path_factory, shared_data) -> list[str]:
    """``finetune`` flags of a 3-step 1-shot run initialised from a VoCo-layout encoder (all but --out)."""
    work = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    encoder = export_encoder(SwinEncoder("tiny"), work / "encoder.pt")
    sts = shared_data / "ibsi_sts"
    return [
        "finetune",
        "--images",
        str(sts / "STS_002_CT_image.nii.gz"),
        "--labels",
        str(sts / "STS_002_CT_mask.nii.gz"),
        "--classes",
        "tumour",
        "--init",
        str(encoder),
        "--steps",
        "3",
        "--val-every",
        "3",
        "--checkpoint-every",
        "3",
        *TINY,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, finetune_args):
    """(model folder, finetune run) of the uninterrupted run."""
    folder = tmp_path_factory.mktemp("finetune") / "model"
    run = backend(*finetune_args, "--out", str(folder))
    assert run.returncode == 0, run.stderr[-3000:]
    return folder, run


def test_one_shot_finetune_writes_a_complete_model_folder(trained):
    folder, run = trained
    meta = json.loads((folder / "model.json").read_text())
    assert meta["architecture"] == {
        "name": "SwinUNETR",
        "use_v2": True,
        "downsample": "merging",
        "merge_order": "monai1.3",
        "model_size": "tiny",
        "feature_size": 12,
        "in_channels": 1,
        "out_channels": 2,
    }
    assert [(c["name"], c["value"]) for c in meta["classes"]] == [("tumour", 1)]
    assert len(meta["classes"][0]["color"]) == 3
    assert meta["recipe"]["spacing"] == [4.0, 4.0, 4.0] and meta["recipe"]["window"] == [-1000.0, 1000.0]
    assert meta["roi"] == [64, 64, 64]
    assert meta["init"]["summary"].startswith("loaded ") and "145 encoder" in meta["init"]["summary"]
    training = meta["training"]
    assert training["steps_done"] == 3 and training["best_step"] == 3
    assert 0.0 <= training["best_dice"] <= 1.0
    assert training["train_cases"] == training["val_cases"] == ["STS_002_CT_image"]
    state = torch.load(folder / "model.pt", weights_only=True)
    build_swinunetr("tiny", 2).load_state_dict(state)  # strict: every tensor present with its shape
    last = torch.load(folder / "checkpoint_last.pt", weights_only=True)
    assert last["progress"]["step"] == 3
    lr = FinetuneConfig.__dataclass_fields__["lr"].default  # --init: the encoder slower
    assert [g["initial_lr"] for g in last["optimizer"]["param_groups"]] == pytest.approx([lr, lr * ENCODER_LR_SCALE])
    assert not [p for p in folder.iterdir() if ".partial" in p.name]
    logs = [e["message"] for e in run.of("log")]
    assert any(m.startswith("initialisation: loaded ") for m in logs)
    assert any("validating on the training case" in m for m in logs)
    assert [e["step"] for e in run.of("progress") if e["stage"] == "finetune"] == [1, 2, 3]
    assert run.of("result")[0]["best_step"] == 3


@pytest.mark.parametrize(
    ("source", "output", "extra"),
    [
        (
            "ibsi_sts/STS_003_CT_image.nii.gz",
            "sts.nii.gz",
            ["--tta", "--overlap", "0.25", "--cpu-allocator", "default"],
        ),
        ("pyradiomics/lung1_image.nrrd", "lung1.nrrd", ["--precision", "fp32", "--interpolation", "nearest"]),
        ("totalsegmentator/example_ct_dicom", "dicom.seg.nrrd", []),
    ],
)
def test_segment_writes_the_label_on_the_inputs_exact_grid(trained, shared_data, tmp_path, source, output, extra):
    folder, _ = trained
    out = tmp_path / output
    run = backend(
        "segment",
        "--model",
        str(folder),
        "--input",
        str(shared_data / source),
        "--output",
        str(out),
        "--overlap",
        "0.25",
        "--device",
        "cpu",
        *extra,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    image, label = read_image(shared_data / source), sitk.ReadImage(str(out))
    assert label.GetSize() == image.GetSize()
    np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), rtol=0, atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1}
    windows = [e for e in run.of("progress") if e["stage"] == "segment"]
    assert windows and windows[-1]["step"] == windows[-1]["total"]
    if output.endswith(".seg.nrrd"):
        segments = slicerio.read_segmentation(str(out), skip_voxels=True)["segments"]
        assert [(s["name"], s["labelValue"]) for s in segments] == [("tumour", 1)]


def test_catalogue_segmentation_network_segments_with_vocomni_class_names(tmp_path, shared_data):
    """A VoComni-like catalogue entry, saved as the official VoComni trainer saves (``best_acc`` a numpy float64),
    loads with weights_only=True and its published class names reach the result and the .seg.nrrd."""
    from voco_backend.catalogue import get_entry

    vocomni = get_entry("VoComni_B")
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in build_swinunetr("tiny", 3).state_dict().items()}
    torch.save({"epoch": 7, "best_acc": np.mean([0.81, 0.84]), "state_dict": state}, cache / "models" / "Omni_tiny.pt")
    entry = {
        "name": "Omni_tiny",
        "kind": "segmentation",
        "file": "Omni_tiny.pt",
        "url": "https://example.org/x.pt",
        "checksum": None,
        "bytes": None,
        "architecture": "SwinUNETR-v2",
        "merge_order": "monai1.3",
        "feature_size": 12,
        "out_channels": 3,
        "parameters": None,
        "description": "test network",
        "license": "Apache-2.0",
        "citation": "-",
        "recipe": {
            "spacing": [4, 4, 4],
            "window": [-175, 250],
            "roi": [64, 64, 64],
            "overlap": 0.75,
            "blend": "constant",
        },
        "classes": [dict(c) for c in vocomni.classes[:2]],
    }
    catalogue = tmp_path / "models.json"
    catalogue.write_text(json.dumps({"version": 1, "models": [entry]}))
    out = tmp_path / "omni.seg.nrrd"
    ct = shared_data / "ibsi_sts" / "STS_002_CT_image.nii.gz"
    env = {"VOCO_CATALOGUE": str(catalogue), "VOCO_CACHE_DIR": str(cache)}
    run = backend(
        "segment", "--model", "Omni_tiny", "--input", str(ct), "--output", str(out), "--overlap", "0", env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    segments = slicerio.read_segmentation(str(out), skip_voxels=True)["segments"]
    assert [(s["name"], s["labelValue"]) for s in segments] == [("spleen", 1), ("right kidney", 2)]
    assert [(c["name"], c["value"]) for c in run.of("result")[0]["classes"]] == [("spleen", 1), ("right kidney", 2)]
    assert any(e["message"].startswith("model Omni_tiny: loaded ") for e in run.of("log"))


def test_restored_label_agrees_with_the_dicom_reference_in_physical_space(shared_data):
    """A label made from the DICOM input itself (bone) in preprocessed space, restored to the DICOM grid, overlies
    TotalSegmentator's vertebrae: its label array is y-flipped against the series but aligned in physical space."""
    folder = shared_data / "totalsegmentator"
    image = read_image(folder / "example_ct_dicom")
    recipe = Recipe(spacing=(3.0, 3.0, 3.0), min_size=(64, 64, 64))
    data = preprocess(recipe, image)
    bone_hu = 150.0
    bone = data["image"][0] > (bone_hu - recipe.window[0]) / (recipe.window[1] - recipe.window[0])
    label = restore_to_grid(torch.stack([~bone, bone]).float(), np.asarray(data["image"].affine), image, [0, 1])
    assert label.GetSize() == image.GetSize() and label.GetOrigin() == image.GetOrigin()
    assert label.GetDirection() == image.GetDirection() and label.GetSpacing() == image.GetSpacing()
    restored = sitk.GetArrayFromImage(label).astype(bool)
    direct = sitk.GetArrayViewFromImage(image) > bone_hu
    assert 2 * (restored & direct).sum() / (restored.sum() + direct.sum()) > 0.7  # 3 mm round trip of thin bone
    reference = read_image(folder / "example_seg_dicom.nii.gz")
    assert reference.GetDirection()[4] == -1.0  # the reference really is stored y-flipped
    vertebrae = np.isin(sitk.GetArrayFromImage(on_reference_grid(reference, image)), VERTEBRAE_T11_T12)
    assert restored[vertebrae].mean() > 0.6
    assert restored[:, ::-1, :][vertebrae].mean() < 0.05  # what an array-index comparison would have given


def test_sigterm_saves_a_checkpoint_that_resumes_to_the_uninterrupted_run(trained, finetune_args, tmp_path):
    folder = tmp_path / "model"
    proc = start(*finetune_args, "--out", str(folder))
    for line in proc.stdout:
        if '"stage": "finetune"' in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert events(rest)[-1] == {"event": "error", "message": "cancelled", "file": None, "exit_code": 130}
    cancelled_at = torch.load(folder / "checkpoint_last.pt", weights_only=True)["progress"]["step"]
    assert 1 <= cancelled_at < 3
    assert not (folder / "model.pt").exists()  # no validation happened before the cancel
    assert not [p for p in folder.iterdir() if ".partial" in p.name]

    resumed = backend(*finetune_args, "--out", str(folder), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [e["step"] for e in resumed.of("progress")] == list(range(cancelled_at + 1, 4))
    losses = torch.load(folder / "checkpoint_last.pt", weights_only=True)["progress"]["losses"]
    reference = torch.load(trained[0] / "checkpoint_last.pt", weights_only=True)["progress"]["losses"]
    assert losses == pytest.approx(reference, rel=1e-4)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["init"]["summary"] == json.loads((trained[0] / "model.json").read_text())["init"]["summary"]
