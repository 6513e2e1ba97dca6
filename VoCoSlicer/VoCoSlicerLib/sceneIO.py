"""Scene ↔ files: volumes out to the backend, label maps back in as segmentations, training labels out.

Label values are carried by colour tables in both directions: a result is imported through a table built from
the model's classes (segment names, colours and label values kept) and training labels are exported through a
table built from the segment names (a name keeps its value), so labels are never renumbered. Everything that
can fail runs in a private scratch scene; the user's scene is changed only once the result is complete.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import slicer
import vtk

from VoCoSlicerLib.labelClasses import LabelClass, checkClasses

GEOMETRY_TOLERANCE = 1e-4


class SceneIOError(RuntimeError):
    """A node could not be written or read; the message names the node or file."""


def exportVolume(volumeNode: slicer.vtkMRMLVolumeNode, path: str | Path) -> str:
    """Write ``volumeNode`` to ``path`` (NRRD or NIfTI by suffix) with its geometry; the scene is not touched."""
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise SceneIOError("the input volume holds no image; load a CT first")
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.SetUseCompression(False)
    if not storageNode.WriteData(volumeNode):
        raise SceneIOError(f"cannot write volume '{volumeNode.GetName()}' to {path}")
    return str(path)


def colorTableFromClasses(
    classes: Sequence[LabelClass], scene: slicer.vtkMRMLScene, name: str
) -> slicer.vtkMRMLColorTableNode:
    """A colour table node in ``scene`` with one named entry per class at its label value."""
    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(max(c.value for c in classes) + 1)
    colorNode.SetColor(0, "", 0.0, 0.0, 0.0, 0.0)
    for labelClass in classes:
        colorNode.SetColor(labelClass.value, labelClass.name, *labelClass.color, 1.0)
    return colorNode


COLOR_TABLE_COLUMNS = ("LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A")


def writeColorTable(classes: Sequence[LabelClass], path: str | Path) -> str:
    """Write the classes as a Slicer ``.csv`` colour table (columns ``LabelValue, Name, Color_R/G/B/A`` in 0-255).

    Written with Python's ``csv`` rather than Slicer's colour storage node: that writes CSV only from Slicer 5.10
    and alters names with spaces, while here every name is kept exactly as the user typed it.
    """
    checkClasses(classes, "the training segments")
    try:
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(COLOR_TABLE_COLUMNS)
            for labelClass in classes:
                rgb = [round(min(max(c, 0.0), 1.0) * 255) for c in labelClass.color]
                writer.writerow([labelClass.value, labelClass.name, *rgb, 255])
    except OSError as exc:
        raise SceneIOError(f"cannot write the colour table to {path}: {exc.strerror or exc}") from exc
    return str(path)


def classesFromColorTable(colorNode: slicer.vtkMRMLColorTableNode) -> list[LabelClass]:
    """The named entries above 0 of a colour table."""
    classes = []
    for value in range(1, colorNode.GetNumberOfColors()):
        name = colorNode.GetColorName(value)
        if name and name != "(none)":
            rgba = [0.0] * 4
            colorNode.GetColor(value, rgba)
            classes.append(LabelClass(name, value, (rgba[0], rgba[1], rgba[2])))
    return classes


def _matrix(volumeNode: slicer.vtkMRMLVolumeNode) -> list[float]:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return [matrix.GetElement(i, j) for i in range(4) for j in range(4)]


def sameGeometry(a: slicer.vtkMRMLVolumeNode, b: slicer.vtkMRMLVolumeNode) -> bool:
    """Whether two volumes lie on the same voxel grid (dimensions and IJK-to-RAS matrix)."""
    sameDims = a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()
    return sameDims and all(abs(x - y) <= GEOMETRY_TOLERANCE for x, y in zip(_matrix(a), _matrix(b), strict=True))


def _readLabelmap(path: str | Path, scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLLabelMapVolumeNode:
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    if not Path(path).is_file() or not storageNode.ReadData(labelmapNode):
        raise SceneIOError(f"cannot read the segmentation result {path}")
    return labelmapNode


def placeNextTo(node: slicer.vtkMRMLNode, referenceNode: slicer.vtkMRMLNode) -> None:
    """Put ``node`` beside ``referenceNode`` in the subject hierarchy (same parent: patient/study folder)."""
    shNode = node.GetScene().GetSubjectHierarchyNode()
    referenceItem = shNode.GetItemByDataNode(referenceNode)
    if not referenceItem:
        return
    parentItem = shNode.GetItemParent(referenceItem)
    item = shNode.GetItemByDataNode(node) or shNode.CreateItem(parentItem, node)
    shNode.SetItemParent(item, parentItem)


def _completeInClassOrder(segmentation: slicer.vtkSegmentation, classes: Sequence[LabelClass]) -> None:
    """Add an empty segment for each class the result does not contain and order the segments as the classes."""
    for index, labelClass in enumerate(classes):
        segmentId = segmentation.GetSegmentIdBySegmentName(labelClass.name)
        if not segmentId:
            segmentId = segmentation.AddEmptySegment("", labelClass.name, list(labelClass.color))
        segmentation.SetSegmentIndex(segmentId, index)


def importSegmentation(
    labelPath: str | Path,
    volumeNode: slicer.vtkMRMLScalarVolumeNode,
    classes: Sequence[LabelClass],
    modelName: str,
    segmentationNode: slicer.vtkMRMLSegmentationNode | None = None,
) -> slicer.vtkMRMLSegmentationNode:
    """Import a label map written by ``segment`` as one segment per class of the model, in the model's order
    (empty where the model found nothing).

    The label map must lie on ``volumeNode``'s grid. The result replaces the segments of ``segmentationNode``
    (or goes into a new node named after the volume and the model), references the volume's geometry, follows the
    volume's parent transform and is put beside the volume in the subject hierarchy. On any error the user's scene
    is left as it was.
    """
    checkClasses(classes, modelName)
    scene = volumeNode.GetScene()
    scratch = slicer.vtkMRMLScene()
    scratchColors = colorTableFromClasses(classes, scratch, modelName)
    labelmapNode = _readLabelmap(labelPath, scratch)
    if not sameGeometry(labelmapNode, volumeNode):
        raise SceneIOError(f"the segmentation result {labelPath} is not on the grid of volume '{volumeNode.GetName()}'")
    displayNode = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    displayNode.SetAndObserveColorNodeID(scratchColors.GetID())
    labelmapNode.SetAndObserveDisplayNodeID(displayNode.GetID())
    imported = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, imported):
        raise SceneIOError(f"cannot import the segmentation result {labelPath}")
    _completeInClassOrder(imported.GetSegmentation(), classes)

    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode")
    colorNode.Copy(scratchColors)
    colorNode.SetName(scene.GenerateUniqueName(f"{modelName} classes"))
    if segmentationNode is None:
        segmentationNode = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} {modelName}")
        )
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.GetSegmentation().DeepCopy(imported.GetSegmentation())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentationNode.SetLabelmapConversionColorTableNodeID(colorNode.GetID())
    # The result lies on the volume's grid: under the volume's transform it lies where the volume is shown.
    segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    placeNextTo(segmentationNode, volumeNode)
    return segmentationNode


def segmentNames(segmentationNode: slicer.vtkMRMLSegmentationNode) -> list[str]:
    """The names of a segmentation's segments, in order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def trainingClasses(segmentationNodes: Sequence[slicer.vtkMRMLSegmentationNode]) -> list[LabelClass]:
    """One class per distinct segment name across the nodes; a name keeps its label value.

    A name found in a node's labelmap-conversion colour table (a model's result) keeps that value; other names
    get the next free values in order of appearance. Colours are the segments' own.
    """
    known: dict[str, int] = {}
    for node in segmentationNodes:
        colorNode = node.GetLabelmapConversionColorTableNode()
        if colorNode is not None:
            for labelClass in classesFromColorTable(colorNode):
                known.setdefault(labelClass.name, labelClass.value)
    nextValue = max(known.values(), default=0) + 1
    classes: dict[str, LabelClass] = {}
    for node in segmentationNodes:
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            name = segment.GetName()
            if name in classes:
                continue
            if name not in known:
                known[name] = nextValue
                nextValue += 1
            red, green, blue = segment.GetColor()
            classes[name] = LabelClass(name, known[name], (red, green, blue))
    if not classes:
        raise SceneIOError("the segmentations hold no segment; draw the structures to learn first")
    return sorted(classes.values(), key=lambda c: c.value)


def exportTrainingLabels(
    segmentationNode: slicer.vtkMRMLSegmentationNode,
    volumeNode: slicer.vtkMRMLScalarVolumeNode,
    classes: Sequence[LabelClass],
    path: str | Path,
) -> str:
    """Write the segments as one label map on ``volumeNode``'s grid, each at its class's label value.

    Slicer's export needs its labelmap and colour table in the segmentation's scene: they are temporary nodes
    there, removed again (with the helper nodes the export adds) whatever happens.
    """
    names = {c.name for c in classes}
    missing = [name for name in segmentNames(segmentationNode) if name not in names]
    if missing:
        raise SceneIOError(
            f"segmentation '{segmentationNode.GetName()}' has segments outside the classes: {', '.join(missing)}"
        )
    scene = segmentationNode.GetScene()
    with _temporaryNodes(scene):
        colorNode = colorTableFromClasses(classes, scene, "training classes")
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        segmentIds = vtk.vtkStringArray()
        segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode,
            segmentIds,
            labelmapNode,
            volumeNode,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
            colorNode,
        )
        if not exported:
            raise SceneIOError(f"cannot export segmentation '{segmentationNode.GetName()}' as a label map")
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(str(path))
        if not storageNode.WriteData(labelmapNode):
            raise SceneIOError(f"cannot write the training labels to {path}")
    return str(path)


@contextlib.contextmanager
def _temporaryNodes(scene: slicer.vtkMRMLScene) -> Iterator[None]:
    """Remove every node added to ``scene`` inside the block (Slicer's export adds display and colour nodes)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        for index in reversed(range(scene.GetNumberOfNodes())):
            node = scene.GetNthNode(index)
            if node.GetID() not in before:
                scene.RemoveNode(node)
