"""nnU-Net v2 as the few-shot peer, driven through its own command-line tools in subprocesses.

nnU-Net has no time budget of its own. :data:`TRAINER_SOURCE` is a small subclass of its ``nnUNetTrainer``
that ends training at the first iteration boundary after ``VOCO_NNUNET_BUDGET_S`` seconds (nnU-Net's own loop
otherwise), seeds its random generators from ``VOCO_NNUNET_SEED``, and skips nnU-Net's own post-training
validation on the training fold (the benchmark predicts the validation patients itself). nnU-Net finds a
trainer by class name inside its ``nnunetv2/training/nnUNetTrainer/`` package tree only, so the file is written
there, into the nnU-Net installation that ``--nnunet-python`` names (its own virtual environment: see the
project's benchmark notes; nnunetv2 pulls torchvision, which does not import beside this project's CPU torch).

Layout, environment and commands are nnU-Net v2's documented ones: ``nnUNet_raw/DatasetNNN_NAME/{imagesTr,
labelsTr, dataset.json}`` with images named ``CASE_0000.nii.gz``; ``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results`` in a temporary folder; ``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``,
``nnUNetv2_predict``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

TRAINER = "nnUNetTrainer_VoCoBudget"
# Iterations per nnU-Net "epoch" under a budget: its validation pass and logging run once per epoch, so short
# epochs keep the time budget's end close to an epoch end (nnU-Net's default is 250 + 50 validation iterations).
ITERATIONS_PER_EPOCH = 25
VAL_ITERATIONS_PER_EPOCH = 2

TRAINER_SOURCE = f'''"""Written by VoCoSlicer's benchmarks/nnunet_peer.py: nnU-Net's trainer, a wall-clock budget."""
import os
import random
import time

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {TRAINER}(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ["VOCO_NNUNET_BUDGET_S"])
        self.num_epochs = int(os.environ.get("VOCO_NNUNET_EPOCHS", "1000"))
        self.num_iterations_per_epoch = {ITERATIONS_PER_EPOCH}
        self.num_val_iterations_per_epoch = {VAL_ITERATIONS_PER_EPOCH}
        if os.environ.get("VOCO_NNUNET_THREADS"):  # nnU-Net's CPU default is every core of the machine
            torch.set_num_threads(int(os.environ["VOCO_NNUNET_THREADS"]))
        seed = int(os.environ.get("VOCO_NNUNET_SEED", "0"))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def run_training(self):
        self.on_train_start()
        began = time.monotonic()
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                outputs.append(self.train_step(next(self.dataloader_train)))
                if time.monotonic() - began >= self.budget_s:
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val))
                       for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
            if time.monotonic() - began >= self.budget_s:
                self.print_to_log_file(f"VoCoSlicer budget of {{self.budget_s:.0f}} s reached")
                break
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities=False):
        self.print_to_log_file("VoCoSlicer: validation on the training fold skipped (the benchmark predicts)")
'''


def write_dataset(raw: Path, dataset_id: int, name: str, train: Sequence[tuple[Path, Path]]) -> str:
    """Write ``train`` (image, mask) pairs as nnU-Net raw dataset ``DatasetNNN_name``; returns the folder name.

    Masks are written as uint8 on their image's grid (nnU-Net requires integer labels whose geometry matches the
    image's exactly).
    """
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    folder = raw / folder_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for image_path, mask_path in train:
        case = image_path.name.split(".")[0].removesuffix("_image")
        image = sitk.ReadImage(str(image_path))
        mask = sitk.ReadImage(str(mask_path))
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(mask, str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(train),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder_name


def install_trainer(python: str) -> Path:
    """Write the budget trainer into the nnunetv2 package of the interpreter ``python``; returns the file."""
    found = subprocess.run(
        [python, "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise SystemExit(
            f"{python} cannot import nnunetv2 ({found.stderr.strip().splitlines()[-1:]}); "
            "install it there: pip install '.[bench]' in its own virtual environment"
        )
    target = Path(found.stdout.strip()) / "training" / "nnUNetTrainer" / f"{TRAINER}.py"
    target.write_text(TRAINER_SOURCE)
    return target


def nnunet_dice_per_patient(
    train: Sequence[tuple[Path, Path]],
    val: Sequence[tuple[Path, Path]],
    seed: int,
    budget_s: float,
    work: Path,
    python: str,
    device: str,
    dataset_id: int = 501,
    threads: int | None = None,
) -> list[float]:
    """Plan, preprocess, train for ``budget_s`` seconds and predict ``val``; Dice of class 1 per patient."""
    from voco_backend.segmentation.evaluation import class_metrics

    bin_dir = Path(python).parent
    env = {
        **os.environ,
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
        "nnUNet_n_proc_DA": "1",
        "VOCO_NNUNET_BUDGET_S": str(budget_s),
        "VOCO_NNUNET_SEED": str(seed),
        **({"VOCO_NNUNET_THREADS": str(threads)} if threads else {}),
    }
    write_dataset(work / "raw", dataset_id, "STS", train)
    install_trainer(python)
    nn_device = "cuda" if device == "cuda" else "cpu"

    def tool(name: str, *args: str) -> None:
        subprocess.run([str(bin_dir / name), *args], env=env, check=True)

    tool(
        "nnUNetv2_plan_and_preprocess",
        "-d",
        str(dataset_id),
        "-c",
        "3d_fullres",
        "-np",
        "2",
        "--verify_dataset_integrity",
    )
    tool("nnUNetv2_train", str(dataset_id), "3d_fullres", "all", "-tr", TRAINER, "-device", nn_device)
    inputs, outputs = work / "val_in", work / "val_out"
    inputs.mkdir(exist_ok=True)
    for image_path, _ in val:
        case = image_path.name.split(".")[0].removesuffix("_image")
        sitk.WriteImage(sitk.ReadImage(str(image_path)), str(inputs / f"{case}_0000.nii.gz"))
    tool(
        "nnUNetv2_predict",
        "-i",
        str(inputs),
        "-o",
        str(outputs),
        "-d",
        str(dataset_id),
        "-c",
        "3d_fullres",
        "-f",
        "all",
        "-tr",
        TRAINER,
        "-chk",
        "checkpoint_final.pth",
        "-device",
        nn_device,
    )
    dice = []
    for image_path, mask_path in val:
        case = image_path.name.split(".")[0].removesuffix("_image")
        ref = sitk.ReadImage(str(mask_path))
        pred = sitk.Resample(
            sitk.ReadImage(str(outputs / f"{case}.nii.gz")),
            ref,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
            sitk.sitkUInt8,
        )
        metrics = class_metrics(
            sitk.GetArrayViewFromImage(pred) == 1,
            sitk.GetArrayViewFromImage(ref) > 0,
            tuple(reversed(ref.GetSpacing())),
            2.0,
        )
        dice.append(float(metrics["dice"]) if metrics["dice"] is not None else float("nan"))
    return dice
