"""The merge-order record of ``model.json``: new folders run the official network, old ones their own order."""

from __future__ import annotations

import json

import torch

from voco_backend.data.recipe import Recipe
from voco_backend.networks import MERGE_MONAI13, MERGE_MONAI15, build_swinunetr
from voco_backend.segmentation.inference import Segmenter
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.model_folder import MODEL_PT, ModelInfo, read_model_info, write_model_info


def _info() -> ModelInfo:
    return ModelInfo(
        name="m",
        model_size="tiny",
        classes=[SegmentClass("liver", 1, (1.0, 0.0, 0.0))],
        recipe=Recipe(spacing=(2.0, 2.0, 2.0), window=(-175.0, 250.0), min_size=(64, 64, 64)),
        roi=(64, 64, 64),
    )


def test_a_new_model_folder_records_the_official_order(tmp_path):
    write_model_info(tmp_path, _info())
    (tmp_path / MODEL_PT).write_bytes(b"x")
    assert json.loads((tmp_path / "model.json").read_text())["architecture"]["merge_order"] == MERGE_MONAI13
    info = read_model_info(tmp_path)
    assert info.merge_order == MERGE_MONAI13 and info.note == ""


def test_a_folder_made_before_the_record_runs_in_monai_15_order_and_says_so(tmp_path):
    data = _info().to_json()
    del data["architecture"]["merge_order"]
    (tmp_path / "model.json").write_text(json.dumps(data))
    info = ModelInfo.from_json(data, tmp_path / "model.json")
    assert info.merge_order == MERGE_MONAI15
    assert "records no merge order" in info.note and "MONAI 1.5" in info.note
    torch.manual_seed(0)
    torch.save(build_swinunetr("tiny", 2, merge_order=MERGE_MONAI15).state_dict(), tmp_path / MODEL_PT)
    segmenter = Segmenter(info, tmp_path / MODEL_PT, torch.device("cpu"), "fp32", flash_attention=False)
    merges = [m for m in segmenter.model.modules() if type(m).__name__.startswith("PatchMerging")]
    assert merges and all(type(m).__name__ == "PatchMerging" for m in merges)  # MONAI's own (1.5) order


def test_vocomni_segments_with_its_authors_overlap_and_blending_unless_the_user_sets_them(tmp_path):
    """VoComni's authors run overlap 0.75 with constant blending (VOCO.md §7); our models keep 0.5 / gaussian."""
    from voco_backend.catalogue import get_entry
    from voco_backend.segmentation.inference import window_settings
    from voco_backend.segmentation.model_folder import catalogue_model_info

    vocomni = catalogue_model_info(tmp_path / get_entry("VoComni_B").file)
    assert vocomni.recipe.window == (-175.0, 250.0) and vocomni.recipe.spacing == (1.5, 1.5, 1.5)
    assert window_settings(vocomni.init, None, None) == (0.75, "constant", True)
    assert window_settings(vocomni.init, 0.25, "gaussian") == (0.25, "gaussian", False)
    assert window_settings(vocomni.init, 0.25, None) == (0.25, "constant", True)
    write_model_info(tmp_path, _info())
    (tmp_path / MODEL_PT).write_bytes(b"x")
    ours = read_model_info(tmp_path)
    assert window_settings(ours.init, None, None) == (0.5, "gaussian", False)
