"""The module's Widget and parameter class run through Slicer's own ScriptedLoadableModule and parameterNodeWrapper
(5.10.0 and 5.12.3 from ../shared/slicer) on slicer-core's scene; only Qt/CTK widgets and ``slicer.app`` are
stood in (``slicer_app.py``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from slicer_app import SLICER_VERSIONS, processEvents, slicerApplication
from VoCoSlicerLib.backendRunner import BackendRunner
from VoCoSlicerLib.modelCatalogue import ModelEntry

MODULE_DIR = Path(__file__).resolve().parents[2] / "VoCoSlicer"
UI_PATH = MODULE_DIR / "Resources" / "UI" / "VoCoSlicer.ui"

pytestmark = pytest.mark.parametrize("version", SLICER_VERSIONS)


def _loadModule() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("VoCoSlicer", MODULE_DIR / "VoCoSlicer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as Slicer imports it: the wrapper resolves annotations in this module
    spec.loader.exec_module(module)
    return module


def _uiRanges() -> dict[str, tuple[float, float]]:
    ranges = {}
    for widget in ET.parse(UI_PATH).getroot().iter("widget"):
        name = widget.findtext("property[@name='SlicerParameterName']/string")
        low = widget.find("property[@name='minimum']/*")
        high = widget.find("property[@name='maximum']/*")
        if name and low is not None:
            ranges[name] = (float(low.text), float(high.text))
    return ranges


def _runUntilDone(widget: Any, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while widget._run is not None:
        assert time.monotonic() < deadline, "the run was never finished by the polling timer"
        processEvents()
        time.sleep(0.02)


@pytest.fixture
def module(scene, version, tmp_path, monkeypatch):
    """VoCoSlicer.py loaded on Slicer ``version``'s Python files, with a private model cache."""
    monkeypatch.setenv("VOCO_CACHE_DIR", str(tmp_path / "cache"))
    with slicerApplication(version, startupEnvironment=dict(os.environ)) as app:
        vocoSlicer = _loadModule()
        vocoSlicer.app = app
        try:
            yield vocoSlicer
        finally:
            sys.modules.pop("VoCoSlicer", None)


def _widget(module: types.ModuleType, qt: Any) -> Any:
    parent = types.SimpleNamespace(path=str(MODULE_DIR / "VoCoSlicer.py"))
    module.VoCoSlicer(parent)
    slicer.modules.vocoslicer = parent
    panel = slicer.qMRMLWidget()
    panel.setLayout(qt.QVBoxLayout())
    panel.isEntered = True
    widget = module.VoCoSlicerWidget(panel)
    widget.setup()
    return widget


def test_slicers_parameter_node_wrapper_binds_every_ui_parameter_with_the_ui_ranges(module, version) -> None:
    qt = module.app.qt
    ui = slicer.util.childWidgetVariables(slicer.util.loadUI(str(UI_PATH)))
    logic = module.VoCoSlicerLogic()
    parameters = logic.getParameterNode()
    # filed under the module, not under "ScriptedLoadableModule"
    assert parameters.parameterNode.GetAttribute("ModuleName") == "VoCoSlicer"
    assert parameters.parameterNode.GetSingletonTag() == "VoCoSlicer"
    tag = parameters.connectGui(ui)  # Slicer's connectors: raises for a combo box bound to a plain str
    bound = {w.property("SlicerParameterName"): w for w in ui.__dict__.values() if w.property("SlicerParameterName")}
    assert set(bound) == set(parameters.allParameters) - {"model", "finetuneInit"}
    for name, (low, high) in _uiRanges().items():
        spinBox = bound[name]
        assert (spinBox.minimum, spinBox.maximum) == (low, high), f"{name}: the connector changed the .ui's range"
        spinBox.value = high + 1000  # the widget clamps, the parameter follows the widget
        assert getattr(parameters, name) == high
    parameters.finetuneMaxMinutes = 30.0
    assert ui.finetuneMaxMinutesSpinBox.value == 30.0
    ui.finetuneSpacingFromFovCheckBox.checked = True  # what a tick sets
    assert parameters.finetuneSpacingFromFov is True
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findText("cpu")
    assert parameters.device == "cpu"
    assert isinstance(ui.finetuneModelSizeComboBox, qt.QComboBox)
    parameters.disconnectGui(tag)


def test_widget_setup_enter_exit_and_a_run_that_ends_after_exit(module, ctVolume, fakeBackend) -> None:
    widget = _widget(module, module.app.qt)
    ui = widget.ui
    assert widget._parameterNode.inputVolume is ctVolume  # the first volume is chosen
    assert ui.modelComboBox.count > 0, "setup lists the catalogue through the real backend"
    widget.enter()
    widget.logic = module.VoCoSlicerLogic(runner=BackendRunner(fakeBackend("ok")))
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findText("VoComni_B"))
    assert widget._parameterNode.model == "VoComni_B"  # synced by hand
    assert ui.segmentButton.enabled
    ui.show3DCheckBox.checked = True
    assert widget._parameterNode.show3D
    ui.segmentButton.click()
    assert ui.segmentButton.text == "Cancel" and not ui.finetuneButton.enabled
    widget.exit()  # the user leaves the module while the run works
    assert widget._parameterNode is None
    _runUntilDone(widget)
    assert module.app.errors == []
    result = widget.logic.getParameterNode().outputSegmentation
    assert result is not None and result.GetSegmentation().GetNumberOfSegments() == 2
    assert result.GetSegmentation().ContainsRepresentation("Closed surface")  # Show 3D
    widget.enter()
    assert ui.segmentButton.text == "Segment" and ui.segmentButton.enabled
    widget.cleanup()


def test_download_run_finishes_through_the_polling_timer(module, ctVolume, fakeBackend) -> None:
    widget = _widget(module, module.app.qt)
    widget.logic = module.VoCoSlicerLogic(runner=BackendRunner(fakeBackend("ok")))
    widget._parameterNode.model = "VoComni_B"
    widget.ui.fetchModelButton.click()
    assert widget.ui.fetchModelButton.text == "Cancel"
    _runUntilDone(widget)
    assert widget.ui.fetchModelButton.text != "Cancel" and widget.ui.segmentButton.enabled
    assert widget.ui.statusLabel.text == "Done."
    widget.cleanup()


def test_backend_panels_remote_host_sends_runs_over_ssh_and_keeps_the_model_list_here(module, ctVolume) -> None:
    from VoCoSlicerLib.remoteBackend import RemoteBackendRunner, RemoteHost

    widget = _widget(module, module.app.qt)
    local = widget.logic.runner
    widget.ui.remoteHostLineEdit.text = "gpu-user@gpu-host.invalid"  # typed in the Backend panel
    widget.ui.remotePythonLineEdit.text = "~/voco/bin/python"
    assert widget._parameterNode.remoteHost == "gpu-user@gpu-host.invalid"
    widget._useChosenPython()  # what every Segment / Fine-tune / Pretrain click does first
    assert isinstance(widget.logic.runner, RemoteBackendRunner)
    assert widget.logic.remoteHost == RemoteHost("gpu-user@gpu-host.invalid", python="~/voco/bin/python")
    # the model list and registrations stay local: listing works although the host does not exist
    assert "VoComni_B" in [entry.name for entry in widget.logic.catalogue.list()]
    widget.ui.remoteHostLineEdit.text = "  "
    widget._useChosenPython()
    assert widget.logic.runner is local and widget.logic.remoteHost is None  # here again, same environment
    widget.cleanup()


def test_backend_panels_ssh_port_and_key_fields_reach_the_ssh_command(module, ctVolume, tmp_path) -> None:
    from VoCoSlicerLib.remoteBackend import RemoteHost

    key = tmp_path / "id_gpu"
    widget = _widget(module, module.app.qt)
    widget.ui.remoteHostLineEdit.text = "gpu-user@gpu-host.invalid"
    widget.ui.remotePortSpinBox.value = 2222  # typed in the Backend panel
    widget.ui.remoteIdentityFileLineEdit.currentPath = str(key)
    assert (widget._parameterNode.remotePort, str(widget._parameterNode.remoteIdentityFile)) == (2222, str(key))
    widget._useChosenPython()  # what every Segment / Fine-tune / Pretrain click does first
    host = widget.logic.remoteHost
    assert host == RemoteHost("gpu-user@gpu-host.invalid", python="python3", port=2222, identityFile=str(key))
    ssh = host.sshArgs("true")
    assert ssh[ssh.index("-p") + 1] == "2222" and ssh[ssh.index("-i") + 1] == str(key)
    scp = host.scpArgs(["a"], "gpu-user@gpu-host.invalid:b")
    assert scp[scp.index("-P") + 1] == "2222" and scp[scp.index("-i") + 1] == str(key)
    widget.ui.remotePortSpinBox.value = 0  # "default": ssh's own or ~/.ssh/config's
    widget.ui.remoteIdentityFileLineEdit.currentPath = ""  # the agent's keys
    widget._useChosenPython()
    assert widget.logic.remoteHost == RemoteHost("gpu-user@gpu-host.invalid", python="python3")
    assert "-p" not in widget.logic.remoteHost.sshArgs("true") and "-i" not in widget.logic.remoteHost.sshArgs("true")
    widget.cleanup()


def test_segment_panels_roi_selector_sends_the_box_and_imports_on_the_whole_volume(
    module, scene, ctVolume, fakeBackend
) -> None:
    started: list[list[str]] = []

    class RecordingRunner(BackendRunner):
        def start(self, argv, *args, **kwargs):
            started.append(list(argv))
            return super().start(argv, *args, **kwargs)

    widget = _widget(module, module.app.qt)
    widget.logic = module.VoCoSlicerLogic(runner=RecordingRunner(fakeBackend("ok")))
    widget._parameterNode.model = "VoComni_B"
    roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion box")
    roiNode.SetCenter(-20.0, 10.0, 30.0)
    roiNode.SetSize(60.0, 40.0, 50.0)
    widget.ui.roiSelector.setCurrentNode(roiNode)
    assert widget._parameterNode.roi is roiNode
    widget.ui.segmentButton.click()
    _runUntilDone(widget)
    assert module.app.errors == []
    (argv,) = started
    at = argv.index("--roi-box")
    assert [float(v) for v in argv[at + 1 : at + 7]] == pytest.approx([-50.0, -10.0, 5.0, 10.0, 30.0, 55.0])
    result = widget._parameterNode.outputSegmentation
    expected = slicer.vtkMRMLSegmentationNode()
    expected.SetReferenceImageGeometryParameterFromVolumeNode(ctVolume)
    geometry = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert result.GetSegmentation().GetConversionParameter(
        geometry
    ) == expected.GetSegmentation().GetConversionParameter(geometry)  # imported on the whole volume's grid
    widget.ui.roiSelector.setCurrentNode(None)  # "Whole volume"
    widget.ui.segmentButton.click()
    _runUntilDone(widget)
    assert "--roi-box" not in started[-1]
    widget.cleanup()


@pytest.mark.slow
def test_segment_all_checked_makes_one_segmentation_per_volume(module, scene, ctVolume, chestCtFiles, tinyModel):
    from conftest import loadVolume

    widget = _widget(module, module.app.qt)
    second = loadVolume(scene, chestCtFiles["ct"])
    widget._parameterNode.model = str(tinyModel["modelDir"])  # a model folder, as "Add folder…" gives
    widget._parameterNode.device = "cpu"
    assert not widget.ui.segmentAllButton.enabled  # nothing checked yet
    widget.ui.segmentAllVolumesSelector.setCheckedNodes([ctVolume, second])
    assert widget.ui.segmentAllButton.enabled
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    widget.ui.segmentAllButton.click()
    assert widget.ui.segmentAllButton.text == "Cancel" and not widget.ui.segmentButton.enabled
    _runUntilDone(widget, timeout=900)
    assert module.app.errors == []
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before + 2
    assert widget.ui.statusLabel.text == "Done: 2 segmentations, one beside each volume."
    assert widget.ui.segmentAllButton.text == "Segment all checked" and widget.ui.segmentAllButton.enabled
    widget.cleanup()


def test_tutorial_fine_tune_pairs_the_segment_editors_source_volume(
    module, scene, chestCtFiles, ctVolume, fakeBackend, tmp_path
) -> None:
    # A decoy on the same grid: geometry alone cannot tell them apart, the Segment Editor's choice does.
    decoy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "decoy")
    decoy.Copy(ctVolume)
    decoy.SetName("decoy")
    voxels = slicer.util.arrayFromVolume(ctVolume)
    slicer.util.updateVolumeFromArray(decoy, np.zeros_like(voxels))
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    storageNode = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storageNode.SetFileName(str(chestCtFiles["segmentation"]))
    assert storageNode.ReadData(segmentationNode)
    assert segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()) is None
    editorLogic = slicer.vtkSlicerSegmentEditorLogic()
    editorLogic.SetMRMLScene(scene)
    editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editorLogic.SetSegmentEditorNode(editorNode)
    editorLogic.SetSegmentationNode(segmentationNode)
    editorLogic.SetSourceVolumeNode(ctVolume)
    assert segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()) is None

    exported: dict[str, Any] = {}

    def launcher(args: list[str], **kwargs: Any) -> subprocess.Popen:
        if "--images" in args:  # the fine-tune run (registering the model follows it)
            exported["image"] = sitk.GetArrayFromImage(sitk.ReadImage(args[args.index("--images") + 1]))
        return subprocess.Popen(args, **kwargs)

    widget = _widget(module, module.app.qt)
    widget.logic = module.VoCoSlicerLogic(runner=BackendRunner(fakeBackend("ok"), launcher=launcher))
    registered: list[str] = []

    def register(folder: str) -> ModelEntry:  # the protocol stand-in does not register models
        registered.append(folder)
        return ModelEntry(name="my registered model", kind="segmentation", source="user", available=True, path=folder)

    widget.logic.catalogue.register = register
    widget.ui.trainingSegmentationsSelector.setCheckedNodes([segmentationNode])
    widget._parameterNode.finetuneOutputFolder = tmp_path / "my model"
    widget._parameterNode.finetuneMaxMinutes = 12.5
    widget._parameterNode.finetuneSteps = 3
    widget._parameterNode.finetuneSpacingFromFov = True
    finished: list[Any] = []
    widget.onFinetuned = finished.append
    widget.ui.finetuneButton.click()
    _runUntilDone(widget)
    assert module.app.errors == []
    assert np.array_equal(exported["image"], voxels)  # the CT it was drawn on, not the decoy
    argv = finished[0].result["argv"]
    assert argv[argv.index("--max-minutes") + 1] == "12.5"
    assert argv[argv.index("--steps") + 1] == "3"
    assert "--spacing-from-fov" in argv
    assert registered == [str((tmp_path / "my model").resolve())]
    assert finished[0].output.name == "my registered model"  # the name it is listed under, not the folder's
    widget.cleanup()


def test_external_python_runs_the_backend_from_a_slicer_like_environment(module, tmp_path, monkeypatch) -> None:
    # Slicer's launcher sets these for its own Python 3.12; another Python cannot start with them.
    fakeSlicer = tmp_path / "Slicer-5.12"
    (fakeSlicer / "lib" / "Python" / "lib" / "python3.12").mkdir(parents=True)
    clean = dict(os.environ)
    slicerLike = {**clean, "PYTHONHOME": str(fakeSlicer / "lib" / "Python"), "PYTHONPATH": str(fakeSlicer / "bin")}
    broken = subprocess.run([sys.executable, "-c", "import os"], env=slicerLike, capture_output=True, check=False)
    assert broken.returncode != 0, "the stand-in launcher environment must break a foreign Python"
    for name, value in slicerLike.items():
        monkeypatch.setenv(name, value)
    slicer.app._startupEnvironment = clean  # slicer.util.startupEnvironment(): before the launcher

    from VoCoSlicerLib import BackendEnvironment

    environment = BackendEnvironment(pythonExecutable=sys.executable)
    assert environment.isInstalled()
    names = [entry.name for entry in module.VoCoSlicerLogic(environment).catalogue.list()]
    assert "VoComni_B" in names


def test_module_self_test_body_runs_headlessly(module, slicerApp, scene, chestCtFiles, monkeypatch) -> None:
    from conftest import loadVolume

    # Stand-in for Slicer's SampleData module: its CTChest is the same slicerio chest CT, from ../shared/data.
    sampleData = types.ModuleType("SampleData")
    sampleData.downloadSample = lambda name: loadVolume(scene, chestCtFiles["ct"])
    monkeypatch.setitem(sys.modules, "SampleData", sampleData)
    # slicer.modules.segmentations: slicer-core's real Segmentations logic of the session's application logic.
    slicer.modules.segmentations = types.SimpleNamespace(logic=lambda: slicerApp.GetModuleLogic("Segmentations"))
    selfTest = module.VoCoSlicerTest()
    selfTest.runTest()
    assert module.app.messages == [
        "Result import keeps names, label values and geometry",
        "Backend lists the model catalogue",
    ]
