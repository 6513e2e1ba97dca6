"""The nnU-Net peer's inputs, checked against nnU-Net v2's documented dataset format.

nnunetv2 is not installed in the project's environment (it lives in its own virtual environment, see
benchmarks/nnunet_peer.py), so these tests check what the benchmark hands it: the raw dataset layout and the
trainer's constructor signature, which nnU-Net reads back by name. Running nnU-Net itself is the benchmark's job.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from nnunet_peer import TRAINER, TRAINER_SOURCE, write_dataset


def test_raw_dataset_has_nnunet_names_integer_masks_on_the_image_grid_and_dataset_json(tmp_path, shared_data):
    sts = shared_data / "ibsi_sts"
    pairs = [(sts / f"STS_{n}_CT_image.nii.gz", sts / f"STS_{n}_CT_mask.nii.gz") for n in ("002", "003")]
    name = write_dataset(tmp_path, 501, "STS", pairs)
    folder = tmp_path / name
    assert name == "Dataset501_STS"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "STS_002_CT_0000.nii.gz",
        "STS_003_CT_0000.nii.gz",
    ]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["STS_002_CT.nii.gz", "STS_003_CT.nii.gz"]
    for (_, mask_path), case in zip(pairs, ("STS_002_CT", "STS_003_CT"), strict=True):
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        mask = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin())
        assert np.allclose(mask.GetSpacing(), image.GetSpacing())
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
        assert int(sitk.GetArrayViewFromImage(mask).sum()) == int((original > 0).sum())
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset == {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }


def test_budget_trainer_keeps_the_base_constructor_signature():
    tree = ast.parse(TRAINER_SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert cls.name == TRAINER and TRAINER.startswith("nnUNetTrainer")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert [a.arg for a in init.args.args] == ["self", "plans", "configuration", "fold", "dataset_json", "device"]
    assert init.args.vararg is None and init.args.kwarg is None
