"""End to end through the real backend process (``python -m voco_backend``) on the real chest CT: fine-tune a
tiny model from Slicer segmentation nodes, segment with it, and fail and cancel real runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import slicer
import vtk
from VoCoSlicerLib import BackendError, VoCoSlicerLogic
from VoCoSlicerLib.labelClasses import LabelClass
from VoCoSlicerLib.logic import RunCallbacks
from VoCoSlicerLib.sceneIO import segmentNames
from vtk.util import numpy_support

pytestmark = pytest.mark.slow


def test_finetune_from_segmentation_nodes_keeps_the_colour_table_values(tinyModel: dict[str, Any]) -> None:
    modelJson = json.loads((tinyModel["modelDir"] / "model.json").read_text())
    assert [(c["name"], c["value"]) for c in modelJson["classes"]] == [(c.name, c.value) for c in tinyModel["classes"]]
    assert [c.value for c in tinyModel["classes"]] == list(range(1, 8))
    for saved, drawn in zip(modelJson["classes"], tinyModel["classes"], strict=True):
        assert saved["color"] == pytest.approx(drawn.color, abs=1 / 255)  # the user's colours, not a palette
    assert [(e["step"], e["total"]) for e in tinyModel["progress"] if e["stage"] == "finetune"][-1] == (2, 2)
    registered = {e.name: e.path for e in VoCoSlicerLogic().catalogue.list() if e.source == "user"}
    assert Path(registered["chest model"]) == tinyModel["modelDir"]
    assert tinyModel["name"] == "chest model"  # the logic reports the registered name (model.json's), not a guess


def test_segment_gives_the_models_segments_on_the_volume_grid(scene, ctVolume, tinyModel: dict[str, Any]) -> None:
    segmentationNode = VoCoSlicerLogic().segment(ctVolume, str(tinyModel["modelDir"]), device="cpu")
    modelJson = json.loads((tinyModel["modelDir"] / "model.json").read_text())
    classes = [LabelClass.fromDict(c) for c in modelJson["classes"]]
    assert segmentNames(segmentationNode) == [c.name for c in classes]
    segmentation = segmentationNode.GetSegmentation()
    nonEmpty = 0
    for labelClass in classes:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(labelClass.name))
        assert segment.GetColor() == pytest.approx(labelClass.color, abs=1 / 255)
        labelmap = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(
            segmentation.GetSegmentIdBySegmentName(labelClass.name), labelmap
        )
        if labelmap.IsEmpty():
            continue
        nonEmpty += 1
        assert segment.GetLabelValue() == labelClass.value
        assert labelmap.GetSpacing() == pytest.approx(ctVolume.GetSpacing())
        assert labelmap.GetOrigin() == pytest.approx(ctVolume.GetOrigin(), abs=1e-3)
    assert nonEmpty > 0, "the model found nothing at all"
    expected = slicer.vtkMRMLSegmentationNode()
    expected.SetReferenceImageGeometryParameterFromVolumeNode(ctVolume)
    geometry = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert segmentation.GetConversionParameter(geometry) == expected.GetSegmentation().GetConversionParameter(geometry)
    colorNode = segmentationNode.GetLabelmapConversionColorTableNode()
    assert [colorNode.GetColorName(c.value) for c in classes] == [c.name for c in classes]


def test_a_broken_model_folder_is_one_line_and_no_node(scene, nodeIds, ctVolume, tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{not json")
    (tmp_path / "model.pt").write_bytes(b"")
    before = nodeIds(scene)
    with pytest.raises(BackendError) as error:
        VoCoSlicerLogic().segment(ctVolume, str(tmp_path), device="cpu")
    assert error.value.outcome.exitCode == 3
    assert str(error.value).startswith("bad input data: ") and "model.json" in str(error.value)
    assert "\n" not in str(error.value)
    assert nodeIds(scene) == before


def test_cancel_a_real_finetune_mid_run(scene, nodeIds, ctVolume, manualSegmentation, tmp_path: Path, pidAlive) -> None:
    before = nodeIds(scene)
    logs: list[str] = []
    run = VoCoSlicerLogic().startFinetune(
        [ctVolume],
        [manualSegmentation],
        tmp_path / "cancelled",
        callbacks=RunCallbacks(onLog=logs.append),
        register=False,
        steps=1000,
        modelSize="tiny",
        roi=64,
        init="none",
        device="cpu",
    )
    deadline = time.monotonic() + 120
    while run.poll() and not any("classes from" in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.running, f"the run ended before it could be cancelled: {run.outcome}"
    run.cancel()
    outcome = run.wait()
    # 130: the backend stopped at its next cancel check within the grace period; -9: a step on a crowded CPU
    # outlasted it and the tree was killed. Either way the user sees "cancelled" and nothing is left running.
    assert outcome.exitCode in (130, -9)
    assert (outcome.message, outcome.output) == ("cancelled", None)
    assert not pidAlive(run.pid)
    assert nodeIds(scene) == before


def test_segment_all_imports_every_volume_it_could_and_names_the_one_it_could_not(
    scene, ctVolume, chestCtFiles, tinyModel: dict[str, Any]
) -> None:
    from conftest import loadVolume

    second = loadVolume(scene, chestCtFiles["ct"])
    sheared = loadVolume(scene, chestCtFiles["ct"])
    sheared.SetName("sheared chest")
    matrix = vtk.vtkMatrix4x4()
    sheared.GetIJKToRASMatrix(matrix)
    matrix.SetElement(0, 1, matrix.GetElement(1, 1) * 0.5)  # a sheared grid: the backend refuses it (bad data)
    sheared.SetIJKToRASMatrix(matrix)
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    outcome = (
        VoCoSlicerLogic().startSegmentAll([ctVolume, sheared, second], str(tinyModel["modelDir"]), device="cpu").wait()
    )
    assert outcome.exitCode == 3
    assert outcome.message.startswith(f"1 of 3 volumes failed, the others are segmented: '{sheared.GetName()}': ")
    assert "not orthonormal" in outcome.message and "\n" not in outcome.message
    nodes = outcome.output
    assert len(nodes) == 2 and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before + 2
    names = [c.name for c in tinyModel["classes"]]
    geometry = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    for node, volume in zip(nodes, (ctVolume, second), strict=True):
        assert segmentNames(node) == names
        expected = slicer.vtkMRMLSegmentationNode()
        expected.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        wanted = expected.GetSegmentation().GetConversionParameter(geometry)
        assert node.GetSegmentation().GetConversionParameter(geometry) == wanted
    alone = VoCoSlicerLogic().segment(second, str(tinyModel["modelDir"]), device="cpu")  # one by one: the same
    for name in names:
        labelmaps = []
        for node in (nodes[1], alone):
            labelmap = slicer.vtkOrientedImageData()
            node.GetBinaryLabelmapRepresentation(node.GetSegmentation().GetSegmentIdBySegmentName(name), labelmap)
            scalars = labelmap.GetPointData().GetScalars()
            voxels = numpy_support.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0)
            labelmaps.append((labelmap.GetExtent(), np.flatnonzero(voxels).tolist()))
        assert labelmaps[0] == labelmaps[1], name
