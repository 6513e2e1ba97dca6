"""``finetune --spacing-from-fov``: the spacing at which one crop holds the whole field of view of a case.

Checked on real STS patients (extremity CT cropped about 5 cm round the tumour, 0.98 × 0.98 × 3.27 mm): at that
spacing the recipe's output of a case is about one ROI, so every crop sees the whole limb.
"""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from backend_cli import TINY_FINETUNE, backend, sts_pairs

from voco_backend.cancel import CancelToken
from voco_backend.commands.finetune import FinetuneConfig
from voco_backend.data.recipe import Recipe
from voco_backend.errors import UsageError
from voco_backend.segmentation.finetune_run import DEFAULT_WINDOW, fov_spacing
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.training_data import build_cases, read_labelled

ROI = 64
# STS_002's largest extent is 157 mm, STS_003's 167 mm: the median lies between them.
CASES = ("STS_002", "STS_003")


def test_one_crop_spans_the_median_field_of_view_of_real_cases(shared_data):
    pairs = read_labelled(*sts_pairs(shared_data, CASES), CancelToken())
    spacing = fov_spacing([p.image for p in pairs], ROI)
    assert spacing[0] == spacing[1] == spacing[2]
    recipe = Recipe(spacing=spacing, window=DEFAULT_WINDOW, min_size=(ROI,) * 3)
    smaller, larger = build_cases(pairs, [SegmentClass("tumour", 1, (1.0, 0.0, 0.0))], recipe, CancelToken())
    # The smaller field of view fits in one crop, the larger one just exceeds it: the crop spans the median.
    assert max(smaller.image.shape[1:]) == ROI
    assert ROI < max(larger.image.shape[1:]) <= ROI * 1.1


def test_the_spacing_is_never_finer_than_the_native_one():
    small = sitk.Image(20, 20, 10, sitk.sitkInt16)
    small.SetSpacing((0.8, 0.8, 2.0))  # 16 x 16 x 20 mm: 64 voxels would be 0.31 mm apart
    assert fov_spacing([small, small], ROI) == (0.8, 0.8, 0.8)


def test_finetune_records_the_spacing_in_the_model_so_segment_uses_it(shared_data, tmp_path):
    images, labels = sts_pairs(shared_data, CASES)
    out = tmp_path / "model"
    options = [o for o in TINY_FINETUNE if o not in {"--spacing", "4"}]
    run = backend(
        "finetune", "--images", *images, "--labels", *labels, "--classes", "tumour", "--steps", "1",
        "--spacing-from-fov", "--out", str(out), *options,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    expected = fov_spacing([p.image for p in read_labelled(images, labels, CancelToken())], ROI)
    assert json.loads((out / "model.json").read_text())["recipe"]["spacing"] == pytest.approx(list(expected))
    assert any("--spacing-from-fov" in e.get("message", "") for e in run.events if e["event"] == "log")


def test_spacing_and_spacing_from_fov_exclude_each_other():
    with pytest.raises(UsageError, match="'spacing' or field 'spacing_from_fov'"):
        FinetuneConfig(images=["a"], labels=["b"], out="m", spacing=[2.0, 2.0, 2.0], spacing_from_fov=True)
