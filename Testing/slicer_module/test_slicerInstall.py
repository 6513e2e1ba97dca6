"""Installing into Slicer's Python, the supported Slicer range, the colour table the backend reads, the result's
transform and the Windows-style cancel file."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import pytest
import slicer
from VoCoSlicerLib import backendEnvironment
from VoCoSlicerLib.backendEnvironment import (
    BackendEnvironment,
    backendRequirements,
    checkPythonVersion,
    pipRequirements,
    torchRequirement,
)
from VoCoSlicerLib.labelClasses import LabelClass
from VoCoSlicerLib.sceneIO import importSegmentation, writeColorTable

REPO = Path(__file__).resolve().parents[2]


def test_requirements_come_from_the_backends_pyproject_without_torch_and_simpleitk() -> None:
    requirements = backendRequirements(REPO / "pyproject.toml")
    assert any(r.startswith("monai") for r in requirements) and any(r.startswith("tensorboard") for r in requirements)
    pip = pipRequirements(requirements)
    assert not [r for r in pip if r.lower().startswith(("torch", "simpleitk"))]
    assert torchRequirement(requirements) == ">=2.4"  # loose: the PyTorch extension picks the build


def test_install_uses_the_pytorch_extension_then_pip_with_a_list(monkeypatch) -> None:
    calls: list[tuple] = []
    # Stand-ins for what only a running Slicer has: slicer.packaging (5.12) and the PyTorch extension's module.
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = lambda requirements, **kwargs: calls.append(("pip", requirements, kwargs))
    pyTorchUtils = types.ModuleType("PyTorchUtils")

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **kwargs):
            calls.append(("torch", askConfirmation, torchVersionRequirement))
            return object()

    pyTorchUtils.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pyTorchUtils)
    realFindSpec = backendEnvironment.importlib.util.find_spec
    monkeypatch.setattr(
        backendEnvironment.importlib.util, "find_spec", lambda name: None if name == "torch" else realFindSpec(name)
    )
    BackendEnvironment().install()
    assert calls[0] == ("torch", True, ">=2.4")
    kind, requirements, kwargs = calls[1]
    assert kind == "pip" and isinstance(requirements, list) and "monai>=1.5,<1.7" in requirements
    assert kwargs == {"skip_packages": ["torch", "SimpleITK"]}


def test_an_old_slicer_gets_one_line_instead_of_a_crash() -> None:
    with pytest.raises(RuntimeError, match=r"needs 3D Slicer 5.10 or later .* runs Python 3.9"):
        checkPythonVersion((3, 9))
    checkPythonVersion((3, 12))


def test_colour_table_keeps_names_with_spaces_for_the_backend(tmp_path) -> None:
    from voco_backend.segmentation.labels import read_color_table

    classes = [LabelClass("left lung", 3, (0.2, 0.4, 1.0)), LabelClass("ribs, upper", 12, (1.0, 1.0, 0.8))]
    path = writeColorTable(classes, tmp_path / "classes.csv")
    read = read_color_table(path)
    assert [(c.name, c.value) for c in read] == [("left lung", 3), ("ribs, upper", 12)]
    assert read[0].color == pytest.approx((0.2, 0.4, 1.0), abs=1 / 255)


def test_result_on_a_transformed_volume_follows_its_transform(scene, ctVolume, tmp_path) -> None:
    from VoCoSlicerLib.sceneIO import exportVolume

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    ctVolume.SetAndObserveTransformNodeID(transform.GetID())
    labelPath = exportVolume(ctVolume, tmp_path / "label.nrrd")  # any values on the grid: a label map
    result = importSegmentation(labelPath, ctVolume, [LabelClass("tissue", 1, (1.0, 0.0, 0.0))], "model")
    assert result.GetTransformNodeID() == transform.GetID()


def test_the_backend_cancels_when_its_cancel_file_appears(tmp_path, monkeypatch) -> None:
    from VoCoSlicerLib.backendRunner import CANCEL_FILE_VARIABLE as RUNNER_VARIABLE

    from voco_backend.cancel import CANCEL_FILE_VARIABLE, CancelToken

    assert RUNNER_VARIABLE == CANCEL_FILE_VARIABLE
    cancelFile = tmp_path / "cancel"
    monkeypatch.setenv(CANCEL_FILE_VARIABLE, str(cancelFile))
    token = CancelToken()
    with token.installed():
        time.sleep(0.6)
        assert not token.cancelled
        cancelFile.touch()
        deadline = time.monotonic() + 5
        while not token.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
    assert token.cancelled


def test_runner_creates_the_cancel_file_it_gives_the_backend(fakeBackend) -> None:
    from VoCoSlicerLib.backendRunner import BackendRunner

    run = BackendRunner(fakeBackend("hang"), environment=dict(os.environ)).start(["pretrain"])
    try:
        assert run.cancelFile and not Path(run.cancelFile).exists()
        run.cancel()
        assert Path(run.cancelFile).exists()
        outcome = run.wait()
        assert outcome.message == "cancelled"
        assert not Path(run.cancelFile).exists()
    finally:
        run.cancel()
