"""The public API of the module, usable from Slicer's Python console without the GUI.

Example::

    from VoCoSlicerLib import VoCoSlicerLogic
    logic = VoCoSlicerLogic()
    segmentationNode = logic.segment(volumeNode, "/path/to/my_model")
    model = logic.finetune([volumeNode], [segmentationNode], "/path/to/new_model", steps=200)

Every run is a backend child process. ``start…(…, callbacks)`` returns a :class:`BackendRun` at once
(``cancel()``, ``running``, ``wait() -> RunOutcome``) and reports through one :class:`RunCallbacks`, polled by a
Qt timer inside Slicer (elsewhere call ``run.poll()`` or ``run.wait()``); the method of the same name without
``start`` waits and returns the run's output (or raises :class:`BackendError` with a one-line message).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import slicer
import vtk

from VoCoSlicerLib.backendEnvironment import BackendEnvironment
from VoCoSlicerLib.backendRunner import (
    EXIT_BAD_DATA,
    BackendError,
    BackendRun,
    BackendRunner,
    FinishedCallback,
    LogCallback,
    ProgressCallback,
    RunOutcome,
)
from VoCoSlicerLib.labelClasses import classesFromResult
from VoCoSlicerLib.modelCatalogue import ModelCatalogue
from VoCoSlicerLib.parameters import (
    FinetuneParameters,
    PretrainParameters,
    SegmentAllParameters,
    SegmentParameters,
)
from VoCoSlicerLib.sceneIO import (
    GEOMETRY_TOLERANCE,
    exportTrainingLabels,
    exportVolume,
    importSegmentation,
    trainingClasses,
    writeColorTable,
)

POLL_INTERVAL_MS = 100


def roiBox(
    roiNode: slicer.vtkMRMLMarkupsROINode, volumeNode: slicer.vtkMRMLScalarVolumeNode
) -> tuple[float, float, float, float, float, float]:
    """The backend's ``--roi-box`` of an ROI markup: the RAS box around it in the frame the volume is exported in.

    A volume file holds the volume's own geometry, not its parent transforms, while an ROI's bounds are in world
    coordinates: the ROI's corners are brought into the volume's frame (the box around them when the transform
    rotates). Low corner x, y, z then high corner x, y, z, in mm.
    """
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)
    worldToVolume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
    corners = [worldToVolume.TransformPoint(x, y, z) for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]
    low = [min(c[axis] for c in corners) for axis in range(3)]
    high = [max(c[axis] for c in corners) for axis in range(3)]
    return (*low, *high)


@dataclasses.dataclass(frozen=True)
class RunCallbacks:
    """What a run reports as it goes: each progress event, each log line, and once its :class:`RunOutcome`."""

    onProgress: ProgressCallback | None = None
    onLog: LogCallback | None = None
    onFinished: FinishedCallback | None = None


@dataclasses.dataclass(frozen=True)
class FinetunedModel:
    """A fine-tuning run's model: its folder, and the name it is registered under (None when not registered)."""

    folder: str
    name: str | None = None


def _processEvents() -> None:
    """Keep Slicer's GUI responsive while a blocking call waits (no-op outside Slicer)."""
    app = getattr(slicer, "app", None)
    if app is not None:
        app.processEvents()


def _pollInBackground(run: BackendRun) -> None:
    """Inside Slicer, poll ``run`` from the GUI thread with a Qt timer until it ends."""
    if getattr(slicer, "app", None) is None:
        return
    import qt

    def tick() -> None:
        if run.poll():
            qt.QTimer.singleShot(POLL_INTERVAL_MS, tick)

    qt.QTimer.singleShot(0, tick)


def _geometryString(segmentationNode: slicer.vtkMRMLSegmentationNode) -> str:
    converter = slicer.vtkSegmentationConverter
    return segmentationNode.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())


def _sameGridAsGeometry(volumeNode: slicer.vtkMRMLScalarVolumeNode, geometry: str) -> bool:
    """Whether a volume lies on the voxel grid a segmentation's reference image geometry string describes."""
    if not geometry or volumeNode.GetImageData() is None:
        return False
    expected = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, expected, False):
        return False
    matrix, expectedMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    expected.GetImageToWorldMatrix(expectedMatrix)
    sameMatrix = all(
        abs(matrix.GetElement(i, j) - expectedMatrix.GetElement(i, j)) <= GEOMETRY_TOLERANCE
        for i in range(4)
        for j in range(4)
    )
    return sameMatrix and tuple(expected.GetExtent()) == tuple(volumeNode.GetImageData().GetExtent())


def referenceVolume(segmentationNode: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLScalarVolumeNode | None:
    """The volume a segmentation was drawn on, or None where it cannot be told.

    In order: the segmentation's reference geometry node; the source volume a Segment Editor node pairs with it
    (choosing the source volume in the Segment Editor does not set the reference of a segmentation loaded from a
    ``.seg.nrrd``); the one volume of the scene whose grid is the segmentation's reference image geometry.
    """
    node = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
    if node is not None:
        return node
    scene = segmentationNode.GetScene()
    for editorNode in slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode", scene):
        if editorNode.GetSegmentationNode() is segmentationNode and editorNode.GetSourceVolumeNode() is not None:
            return editorNode.GetSourceVolumeNode()
    geometry = _geometryString(segmentationNode)
    matching = [
        volumeNode
        for volumeNode in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)
        if not volumeNode.IsA("vtkMRMLLabelMapVolumeNode") and _sameGridAsGeometry(volumeNode, geometry)
    ]
    return matching[0] if len(matching) == 1 else None


def referenceVolumes(segmentationNodes: Sequence[slicer.vtkMRMLSegmentationNode]) -> list[Any]:
    """:func:`referenceVolume` of each segmentation (None where unknown: let the user pick)."""
    return [referenceVolume(node) for node in segmentationNodes]


class VoCoSlicerLogic:
    """Segment, fine-tune and pretrain through the backend process.

    Args:
        environment: the Python that runs the backend (default: Slicer's own).
        runner: starts the backend (default: a :class:`BackendRunner` for ``environment``); tests inject one.
    """

    def __init__(self, environment: BackendEnvironment | None = None, runner: BackendRunner | None = None) -> None:
        self.environment = environment or BackendEnvironment()
        self.runner = runner or BackendRunner(self.environment.command(), self.environment.environment())
        self.localRunner = self.runner
        self.catalogue = ModelCatalogue(self.runner)

    @property
    def remoteHost(self) -> Any | None:
        """The ``remoteBackend.RemoteHost`` the runs go to, or None when they run here."""
        return getattr(self.runner, "host", None)

    def setRemoteHost(self, host: Any | None) -> None:
        """Run segment/finetune/pretrain on ``host`` (a ``remoteBackend.RemoteHost``) over SSH; None: here again.

        The model list and registrations stay local (the folders a remote run writes are copied back here).
        """
        from VoCoSlicerLib.remoteBackend import RemoteBackendRunner

        self.runner = RemoteBackendRunner(host) if host is not None else self.localRunner

    def startSegment(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode,
        model: str,
        segmentationNode: slicer.vtkMRMLSegmentationNode | None = None,
        device: str = "auto",
        callbacks: RunCallbacks | None = None,
        roiNode: slicer.vtkMRMLMarkupsROINode | None = None,
    ) -> BackendRun:
        """Start segmenting ``volumeNode`` with ``model``: a model folder, a registered model's name or a catalogue
        segmentation network (``VoComni_B``).

        Args:
            roiNode: segment only the box around this ROI markup (:func:`roiBox`); the segmentation still covers
                the whole volume, empty outside the box.

        Returns:
            The run; on success its ``outcome.output`` is the segmentation node (``segmentationNode``, its segments
            replaced, or a new node beside the volume) with one segment per class of the model: its name, colour
            and label value.
        """
        modelName = Path(model).name

        def prepare(workDir: Path) -> list[str]:
            inputPath = exportVolume(volumeNode, workDir / "input.nrrd")
            return SegmentParameters(
                model=model,
                inputPath=inputPath,
                outputPath=str(workDir / "segmentation.nrrd"),
                device=device,
                roiBox=None if roiNode is None else roiBox(roiNode, volumeNode),
            ).toArgv()

        def complete(outcome: RunOutcome, workDir: Path) -> slicer.vtkMRMLSegmentationNode:
            classes = classesFromResult(outcome.result)
            return importSegmentation(workDir / "segmentation.nrrd", volumeNode, classes, modelName, segmentationNode)

        return self._start("segment", prepare, complete, callbacks)

    def segment(self, *args: Any, **kwargs: Any) -> slicer.vtkMRMLSegmentationNode:
        """:meth:`startSegment` (same arguments), waited for: the segmentation node."""
        return _wait(self.startSegment(*args, **kwargs))

    def startSegmentAll(
        self,
        volumeNodes: Sequence[slicer.vtkMRMLScalarVolumeNode],
        model: str,
        device: str = "auto",
        callbacks: RunCallbacks | None = None,
    ) -> BackendRun:
        """Start segmenting every volume of ``volumeNodes`` with ``model``, loaded once (one backend process).

        Returns:
            The run; its ``outcome.output`` is the list of new segmentation nodes, one per volume that was
            segmented, in order. When some volumes fail the others are still imported: the outcome is then not
            ``ok`` and its message names the first failure.
        """
        if not volumeNodes:
            raise ValueError("check at least one volume to segment")
        modelName = Path(model).name

        def prepare(workDir: Path) -> list[str]:
            inputs = [exportVolume(node, workDir / f"volume{index}.nrrd") for index, node in enumerate(volumeNodes)]
            return SegmentAllParameters(
                model=model, inputPaths=tuple(inputs), outputDir=str(workDir / "out"), device=device
            ).toArgv()

        def complete(outcome: RunOutcome, workDir: Path) -> list[slicer.vtkMRMLSegmentationNode]:
            failed = {Path(f.get("input", "")).name: f.get("message", "") for f in outcome.result.get("failed", [])}
            if failed:  # the backend names its temporary files: the user knows the volumes
                names = [node.GetName() for index, node in enumerate(volumeNodes) if f"volume{index}.nrrd" in failed]
                first = next(iter(failed.values()))
                outcome.message = (
                    f"{len(failed)} of {len(volumeNodes)} volumes failed, the others are segmented: "
                    f"{', '.join(repr(n) for n in names)}: {first}"
                )
            if "classes" not in outcome.result:  # nothing was segmented
                return []
            classes = classesFromResult(outcome.result)
            return [
                importSegmentation(label, node, classes, modelName)
                for index, node in enumerate(volumeNodes)
                if (label := workDir / "out" / f"volume{index}_seg.nrrd").exists()
            ]

        return self._start("segment", prepare, complete, callbacks, completeFailed=True)

    def segmentAll(self, *args: Any, **kwargs: Any) -> list[slicer.vtkMRMLSegmentationNode]:
        """:meth:`startSegmentAll` (same arguments), waited for: the new segmentation nodes."""
        return _wait(self.startSegmentAll(*args, **kwargs))

    def startFinetune(
        self,
        volumeNodes: Sequence[slicer.vtkMRMLScalarVolumeNode],
        segmentationNodes: Sequence[slicer.vtkMRMLSegmentationNode],
        outputModelDir: str | Path,
        callbacks: RunCallbacks | None = None,
        register: bool = True,
        **options: Any,
    ) -> BackendRun:
        """Start fine-tuning a segmentation model on the segmentations drawn on the volumes (pairwise).

        Each segment name becomes a class; a name that came from a model's result keeps that model's label value.
        ``options`` are the optional fields of :class:`FinetuneParameters` (``init``, ``steps``, ``modelSize``,
        ``roi``, ``spacing``, ``spacingFromFov``, ``maxMinutes``, ``device``, ``seed``, ``resume``): left out, the
        backend's default applies. ``register`` adds the new folder to the user's models so it is listed by name.

        Returns:
            The run; on success its ``outcome.output`` is a :class:`FinetunedModel`.
        """
        if len(volumeNodes) != len(segmentationNodes) or not volumeNodes:
            raise ValueError(
                f"give one volume per segmentation, got {len(volumeNodes)} volumes and "
                f"{len(segmentationNodes)} segmentations"
            )
        classes = trainingClasses(segmentationNodes)
        outputModelDir = str(Path(outputModelDir).resolve())
        if options.get("spacing") is not None:
            options["spacing"] = tuple(options["spacing"])

        def prepare(workDir: Path) -> list[str]:
            images = [exportVolume(v, workDir / f"image{i}.nrrd") for i, v in enumerate(volumeNodes)]
            labels = [
                exportTrainingLabels(s, v, classes, workDir / f"label{i}.nrrd")
                for i, (v, s) in enumerate(zip(volumeNodes, segmentationNodes, strict=True))
            ]
            return FinetuneParameters(
                images=tuple(images),
                labels=tuple(labels),
                outputModelDir=outputModelDir,
                colorTable=writeColorTable(classes, workDir / "classes.csv"),
                **options,
            ).toArgv()

        def complete(outcome: RunOutcome, workDir: Path) -> FinetunedModel:
            name = self.catalogue.register(outputModelDir).name if register else None
            return FinetunedModel(folder=outputModelDir, name=name)

        return self._start("finetune", prepare, complete, callbacks)

    def finetune(self, *args: Any, **kwargs: Any) -> FinetunedModel:
        """:meth:`startFinetune` (same arguments), waited for: the new model."""
        return _wait(self.startFinetune(*args, **kwargs))

    def startFetch(self, name: str, callbacks: RunCallbacks | None = None) -> BackendRun:
        """Start downloading catalogue model ``name`` (progress events of stage ``download``).

        Returns:
            The run; on success its ``outcome.output`` is the backend's result fields (the file's ``path``).
        """
        return self._start(
            "fetch", lambda workDir: ["models", "fetch", name], lambda outcome, workDir: outcome.result, callbacks
        )

    def fetch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """:meth:`startFetch` (same arguments), waited for: the backend's result fields."""
        return _wait(self.startFetch(*args, **kwargs))

    def startPretrain(
        self,
        data: Sequence[str | Path],
        outputRunDir: str | Path,
        callbacks: RunCallbacks | None = None,
        **options: Any,
    ) -> BackendRun:
        """Start VoCo-pretraining an encoder on CT files or folders ``data``.

        ``options`` are the optional fields of :class:`PretrainParameters` (``steps``, ``modelSize``, ``init``,
        ``device``, ``seed``, ``resume``).

        Returns:
            The run; on success its ``outcome.output`` is the run folder (its ``encoder.pt`` initialises
            fine-tuning).
        """
        outputRunDir = str(Path(outputRunDir).resolve())
        parameters = PretrainParameters(data=tuple(str(p) for p in data), outputRunDir=outputRunDir, **options)
        return self._start(
            "pretrain", lambda workDir: parameters.toArgv(), lambda outcome, workDir: outputRunDir, callbacks
        )

    def pretrain(self, *args: Any, **kwargs: Any) -> str:
        """:meth:`startPretrain` (same arguments), waited for: the run folder."""
        return _wait(self.startPretrain(*args, **kwargs))

    def _start(
        self,
        name: str,
        prepare: Callable[[Path], list[str]],
        complete: Callable[[RunOutcome, Path], Any],
        callbacks: RunCallbacks | None,
        completeFailed: bool = False,
    ) -> BackendRun:
        """Write the inputs to a temporary folder and start the backend; its outcome becomes the result, then the
        folder is removed. Inside Slicer a Qt timer polls the run. ``completeFailed``: also take what a failed run
        finished (bad data in some volumes of a batch, exit 3), keeping the failure's message."""
        callbacks = callbacks or RunCallbacks()
        workDir = Path(tempfile.mkdtemp(prefix=f"VoCoSlicer-{name}-"))

        def finished(outcome: RunOutcome) -> None:
            try:
                if outcome.ok or (completeFailed and outcome.exitCode == EXIT_BAD_DATA):
                    outcome.output = complete(outcome, workDir)
            except Exception as exc:  # the callback boundary: any failure becomes the run's one-line message
                outcome.message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            finally:
                shutil.rmtree(workDir, ignore_errors=True)
            if callbacks.onFinished:
                callbacks.onFinished(outcome)

        try:
            run = self.runner.start(prepare(workDir), callbacks.onProgress, callbacks.onLog, finished)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        _pollInBackground(run)
        return run


def _wait(run: BackendRun) -> Any:
    """Wait for ``run`` (the GUI kept responsive) and return its output, or raise :class:`BackendError`."""
    try:
        outcome = run.wait(idle=_processEvents)
    except BaseException:  # an interrupted wait (Ctrl+C, a failing callback) must not orphan the process
        run.cancel()
        raise
    if not outcome.ok:
        raise BackendError(outcome)
    return outcome.output
