"""VoCoSlicer: segment CT with VoCo-pretrained models, fine-tune them on your own segmentations, pretrain encoders.

The module is thin: the panels are ``Resources/UI/VoCoSlicer.ui``, the work is ``VoCoSlicerLib`` (Qt-free) and the
heavy lifting is the ``voco_backend`` child process (see docs/PROTOCOL.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from VoCoSlicerLib import BackendEnvironment, BackendRun, RunOutcome
from VoCoSlicerLib import VoCoSlicerLogic as BackendLogic
from VoCoSlicerLib.backendEnvironment import checkPythonVersion
from VoCoSlicerLib.backendRunner import describeProgress
from VoCoSlicerLib.logic import FinetunedModel, RunCallbacks, referenceVolumes
from VoCoSlicerLib.parameters import DEVICES, MODEL_SIZES

README_URL = "https://github.com/VoCoSlicer/VoCoSlicer/blob/main/README.md#the-3d-slicer-module"
# The crop-size spin box's minimum, shown as "auto": the backend chooses (64 for tiny, 96 otherwise). The backend
# refuses 32 for fine-tuning, so the value cannot be meant as a size.
ROI_AUTO = 32


class VoCoSlicer(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.parent.title = _("VoCoSlicer")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VoCoSlicer contributors (VoCoSlicer project)"]
        self.parent.helpText = (
            "Segment CT with VoCo-pretrained SwinUNETR models, fine-tune a model on a handful of cases corrected "
            "in the Segment Editor, and pretrain your own encoder. Every run is a separate process that can be "
            f'cancelled. See the <a href="{README_URL}">documentation</a> for a tutorial and troubleshooting.'
        )
        self.parent.acknowledgementText = (
            "VoCo: Wu L, Zhuang J, Chen H, CVPR 2024 (arXiv:2402.17300) and IEEE TPAMI 2025 (arXiv:2410.09890). "
            "Built on MONAI, PyTorch and 3D Slicer."
        )


@parameterNodeWrapper
class VoCoSlicerParameterNode:
    """The panels' settings, saved with the scene; each is bound to the widget whose SlicerParameterName it is,
    except ``model`` and ``finetuneInit``: their combo boxes list the models found at run time, which Slicer's
    combo-box connector (a fixed ``Choice`` list) cannot bind; the widget syncs them by hand.

    The ranges are the ``.ui``'s (an unannotated ``int`` would reset a spin box to the full int range); the
    defaults are the backend's (``Testing/contract`` compares them with its CLI defaults).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str
    outputSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    show3D: bool = False
    finetuneInit: str = "none"
    finetuneOutputFolder: Path
    finetuneSteps: Annotated[int, WithinRange(1, 100000)] = 200
    finetuneModelSize: Annotated[str, Choice(list(MODEL_SIZES))] = "B"
    finetuneRoi: Annotated[int, WithinRange(32, 256)] = ROI_AUTO
    finetuneMaxMinutes: Annotated[float, WithinRange(0.0, 10080.0)] = 0.0
    finetuneSpacingFromFov: bool = False
    pretrainData: Path
    pretrainOutputFolder: Path
    pretrainSteps: Annotated[int, WithinRange(1, 10000000)] = 100
    pretrainModelSize: Annotated[str, Choice(list(MODEL_SIZES))] = "B"
    pretrainResume: bool = False
    pythonExecutable: Path
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    remoteHost: str = ""
    remotePython: str = "python3"
    remotePort: Annotated[int, WithinRange(0, 65535)] = 0
    remoteIdentityFile: Path


class VoCoSlicerLogic(BackendLogic, ScriptedLoadableModuleLogic):
    """The module's logic: Slicer files its parameter node under "VoCoSlicer"; the runs are VoCoSlicerLib's."""

    def __init__(self, environment: BackendEnvironment | None = None, runner: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        BackendLogic.__init__(self, environment, runner)

    def getParameterNode(self) -> VoCoSlicerParameterNode:
        """The scene's parameter node of this module, wrapped."""
        return VoCoSlicerParameterNode(super().getParameterNode())


def _chosenPath(path: Path | None) -> str:
    """A path parameter as a string, "" when unset (the wrapper's empty Path is ".")."""
    return "" if path is None or str(path) in ("", ".") else str(path)


class VoCoSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Builds the panels, binds them to the parameter node and forwards to :class:`VoCoSlicerLogic`."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: VoCoSlicerLogic | None = None
        self._parameterNode: VoCoSlicerParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._runButton: qt.QPushButton | None = None
        self._runButtonText = ""

    def setup(self) -> None:
        """Load the panels and connect them."""
        ScriptedLoadableModuleWidget.setup(self)
        try:
            checkPythonVersion()
        except RuntimeError as exc:  # Slicer 5.8 and older: say what to do instead of failing on newer syntax
            self.layout.addWidget(qt.QLabel(str(exc)))
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoCoSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VoCoSlicerLogic()
        self._runButtons = {
            self.ui.segmentButton: self.startSegment,
            self.ui.segmentAllButton: self.startSegmentAll,
            self.ui.finetuneButton: self.startFinetune,
            self.ui.pretrainButton: self.startPretrain,
        }
        for button, start in self._runButtons.items():
            button.connect("clicked(bool)", lambda checked, b=button, s=start: self.onRunButton(b, s))
        self.ui.fetchModelButton.connect(
            "clicked(bool)", lambda checked: self.onRunButton(self.ui.fetchModelButton, self.startFetch)
        )
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.addModelFolderButton.connect("clicked(bool)", self.onAddModelFolder)
        self.ui.installBackendButton.connect("clicked(bool)", self.onInstallBackend)
        self.ui.trainingSegmentationsSelector.connect("checkedNodesChanged()", self.updateButtons)
        self.ui.segmentAllVolumesSelector.connect("checkedNodesChanged()", self.updateButtons)
        # Not bound through SlicerParameterName (their items change at run time): synced by hand.
        self.ui.modelComboBox.connect("currentTextChanged(QString)", lambda text: self._setParameter("model", text))
        self.ui.finetuneInitComboBox.connect(
            "currentTextChanged(QString)", lambda text: self._setParameter("finetuneInit", text)
        )
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        if self.logic.environment.isInstalled():
            self.refreshModels()

    def cleanup(self) -> None:
        """Stop observing (and cancel a run) when the module is closed."""
        if self._run is not None:
            self._run.cancel()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        """Make sure a parameter node exists when the module is shown."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Release the GUI bindings when another module is shown."""
        self.setParameterNode(None)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        """The scene closes: drop the bindings."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        """A new scene: a new parameter node."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Bind to the scene's parameter node, selecting the first volume if none is chosen."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode: VoCoSlicerParameterNode | None) -> None:
        """Connect the widgets (by SlicerParameterName) to ``parameterNode``."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def _parameters(self) -> VoCoSlicerParameterNode:
        """The bound parameter node, or the scene's when the module is not shown (a run that ends after exit)."""
        return self._parameterNode or self.logic.getParameterNode()

    def _setParameter(self, name: str, value: str) -> None:
        if self._parameterNode is not None and getattr(self._parameterNode, name) != value:
            setattr(self._parameterNode, name, value)

    def _showModelParameters(self) -> None:
        """Show ``model`` and ``finetuneInit`` in their combo boxes (an entry not listed yet is added)."""
        for comboBox, value in (
            (self.ui.modelComboBox, self._parameterNode.model),
            (self.ui.finetuneInitComboBox, self._parameterNode.finetuneInit),
        ):
            if value and comboBox.currentText != value:
                if comboBox.findText(value) < 0:
                    comboBox.addItem(value)
                comboBox.setCurrentIndex(comboBox.findText(value))

    def updateButtons(self, caller: Any = None, event: Any = None) -> None:
        """Enable each run button when its panel has what it needs (all disabled but Cancel while running)."""
        parameters = self._parameterNode
        if parameters is None:
            return
        self._showModelParameters()
        if self._run is not None:
            return
        self.ui.segmentButton.enabled = bool(parameters.inputVolume and parameters.model)
        self.ui.segmentAllButton.enabled = bool(self.ui.segmentAllVolumesSelector.checkedNodes() and parameters.model)
        self.ui.finetuneButton.enabled = bool(
            self.ui.trainingSegmentationsSelector.checkedNodes() and _chosenPath(parameters.finetuneOutputFolder)
        )
        self.ui.pretrainButton.enabled = bool(
            _chosenPath(parameters.pretrainData) and _chosenPath(parameters.pretrainOutputFolder)
        )
        self.ui.fetchModelButton.enabled = bool(parameters.model)

    def _logicForSettings(self) -> VoCoSlicerLogic:
        """The logic for the chosen Python, its backend installed (see the two steps below)."""
        self._useChosenPython()
        self._installBackendIfMissing(self.logic.environment)
        return self.logic

    def _useChosenPython(self) -> None:
        """Swap in a logic for the Python chosen in the Backend panel, when it is not the current one."""
        environment = BackendEnvironment(pythonExecutable=_chosenPath(self._parameterNode.pythonExecutable))
        if environment != self.logic.environment:
            self.logic = VoCoSlicerLogic(environment)
        self._useChosenHost()

    def _useChosenHost(self) -> None:
        """Send segment/fine-tune/pretrain runs to the SSH host of the Backend panel (its port and key, if given),
        or run them here."""
        from VoCoSlicerLib.remoteBackend import RemoteHost

        parameters = self._parameterNode
        host, python = parameters.remoteHost.strip(), parameters.remotePython.strip()
        wanted = (
            RemoteHost(
                host,
                python=python or "python3",
                port=parameters.remotePort or None,
                identityFile=_chosenPath(parameters.remoteIdentityFile) or None,
            )
            if host
            else None
        )
        if wanted != self.logic.remoteHost:
            self.logic.setRemoteHost(wanted)

    def _installBackendIfMissing(self, environment: BackendEnvironment) -> None:
        """Offer to install the backend into Slicer's Python when ``environment`` cannot import it.

        Raises:
            RuntimeError: the backend is missing and cannot or may not be installed (one line for the user).
        """
        if not environment.isInstalled():
            if not environment.usesSlicerPython or not slicer.util.confirmOkCancelDisplay(
                "VoCoSlicer needs its backend (PyTorch, MONAI) in Slicer's Python. Install it now? This takes "
                "several minutes."
            ):
                raise RuntimeError(
                    f"voco_backend cannot be imported by {environment.command()[0]}; install it "
                    "(Backend panel) or choose another Python"
                )
            with slicer.util.WaitCursor():
                environment.install()

    def onInstallBackend(self) -> None:
        """Install the backend into Slicer's Python (blocking, with a wait cursor)."""
        with slicer.util.tryWithErrorDisplay("Installing the backend failed.", waitCursor=True):
            BackendEnvironment().install()
            self.ui.statusLabel.text = "Backend installed."

    def refreshModels(self) -> None:
        """List the segmentation models and the fine-tuning starting points."""
        with slicer.util.tryWithErrorDisplay("Listing the models failed.", waitCursor=True):
            entries = self._logicForSettings().catalogue.list()
            parameters = self._parameters()
            selected, init = parameters.model, parameters.finetuneInit
            self.ui.modelComboBox.clear()
            self.ui.finetuneInitComboBox.clear()
            self.ui.finetuneInitComboBox.addItem("none")
            for entry in entries:
                if entry.kind == "segmentation":
                    status = "" if entry.available else " (not downloaded)"
                    self.ui.modelComboBox.addItem(entry.name)
                    self.ui.modelComboBox.setItemData(
                        self.ui.modelComboBox.count - 1,
                        f"{entry.source}{status}: {entry.description or entry.path}",
                        qt.Qt.ToolTipRole,
                    )
                self.ui.finetuneInitComboBox.addItem(entry.name)
            parameters.model = selected or self.ui.modelComboBox.currentText
            parameters.finetuneInit = init or "none"
            if self._parameterNode is not None:
                self._showModelParameters()

    def onAddModelFolder(self) -> None:
        """Register a model folder chosen by the user and select it."""
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder (model.json + model.pt)")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Adding the model folder failed.", waitCursor=True):
            entry = self._logicForSettings().catalogue.register(folder)
            self.refreshModels()
            self._parameters().model = entry.name

    def onRunButton(self, button: qt.QPushButton, start: Any) -> None:
        """Start the panel's run, or cancel the run this button started."""
        if self._run is not None:
            if button is self._runButton:
                self._run.cancel()
                self.ui.statusLabel.text = "Cancelling…"
            return
        try:
            self._logicForSettings()
            self._run = start()
        except Exception as exc:  # the GUI boundary: any failure to start is one line for the user
            slicer.util.errorDisplay(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        self._runButton, self._runButtonText = button, button.text
        button.text = "Cancel"
        for other in [*self._runButtons, self.ui.fetchModelButton]:
            other.enabled = other is button
        self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = "Starting…"
        self.ui.logTextEdit.clear()

    def _callbacks(self, onDone: Any) -> RunCallbacks:
        """Progress to the bar, log lines to the log box, and ``onDone`` after the buttons are restored."""
        return RunCallbacks(
            onProgress=self.onProgress,
            onLog=self.ui.logTextEdit.appendPlainText,
            onFinished=lambda outcome: self.onFinished(outcome, onDone),
        )

    def startSegment(self) -> BackendRun:
        """Segment the input volume with the chosen model (inside the chosen ROI, if any)."""
        parameters = self._parameterNode
        return self.logic.startSegment(
            parameters.inputVolume,
            parameters.model,
            parameters.outputSegmentation,
            device=parameters.device,
            callbacks=self._callbacks(self.onSegmented),
            roiNode=parameters.roi,
        )

    def startSegmentAll(self) -> BackendRun:
        """Segment every checked volume with the chosen model in one backend run."""
        parameters = self._parameterNode
        return self.logic.startSegmentAll(
            self.ui.segmentAllVolumesSelector.checkedNodes(),
            parameters.model,
            device=parameters.device,
            callbacks=self._callbacks(self.onSegmentedAll),
        )

    def startFinetune(self) -> BackendRun:
        """Fine-tune on the checked segmentations, each with the volume it was drawn on."""
        parameters = self._parameterNode
        segmentationNodes = self.ui.trainingSegmentationsSelector.checkedNodes()
        volumeNodes = [
            volumeNode or self.askReferenceVolume(segmentationNode)
            for segmentationNode, volumeNode in zip(segmentationNodes, referenceVolumes(segmentationNodes), strict=True)
        ]
        return self.logic.startFinetune(
            volumeNodes,
            segmentationNodes,
            parameters.finetuneOutputFolder,
            callbacks=self._callbacks(self.onFinetuned),
            init=parameters.finetuneInit or None,
            steps=parameters.finetuneSteps,
            modelSize=parameters.finetuneModelSize,
            roi=None if parameters.finetuneRoi == ROI_AUTO else parameters.finetuneRoi,
            maxMinutes=parameters.finetuneMaxMinutes,
            spacingFromFov=parameters.finetuneSpacingFromFov,
            device=parameters.device,
        )

    def startPretrain(self) -> BackendRun:
        """Pretrain an encoder on the CT folder."""
        parameters = self._parameterNode
        return self.logic.startPretrain(
            [parameters.pretrainData],
            parameters.pretrainOutputFolder,
            callbacks=self._callbacks(lambda outcome: None),
            steps=parameters.pretrainSteps,
            modelSize=parameters.pretrainModelSize,
            resume=parameters.pretrainResume,
            device=parameters.device,
        )

    def startFetch(self) -> BackendRun:
        """Download the chosen catalogue model."""
        return self.logic.startFetch(
            self._parameterNode.model, callbacks=self._callbacks(lambda outcome: self.refreshModels())
        )

    def askReferenceVolume(self, segmentationNode: vtkMRMLSegmentationNode) -> vtkMRMLScalarVolumeNode:
        """Let the user pick the volume a segmentation was drawn on (none could be told from the scene)."""
        volumes = [
            node
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode")
        ]
        names = [node.GetName() for node in volumes]
        if names:
            name = qt.QInputDialog.getItem(
                slicer.util.mainWindow(),
                _("Volume of the segmentation"),
                _("Segmentation '{name}': which volume was it drawn on?").format(name=segmentationNode.GetName()),
                names,
                0,
                False,
            )
            if name in names:
                return volumes[names.index(name)]
        raise ValueError(
            f"segmentation '{segmentationNode.GetName()}' has no volume; choose it as source volume in the "
            "Segment Editor and try again"
        )

    def onProgress(self, event: dict[str, Any]) -> None:
        """Show a progress event."""
        self.ui.progressBar.setRange(0, max(int(event.get("total") or 0), 1))
        self.ui.progressBar.value = int(event.get("step") or 0)
        self.ui.statusLabel.text = describeProgress(event)

    def onFinished(self, outcome: RunOutcome, onDone: Any) -> None:
        """Restore the buttons and report the outcome; on success hand the result to ``onDone``."""
        self._run = None
        self._runButton.text = self._runButtonText
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.value = 1 if outcome.ok else 0
        self.ui.statusLabel.text = "Done." if outcome.ok else outcome.message
        self.updateButtons()
        if outcome.ok:
            onDone(outcome)
        elif outcome.message != "cancelled":
            slicer.util.errorDisplay(outcome.message)

    def onSegmented(self, outcome: RunOutcome) -> None:
        """Select the result and show it over the volume (and in 3D when *Show 3D* is checked)."""
        parameters = self._parameters()
        parameters.outputSegmentation = outcome.output
        if parameters.show3D:
            outcome.output.CreateClosedSurfaceRepresentation()
        slicer.util.setSliceViewerLayers(background=parameters.inputVolume)

    def onSegmentedAll(self, outcome: RunOutcome) -> None:
        """Say how many segmentations were made (each is filed beside its volume)."""
        self.ui.statusLabel.text = f"Done: {len(outcome.output)} segmentations, one beside each volume."

    def onFinetuned(self, outcome: RunOutcome) -> None:
        """Offer the new model for segmentation, by the name it was registered under."""
        model: FinetunedModel = outcome.output
        self.refreshModels()
        self._parameters().model = model.name
        self.ui.statusLabel.text = f"Done: the model is in {model.folder} and selected in the Segment panel."


class VoCoSlicerTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: scene ↔ file round trip on real CT, then the backend if it is installed."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_resultImportKeepsNamesValuesAndGeometry()
        self.setUp()
        self.test_backendListsTheCatalogue()

    def test_resultImportKeepsNamesValuesAndGeometry(self) -> None:
        import numpy as np
        import SampleData
        from VoCoSlicerLib.labelClasses import LabelClass
        from VoCoSlicerLib.sceneIO import exportVolume, importSegmentation, segmentNames

        volumeNode = SampleData.downloadSample("CTChest")
        labelPath = os.path.join(slicer.util.tempDirectory(), "label.nrrd")
        exportVolume(volumeNode, labelPath)
        labelNode = slicer.util.loadLabelVolume(labelPath)
        voxels = slicer.util.arrayFromVolume(volumeNode)
        labels = np.where(voxels > 300, 3, np.where(voxels < -500, 5, 0)).astype(np.int16)  # Slicer rejects int64
        slicer.util.updateVolumeFromArray(labelNode, labels)
        slicer.util.saveNode(labelNode, labelPath)
        slicer.mrmlScene.RemoveNode(labelNode)
        classes = [LabelClass("bone", 3, (1.0, 1.0, 0.8)), LabelClass("air", 5, (0.2, 0.6, 1.0))]
        segmentationNode = importSegmentation(labelPath, volumeNode, classes, "self-test")
        self.assertEqual(segmentNames(segmentationNode), ["bone", "air"])
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("air")).GetLabelValue(), 5)
        bone = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentationNode, segmentation.GetSegmentIdBySegmentName("bone"), volumeNode
        )
        self.assertTrue(np.array_equal(bone > 0, voxels > 300))
        self.delayDisplay("Result import keeps names, label values and geometry")

    def test_backendListsTheCatalogue(self) -> None:
        environment = BackendEnvironment()
        if not environment.isInstalled():
            self.delayDisplay("Backend not installed in Slicer's Python: skipped")
            return
        names = [entry.name for entry in VoCoSlicerLogic(environment).catalogue.list()]
        self.assertIn("VoCo_B_SSL_head", names)
        self.delayDisplay("Backend lists the model catalogue")
