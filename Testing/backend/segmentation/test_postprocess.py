"""Largest-component post-processing: chosen per class on validation, recorded in model.json, applied by segment.

The component labelling is checked against SciPy's ``ndimage.label`` with the full 3×3×3 structure (the
26-connectivity nnU-Net's ``skimage.measure.label`` uses in 3-D). The fine-tuning tests use a stand-in network
that outputs a fixed prediction (the choice, not the network, is under test); the segment test uses a real tiny
SwinUNETR whose blended probabilities are replaced by constructed ones, so the post-processing of the label map
restored onto the input's grid is what is checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from backend_cli import loop_schedule
from scipy import ndimage

from voco_backend.data.recipe import Recipe
from voco_backend.errors import DataError
from voco_backend.networks import build_swinunetr
from voco_backend.segmentation import finetune as finetune_module
from voco_backend.segmentation import inference
from voco_backend.segmentation.finetune import FineTuner
from voco_backend.segmentation.inference import Segmenter
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.model_folder import MODEL_PT, ModelInfo, read_model_info, write_model_info
from voco_backend.segmentation.postprocess import keep_largest_component

SIDE = 32


@pytest.mark.parametrize("seed", range(5))
def test_each_chosen_class_keeps_its_largest_26_connected_component_as_scipy_labels_it(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2], size=(20, 20, 20), p=[0.8, 0.12, 0.08]).astype(np.uint8)
    out = keep_largest_component(labels, [1])
    components, count = ndimage.label(labels == 1, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    assert count > 1 and np.sort(sizes)[-1] > np.sort(sizes)[-2]  # a unique largest component to compare
    np.testing.assert_array_equal(out == 1, components == 1 + int(np.argmax(sizes)))
    np.testing.assert_array_equal(out == 2, labels == 2)  # a class not chosen is left alone
    assert set(np.unique(out[(labels == 1) & (out != 1)])) <= {0}  # what is cut becomes background


def test_voxels_touching_only_at_a_corner_are_one_component():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1
    np.testing.assert_array_equal(keep_largest_component(labels, [1]), labels)


class FixedPrediction(torch.nn.Module):
    """Stand-in network: logits whose argmax is ``prediction`` wherever the window is."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(prediction.long(), 2).permute(3, 0, 1, 2) * 10.0)
        self.weight = torch.nn.Parameter(torch.zeros(()))  # something for the optimiser

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None].expand(x.shape[0], -1, -1, -1, -1) + self.weight


def _tuner(folder, reference: torch.Tensor, prediction: torch.Tensor) -> FineTuner:
    case = finetune_module.Case("c", torch.rand(1, SIDE, SIDE, SIDE), reference[None].to(torch.uint8))
    info = ModelInfo("t", "tiny", [SegmentClass("tumour", 1, (1.0, 0.0, 0.0))], Recipe(), (SIDE,) * 3)
    schedule = loop_schedule(val_every=1, checkpoint_every=1)
    return FineTuner(FixedPrediction(prediction), info, folder, schedule, torch.device("cpu"), [case], [case])


def _cube(volume: torch.Tensor, start: int, side: int) -> None:
    volume[start : start + side, start : start + side, start : start + side] = 1


def test_finetune_keeps_the_largest_component_where_it_raises_the_validation_dice(tmp_path):
    reference = torch.zeros(SIDE, SIDE, SIDE)
    _cube(reference, 4, 10)
    prediction = reference.clone()
    _cube(prediction, 24, 4)  # a false positive away from the tumour
    tuner = _tuner(tmp_path, reference, prediction)
    tuner.progress.losses.append(0.0)
    tuner.validate(finetune_module.CancelToken())
    last = tuner.progress.validations[-1]
    raw = 2 * 1000 / (2 * 1000 + 64)
    assert last["dice_as_predicted"] == pytest.approx(raw, rel=1e-6)
    assert last["dice"] == pytest.approx(1.0) and last["largest_component"] == ["tumour"]
    assert (tmp_path / MODEL_PT).is_file()
    assert json.loads((tmp_path / "model.json").read_text())["postprocess"] == {"largest_component": ["tumour"]}
    assert read_model_info(tmp_path).largest_component_values == [1]


def test_finetune_leaves_a_class_with_two_true_parts_as_predicted(tmp_path):
    reference = torch.zeros(SIDE, SIDE, SIDE)
    _cube(reference, 2, 10)
    _cube(reference, 20, 8)  # the second lung, say: cutting it away lowers the Dice
    tuner = _tuner(tmp_path, reference, reference.clone())
    tuner.progress.losses.append(0.0)
    tuner.validate(finetune_module.CancelToken())
    assert tuner.progress.validations[-1]["largest_component"] == []
    assert tuner.progress.validations[-1]["dice"] == pytest.approx(1.0)
    assert read_model_info(tmp_path).largest_component == []


def test_a_model_json_naming_a_class_it_lacks_is_refused_in_one_line(tmp_path):
    info = ModelInfo("m", "tiny", [SegmentClass("liver", 1, (1.0, 0.0, 0.0))], Recipe(), (64, 64, 64))
    write_model_info(tmp_path, info)
    document = json.loads((tmp_path / "model.json").read_text())
    document["postprocess"] = {"largest_component": ["spleen"]}
    (tmp_path / "model.json").write_text(json.dumps(document))
    (tmp_path / MODEL_PT).write_bytes(b"x")
    with pytest.raises(DataError, match="spleen") as caught:
        read_model_info(tmp_path)
    assert "\n" not in str(caught.value) and "model.json" in str(caught.value)


def test_segment_applies_the_recorded_post_processing_on_the_inputs_grid(tmp_path, monkeypatch):
    info = ModelInfo(
        "m",
        "tiny",
        [SegmentClass("tumour", 3, (1.0, 0.0, 0.0))],
        Recipe(spacing=None, crop_foreground=False, min_size=(64, 64, 64)),
        (64, 64, 64),
        largest_component=["tumour"],
    )
    torch.save(build_swinunetr("tiny", 2).state_dict(), tmp_path / MODEL_PT)
    segmenter = Segmenter(info, tmp_path / MODEL_PT, torch.device("cpu"))

    def two_blobs(model, image, roi, **kwargs):
        foreground = torch.zeros(image.shape[1:])
        foreground[5:25, 5:25, 5:25] = 1.0
        foreground[45:50, 45:50, 45:50] = 1.0
        return torch.stack([1.0 - foreground, foreground])

    monkeypatch.setattr(inference, "sliding_window_probabilities", two_blobs)
    image = sitk.GetImageFromArray(np.full((64, 64, 64), 40, np.int16))
    image.SetSpacing((0.8, 0.8, 2.0))
    raw = segmenter.segment(image, overlap=0.25, postprocess=False)
    kept = segmenter.segment(image, overlap=0.25)

    def components(label: sitk.Image) -> list[int]:
        shapes = sitk.LabelShapeStatisticsImageFilter()
        shapes.Execute(sitk.ConnectedComponent(label == 3, True))
        return sorted(shapes.GetNumberOfPixels(c) for c in shapes.GetLabels())

    assert len(components(raw)) == 2
    assert components(kept) == components(raw)[-1:]
    assert kept.GetSpacing() == image.GetSpacing() and kept.GetSize() == image.GetSize()
