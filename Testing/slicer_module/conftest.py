"""Slicer without Slicer: slicer-core's real MRML scene and module logics, real CT nodes, a protocol stand-in.

The session scene is set up the way Slicer's application does it (ARCHITECTURE.md, "Testing Slicer without
Slicer"); each test gets it back with only the nodes it found, so tests cannot leak nodes into each other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import slicer

TESTING_DIR = Path(__file__).resolve().parents[1]
MODULE_DIR = TESTING_DIR.parent / "VoCoSlicer"
FAKE_BACKEND = Path(__file__).resolve().parent / "fake_backend.py"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def _moduleLogics() -> dict[str, type]:
    return {
        "Colors": slicer.vtkSlicerColorLogic,
        "Volumes": slicer.vtkSlicerVolumesLogic,
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
        "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
    }


@pytest.fixture(scope="session")
def slicerApp() -> Iterator[slicer.vtkSlicerApplicationLogic]:
    """``slicer.mrmlScene`` with the application logic, default colour nodes and the module logics."""
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    logics = []
    for name, logicClass in _moduleLogics().items():
        logic = logicClass()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)  # the colour logic adds the default colour tables here
        appLogic.SetModuleLogic(name, logic)
        logics.append(logic)
    slicer.mrmlScene = scene
    yield appLogic
    del slicer.mrmlScene


def _nodeIds(scene: slicer.vtkMRMLScene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture
def nodeIds() -> Callable[[slicer.vtkMRMLScene], list[str]]:
    """The IDs of all nodes of a scene, in order: to check that a scene is unchanged."""
    return _nodeIds


@pytest.fixture
def scene(slicerApp: slicer.vtkSlicerApplicationLogic) -> Iterator[slicer.vtkMRMLScene]:
    """The session scene; nodes a test adds are removed afterwards."""
    scene = slicer.mrmlScene
    before = set(_nodeIds(scene))
    yield scene
    _removeNodesSince(scene, before)


def _removeNodesSince(scene: slicer.vtkMRMLScene, before: set[str]) -> None:
    """Remove the nodes not in ``before`` and every subject hierarchy item (Slicer's plugins are absent here)."""
    scene.GetSubjectHierarchyNode().RemoveAllItems()
    for nodeId in reversed(_nodeIds(scene)):
        if nodeId not in before and scene.GetNodeByID(nodeId) is not None:
            scene.RemoveNode(scene.GetNodeByID(nodeId))


@pytest.fixture(scope="session")
def chestCtFiles(shared_data: Path) -> dict[str, Path]:
    """slicerio's real chest CT and its 7 manual segments, from ``../shared/data``."""
    folder = shared_data / "slicerio"
    return {"ct": folder / "CTChest4.nrrd", "segmentation": folder / "Segmentation.seg.nrrd"}


def loadVolume(scene: slicer.vtkMRMLScene, path: Path) -> slicer.vtkMRMLScalarVolumeNode:
    """Load a CT with a storage node and file it under a patient/study, as Slicer's Add Data does."""
    volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storageNode = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storageNode.SetFileName(str(path))
    assert storageNode.ReadData(volumeNode), path
    volumeNode.SetAndObserveStorageNodeID(storageNode.GetID())
    volumeNode.CreateDefaultDisplayNodes()
    shNode = scene.GetSubjectHierarchyNode()
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient")
    study = shNode.CreateStudyItem(patient, "Study")
    shNode.CreateItem(study, volumeNode)
    return volumeNode


def loadSegmentation(
    scene: slicer.vtkMRMLScene, path: Path, volumeNode: slicer.vtkMRMLScalarVolumeNode
) -> slicer.vtkMRMLSegmentationNode:
    """Read a ``.seg.nrrd`` with Slicer's own segmentation storage node, drawn on ``volumeNode``."""
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    storageNode = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storageNode.SetFileName(str(path))
    assert storageNode.ReadData(segmentationNode), path
    segmentationNode.SetAndObserveStorageNodeID(storageNode.GetID())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return segmentationNode


@pytest.fixture
def ctVolume(scene: slicer.vtkMRMLScene, chestCtFiles: dict[str, Path]) -> slicer.vtkMRMLScalarVolumeNode:
    """CTChest4 as a volume node in the scene."""
    return loadVolume(scene, chestCtFiles["ct"])


@pytest.fixture
def manualSegmentation(
    scene: slicer.vtkMRMLScene, chestCtFiles: dict[str, Path], ctVolume: slicer.vtkMRMLScalarVolumeNode
) -> slicer.vtkMRMLSegmentationNode:
    """The 7 manual segments of CTChest4 (ribs … tissue) as a segmentation node."""
    return loadSegmentation(scene, chestCtFiles["segmentation"], ctVolume)


@pytest.fixture
def fakeBackend() -> Callable[[str], list[str]]:
    """The argv prefix that runs the protocol stand-in (``fake_backend.py``) in a scenario."""
    return lambda scenario: [sys.executable, str(FAKE_BACKEND), scenario]


def _pidAlive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def pidAlive() -> Callable[[int], bool]:
    """Whether a process exists and is not a zombie (Linux ``/proc``)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("process checks need Linux /proc")
    return _pidAlive


# 6 mm resampling keeps the backend's validation and inference to a few windows on a shared CPU.
TINY_RUN = {
    "steps": 2,
    "modelSize": "tiny",
    "roi": 64,
    "spacing": (6.0, 6.0, 6.0),
    "init": "none",
    "device": "cpu",
    "seed": 0,
}


@pytest.fixture(scope="session")
def tinyModel(
    slicerApp: slicer.vtkSlicerApplicationLogic, chestCtFiles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A tiny model fine-tuned by the real backend (2 steps, roi 64, 6 mm) from the manual segments of CTChest4.

    The model is registered in a private model cache (``VOCO_CACHE_DIR``) that stays set for the session.
    """
    from VoCoSlicerLib import VoCoSlicerLogic
    from VoCoSlicerLib.logic import RunCallbacks
    from VoCoSlicerLib.sceneIO import trainingClasses

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VOCO_CACHE_DIR", str(tmp_path_factory.mktemp("voco_cache")))
        scene = slicer.mrmlScene
        before = set(_nodeIds(scene))
        volumeNode = loadVolume(scene, chestCtFiles["ct"])
        segmentationNode = loadSegmentation(scene, chestCtFiles["segmentation"], volumeNode)
        progress: list[dict[str, Any]] = []
        model = VoCoSlicerLogic().finetune(
            [volumeNode],
            [segmentationNode],
            tmp_path_factory.mktemp("models") / "chest model",
            callbacks=RunCallbacks(onProgress=progress.append),
            **TINY_RUN,
        )
        classes = trainingClasses([segmentationNode])
        _removeNodesSince(scene, before)
        yield {"modelDir": Path(model.folder), "name": model.name, "classes": classes, "progress": progress}
