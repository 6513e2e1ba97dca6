"""``finetune --window-from-labels``: nnU-Net's CT normalisation (the foreground's 0.5–99.5 HU percentiles) as window.

Checked on real STS patients (soft-tissue tumours in extremity CT, air clipped at -1000 HU): the window must hold
the tumour's intensities and leave out the air and bone a fixed -1000…1000 window spends its range on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from backend_cli import TINY_FINETUNE, backend, sts_pairs

from voco_backend.cancel import CancelToken
from voco_backend.commands.finetune import FinetuneConfig
from voco_backend.errors import UsageError
from voco_backend.segmentation.finetune_run import foreground_window
from voco_backend.segmentation.training_data import read_labelled

CASES = ("STS_002", "STS_003")


def test_the_window_holds_the_tumours_intensities_and_leaves_out_air(shared_data):
    images, labels = sts_pairs(shared_data, CASES)
    pairs = read_labelled(images, labels, CancelToken())
    low, high = foreground_window(pairs)
    tumour = np.concatenate(
        [sitk.GetArrayViewFromImage(p.image)[sitk.GetArrayViewFromImage(p.label) > 0] for p in pairs]
    )
    everything = np.concatenate([sitk.GetArrayViewFromImage(p.image).ravel() for p in pairs])
    # Soft tissue: well inside -1000…1000; 0.5 % of the tumour's voxels below the window and 0.5 % above.
    assert -500 < low < high < 500
    assert np.mean(tumour < low) == pytest.approx(0.005, abs=0.001)
    assert np.mean(tumour > high) == pytest.approx(0.005, abs=0.001)
    # The air around the limb (-1000 HU) is outside the window: it is no longer part of the intensity range.
    assert np.mean(everything < low) > 0.05


def test_finetune_records_the_labels_window_in_the_model_so_segment_uses_it(shared_data, tmp_path):
    images, labels = sts_pairs(shared_data, CASES)
    out = tmp_path / "model"
    run = backend(
        "finetune", "--images", *images, "--labels", *labels, "--classes", "tumour", "--steps", "1",
        "--window-from-labels", "--out", str(out), *TINY_FINETUNE,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    expected = foreground_window(read_labelled(images, labels, CancelToken()))
    recipe = json.loads((out / "model.json").read_text())["recipe"]
    assert recipe["window"] == pytest.approx(list(expected))
    assert any("--window-from-labels" in e.get("message", "") for e in run.events if e["event"] == "log")


def test_a_window_and_the_labels_window_together_are_refused():
    with pytest.raises(UsageError, match="'window' or field 'window_from_labels'"):
        FinetuneConfig(images=["a"], labels=["b"], out="m", window=[-100.0, 200.0], window_from_labels=True)
