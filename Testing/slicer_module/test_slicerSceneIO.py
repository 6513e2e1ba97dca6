"""Scene ↔ files on real MRML with the real chest CT: names, colours, label values and geometry survive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from VoCoSlicerLib.labelClasses import LabelClass
from VoCoSlicerLib.sceneIO import (
    SceneIOError,
    colorTableFromClasses,
    exportTrainingLabels,
    exportVolume,
    importSegmentation,
    segmentNames,
    trainingClasses,
)

CLASSES = [LabelClass("liver", 2, (1.0, 0.0, 0.0)), LabelClass("right lung", 7, (0.0, 0.5, 1.0))]


def writeLabel(array: np.ndarray, volumeNode, path: Path) -> Path:
    """Write ``array`` (K, J, I) as a label map on ``volumeNode``'s grid, outside the scene."""
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    slicer.util.updateVolumeFromArray(labelmapNode, array)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    labelmapNode.SetIJKToRASMatrix(matrix)
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    assert storageNode.WriteData(labelmapNode)
    return path


def twoClassLabel(volumeNode) -> np.ndarray:
    array = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, dtype=np.int16)
    array[10:20, 30:60, 30:60] = 2
    array[5:8, 70:90, 70:90] = 7
    return array


def segmentMask(segmentationNode, segmentName: str, volumeNode) -> np.ndarray:
    """One segment as a boolean array on the volume's grid (Slicer's own export of that single segment)."""
    scene = segmentationNode.GetScene()
    segmentIds = vtk.vtkStringArray()
    segmentIds.InsertNextValue(segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName))
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    colorNode = colorTableFromClasses([LabelClass(segmentName, 1, (1.0, 1.0, 1.0))], scene, "one segment")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentationNode,
        segmentIds,
        labelmapNode,
        volumeNode,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        colorNode,
    )
    return slicer.util.arrayFromVolume(labelmapNode) > 0


def addSegment(segmentationNode, name: str, mask: np.ndarray, volumeNode, tmp_path: Path) -> None:
    """Add a segment drawn as ``mask`` on the volume's grid, as the Segment Editor would."""
    scratch = slicer.vtkMRMLScene()
    labelmapNode = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    _, read = readLabel(writeLabel(mask.astype(np.int16), volumeNode, tmp_path / f"{name}.nrrd"))
    labelmapNode.Copy(read)
    labelmapNode.SetAndObserveImageData(read.GetImageData())
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode)
    segmentation = segmentationNode.GetSegmentation()
    segmentation.GetNthSegment(segmentation.GetNumberOfSegments() - 1).SetName(name)


def readLabel(path: Path) -> tuple[np.ndarray, slicer.vtkMRMLLabelMapVolumeNode]:
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    assert storageNode.ReadData(labelmapNode)
    return slicer.util.arrayFromVolume(labelmapNode), labelmapNode


def segmentsByName(segmentationNode) -> dict[str, tuple[tuple[float, ...], int]]:
    segmentation = segmentationNode.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    return {segment.GetName(): (segment.GetColor(), segment.GetLabelValue()) for segment in segments}


def test_a_result_becomes_named_coloured_segments_on_the_volume_grid(scene, ctVolume, tmp_path) -> None:
    label = twoClassLabel(ctVolume)
    segmentationNode = importSegmentation(writeLabel(label, ctVolume, tmp_path / "l.nrrd"), ctVolume, CLASSES, "chest")
    segments = segmentsByName(segmentationNode)
    assert segmentationNode.GetName() == "CTChest4 chest"
    assert {name: value for name, (_, value) in segments.items()} == {"liver": 2, "right lung": 7}
    for labelClass in CLASSES:  # colour tables keep 8 bits per channel
        assert segments[labelClass.name][0] == pytest.approx(labelClass.color, abs=1 / 255)
    colorNode = segmentationNode.GetLabelmapConversionColorTableNode()
    assert (colorNode.GetColorName(2), colorNode.GetColorName(7)) == ("liver", "right lung")
    for name, value in (("liver", 2), ("right lung", 7)):
        np.testing.assert_array_equal(segmentMask(segmentationNode, name, ctVolume), label == value)
    referenceGeometry = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    expected = slicer.vtkMRMLSegmentationNode()
    expected.SetReferenceImageGeometryParameterFromVolumeNode(ctVolume)
    assert segmentationNode.GetSegmentation().GetConversionParameter(
        referenceGeometry
    ) == expected.GetSegmentation().GetConversionParameter(referenceGeometry)
    shNode = scene.GetSubjectHierarchyNode()
    assert shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)) == shNode.GetItemParent(
        shNode.GetItemByDataNode(ctVolume)
    )


def test_a_result_replaces_the_segments_of_a_given_node(scene, manualSegmentation, ctVolume, tmp_path) -> None:
    labelPath = writeLabel(twoClassLabel(ctVolume), ctVolume, tmp_path / "l.nrrd")
    assert importSegmentation(labelPath, ctVolume, CLASSES, "chest", manualSegmentation) is manualSegmentation
    assert segmentNames(manualSegmentation) == ["liver", "right lung"]


@pytest.mark.parametrize("problem", ["missing file", "other grid"])
def test_a_bad_result_leaves_the_scene_as_it_was(scene, nodeIds, ctVolume, tmp_path, problem: str) -> None:
    labelPath = tmp_path / "l.nrrd"
    if problem == "other grid":
        writeLabel(twoClassLabel(ctVolume)[:, :, :64], ctVolume, labelPath)
    before = nodeIds(scene)
    with pytest.raises(SceneIOError, match="segmentation result"):
        importSegmentation(labelPath, ctVolume, CLASSES, "chest")
    assert nodeIds(scene) == before


def test_exporting_a_volume_keeps_voxels_and_geometry(scene, nodeIds, ctVolume, tmp_path) -> None:
    before = nodeIds(scene)
    array, written = readLabel(Path(exportVolume(ctVolume, tmp_path / "ct.nrrd")))
    np.testing.assert_array_equal(array, slicer.util.arrayFromVolume(ctVolume))
    assert written.GetSpacing() == pytest.approx(ctVolume.GetSpacing())
    assert written.GetOrigin() == pytest.approx(ctVolume.GetOrigin())
    assert nodeIds(scene) == before


def test_training_labels_of_the_manual_segments_hold_the_colour_table_values(
    scene, nodeIds, manualSegmentation, ctVolume, tmp_path, sample_segment_names
) -> None:
    before = nodeIds(scene)
    classes = trainingClasses([manualSegmentation])
    assert [(c.value, c.name) for c in classes] == list(enumerate(sample_segment_names, start=1))
    array, _ = readLabel(Path(exportTrainingLabels(manualSegmentation, ctVolume, classes, tmp_path / "label.nrrd")))
    assert nodeIds(scene) == before
    assert array.shape == slicer.util.arrayFromVolume(ctVolume).shape
    for labelClass in classes:
        mask = segmentMask(manualSegmentation, labelClass.name, ctVolume)
        assert mask.any()
        np.testing.assert_array_equal(array[mask], labelClass.value)


def test_a_model_result_corrected_by_the_user_keeps_its_label_values(scene, ctVolume, tmp_path) -> None:
    labelPath = writeLabel(twoClassLabel(ctVolume), ctVolume, tmp_path / "l.nrrd")
    segmentationNode = importSegmentation(labelPath, ctVolume, CLASSES, "chest")
    tumour = np.zeros(slicer.util.arrayFromVolume(ctVolume).shape, dtype=bool)
    tumour[25:28, 100:110, 100:110] = True
    addSegment(segmentationNode, "tumour", tumour, ctVolume, tmp_path)
    classes = trainingClasses([segmentationNode])
    assert [(c.name, c.value) for c in classes] == [("liver", 2), ("right lung", 7), ("tumour", 8)]
    array, _ = readLabel(Path(exportTrainingLabels(segmentationNode, ctVolume, classes, tmp_path / "t.nrrd")))
    np.testing.assert_array_equal(array, np.where(tumour, 8, twoClassLabel(ctVolume)))


def test_segments_outside_the_classes_are_refused(scene, manualSegmentation, ctVolume, tmp_path) -> None:
    with pytest.raises(SceneIOError, match="segments outside the classes: cervical vertebral column"):
        exportTrainingLabels(manualSegmentation, ctVolume, [LabelClass("ribs", 1, (1, 1, 1))], tmp_path / "l.nrrd")
