"""The public logic API on the real MRML scene, with the backend replaced by a real protocol-speaking process."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from VoCoSlicerLib import BackendError, BackendRunner, VoCoSlicerLogic
from VoCoSlicerLib.logic import FinetunedModel, RunCallbacks
from VoCoSlicerLib.sceneIO import segmentNames

from voco_backend.segmentation.labels import read_color_table

MODEL = "/models/chest model"


def test_segment_returns_a_named_segmentation_and_cleans_its_files(scene, ctVolume, fakeBackend) -> None:
    progress = []
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend("ok")))
    segmentationNode = logic.segment(ctVolume, MODEL, device="cpu", callbacks=RunCallbacks(onProgress=progress.append))
    assert segmentNames(segmentationNode) == ["liver", "right lung"]
    assert [e["step"] for e in progress] == [1, 2, 3]
    assert segmentationNode.GetScene() is scene


def test_a_backend_failure_is_one_line_and_leaves_the_scene_as_it_was(scene, nodeIds, ctVolume, fakeBackend) -> None:
    before = nodeIds(scene)
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend("baddata")))
    with pytest.raises(BackendError) as error:
        logic.segment(ctVolume, MODEL)
    assert str(error.value) == "bad input data: /data/ct.nrrd: cannot read the image (truncated file)"
    assert error.value.outcome.exitCode == 3
    assert nodeIds(scene) == before


def test_lines_that_only_look_like_events_are_ignored_and_the_run_still_succeeds(scene, ctVolume, fakeBackend) -> None:
    progress, logs = [], []
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend("garbage")))
    callbacks = RunCallbacks(onProgress=progress.append, onLog=logs.append)
    segmentationNode = logic.segment(ctVolume, MODEL, device="cpu", callbacks=callbacks)
    assert segmentNames(segmentationNode) == ["liver", "right lung"]
    assert [e["step"] for e in progress] == [1, 2, 3]
    # The undecodable bytes arrive replaced (U+FFFD), not as an exception in the reader.
    assert any("\ufffd" in line and "bytes that are not UTF-8" in line for line in logs)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("killed", "the backend was stopped by signal 9"),
        ("nooutput", "cannot read the segmentation result"),
    ],
)
def test_a_backend_that_dies_or_writes_nothing_is_one_line_and_leaves_the_scene_as_it_was(
    scene, nodeIds, ctVolume, fakeBackend, scenario: str, expected: str
) -> None:
    before = nodeIds(scene)
    workDirs = set(Path(tempfile.gettempdir()).glob("VoCoSlicer-segment-*"))
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend(scenario)))
    with pytest.raises(BackendError) as error:
        logic.segment(ctVolume, MODEL)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert nodeIds(scene) == before
    assert set(Path(tempfile.gettempdir()).glob("VoCoSlicer-segment-*")) == workDirs  # its files are gone too


def test_cancel_mid_run_stops_the_process_tree_and_leaves_the_scene(
    scene, nodeIds, ctVolume, fakeBackend, pidAlive
) -> None:
    before = nodeIds(scene)
    progress, finished = [], []
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend("hang"), cancelGraceSeconds=2.0))
    run = logic.startSegment(
        ctVolume, MODEL, callbacks=RunCallbacks(onProgress=progress.append, onFinished=finished.append)
    )
    deadline = time.monotonic() + 20
    while run.poll() and not progress and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [run.pid, progress[0]["child_pid"]]
    run.cancel()
    outcome = run.wait()
    assert finished == [outcome] and outcome.message == "cancelled" and outcome.output is None
    assert nodeIds(scene) == before
    deadline = time.monotonic() + 10
    while any(pidAlive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pidAlive(pid) for pid in pids)


def test_finetune_passes_the_segment_names_with_their_label_values(
    scene, ctVolume, manualSegmentation, tmp_path, fakeBackend
) -> None:
    finished = []
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend("ok")))
    run = logic.startFinetune(
        [ctVolume],
        [manualSegmentation],
        tmp_path / "new model",
        callbacks=RunCallbacks(onFinished=finished.append),
        register=False,
        steps=3,
        modelSize="tiny",
    )
    outcome = run.wait()
    assert outcome.ok and outcome.output == FinetunedModel(str((tmp_path / "new model").resolve()))
    argv = outcome.result["argv"]
    table = tmp_path / "classes.csv"
    table.write_text(outcome.result["colorTable"])  # what the backend read, parsed by the backend's own reader
    classes = read_color_table(table)
    assert [(c.name, c.value) for c in classes] == [
        ("ribs", 1),
        ("cervical vertebral column", 2),
        ("thoracic vertebral column", 3),
        ("lumbar vertebral column", 4),
        ("right lung", 5),
        ("left lung", 6),
        ("tissue", 7),
    ]
    drawn = manualSegmentation.GetSegmentation().GetSegment(
        manualSegmentation.GetSegmentation().GetSegmentIdBySegmentName("right lung")
    )
    assert classes[4].color == pytest.approx(drawn.GetColor(), abs=1 / 255)
    image, label = argv[argv.index("--images") + 1], argv[argv.index("--labels") + 1]
    assert not Path(image).exists() and not Path(label).exists(), "the temporary files were not removed"


def _roiAroundTheVolumeCentre(scene, volumeNode, size):
    bounds = [0.0] * 6
    volumeNode.GetRASBounds(bounds)
    roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "region")
    roiNode.SetCenter([(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)])
    roiNode.SetSize(size)
    return roiNode


def test_segment_inside_an_roi_markup_passes_the_box_of_its_world_bounds_in_the_volumes_frame(
    scene, ctVolume, fakeBackend, tmp_path
) -> None:
    """A real vtkMRMLMarkupsROINode (slicer-core's MRML) on a volume moved by a parent transform: the backend gets
    the box in the frame the volume is exported in, and reads it as exactly the voxels inside the ROI in world."""
    import numpy as np
    import vtk
    from VoCoSlicerLib.sceneIO import exportVolume

    from voco_backend.data.io import read_image
    from voco_backend.segmentation.region import box_region

    shift = (15.0, -20.0, 35.0)
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    for axis, offset in enumerate(shift):
        matrix.SetElement(axis, 3, offset)
    transformNode.SetMatrixTransformToParent(matrix)
    ctVolume.SetAndObserveTransformNodeID(transformNode.GetID())
    roiNode = _roiAroundTheVolumeCentre(scene, ctVolume, (90.0, 60.0, 120.0))
    worldBounds = [0.0] * 6
    roiNode.GetRASBounds(worldBounds)
    logic = VoCoSlicerLogic(runner=BackendRunner(fakeBackend("ok")))
    outcome = logic.startSegment(ctVolume, MODEL, device="cpu", roiNode=roiNode).wait()
    assert outcome.ok
    argv = outcome.result["argv"]
    box = [float(v) for v in argv[argv.index("--roi-box") + 1 : argv.index("--roi-box") + 7]]
    expected = [worldBounds[2 * a + side] - shift[a] for side in (0, 1) for a in range(3)]
    assert box == pytest.approx(expected)
    region = box_region(read_image(exportVolume(ctVolume, tmp_path / "ct.nrrd")), box)
    ijkToRas = vtk.vtkMatrix4x4()
    ctVolume.GetIJKToRASMatrix(ijkToRas)
    dims = ctVolume.GetImageData().GetDimensions()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in dims], indexing="ij"), -1).reshape(-1, 3)
    matrix = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    world = ijk @ matrix[:3, :3].T + matrix[:3, 3] + shift
    inside = np.all((world >= worldBounds[0::2]) & (world <= worldBounds[1::2]), axis=1)
    assert region.voxels == inside.sum() > 0
    assert tuple(ijk[inside].min(0)) == region.start and tuple(ijk[inside].max(0) + 1) == region.stop
    assert "--roi-box" not in logic.startSegment(ctVolume, MODEL, device="cpu").wait().result["argv"]
