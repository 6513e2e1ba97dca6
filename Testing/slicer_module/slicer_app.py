"""Slicer's own Python on top of slicer-core, for running the module's Widget headlessly.

``ScriptedLoadableModule``, ``parameterNodeWrapper`` and ``i18n`` are loaded from ``../shared/slicer/<version>``
(Slicer's released files, unchanged) as ``slicer.<name>``. What neither slicer-core nor those files provide — the
Qt/CTK/PythonQt widget classes, ``slicer.app`` and the GUI-only helpers of ``slicer.util`` — is stood in here,
each stand-in with only the members the module and Slicer's connector code touch:

- widgets: plain Python objects with PythonQt's surface (properties as attributes, ``signal.connect(slot)``,
  ``widget.connect("signal(args)", slot)``, ``property``/``setProperty``, ``findChildren``), built from the
  module's real ``.ui`` XML (``loadUI``); the spin boxes keep Qt's clamping to ``minimum``/``maximum``;
- ``qt.QTimer.singleShot`` queues callbacks that :func:`processEvents` runs (the Qt event loop's part);
- ``slicer.app``: ``processEvents``, ``startupEnvironment``, ``moduleManager`` and cursor calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import tempfile
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import slicer
import slicer.util

SLICER_FILES = ("i18n", "ScriptedLoadableModule")
SLICER_VERSIONS = ("v5.10.0", "v5.12.3")


class Signal:
    """A PythonQt bound signal: ``connect``/``disconnect`` a slot, ``emit`` calls the slots in order."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any] | None = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args[: _positionalCount(slot, len(args))])  # PythonQt drops arguments a slot does not take


def _positionalCount(slot: Callable[..., Any], given: int) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return given
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return given
    return min(given, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


class QObject:
    """The PythonQt object surface the module and the connectors use."""

    SIGNALS: tuple[str, ...] = ()

    def __init__(self, parent: Any = None, *args: Any) -> None:
        self._properties: dict[str, Any] = {}
        self._children: list[QObject] = []
        self._signals: dict[str, Signal] = {}
        self.objectName = ""
        self.enabled = True
        self.toolTip = ""
        self.text = args[0] if args and isinstance(args[0], str) else ""
        self._parent = None
        if isinstance(parent, QObject):
            parent._adopt(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        signals = self.__dict__.setdefault("_signals", {})
        if name not in signals:
            signals[name] = Signal()
        return signals[name]

    def _adopt(self, child: QObject) -> None:
        child._parent = self
        self._children.append(child)

    def parent(self) -> Any:
        return self._parent

    def connect(self, signature: str, slot: Callable[..., Any]) -> None:
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature: str, slot: Callable[..., Any] | None = None) -> None:
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def property(self, name: str) -> Any:
        return self._properties.get(name)

    def setProperty(self, name: str, value: Any) -> None:
        self._properties[name] = value

    def findChildren(self, cls: type) -> list[Any]:
        found = []
        for child in self._children:
            if isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def isWidgetType(self) -> bool:
        return True


class QWidget(QObject):
    def __init__(self, parent: Any = None, *args: Any) -> None:
        super().__init__(parent, *args)
        self._layout: QLayout | None = None

    def setLayout(self, layout: QLayout) -> None:
        self._layout = layout
        layout.owner = self

    def layout(self) -> QLayout | None:
        return self._layout

    def show(self) -> None:
        pass

    def setMRMLScene(self, scene: Any) -> None:
        """qMRMLWidget's mrmlSceneChanged: every MRML child gets the scene."""
        for child in self.findChildren(QWidget):
            if child is not self and hasattr(type(child), "setMRMLScene"):
                type(child).setMRMLScene(child, scene)


class QLayout:
    def __init__(self, parent: Any = None) -> None:
        self.owner = parent
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget: QObject, *args: Any) -> None:
        if self.owner is not None:
            self.owner._adopt(widget)


class QAbstractSpinBox(QWidget):
    CAST: type = int

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._minimum, self._maximum, self._value = self.CAST(0), self.CAST(99), self.CAST(0)
        self.decimals, self.singleStep, self.suffix, self.specialValueText = 2, 1, "", ""

    def _clamp(self, value: Any) -> Any:
        return min(max(self.CAST(value), self._minimum), self._maximum)

    @property
    def minimum(self) -> Any:
        return self._minimum

    @minimum.setter
    def minimum(self, value: Any) -> None:
        self.setRange(value, max(value, self._maximum))

    @property
    def maximum(self) -> Any:
        return self._maximum

    @maximum.setter
    def maximum(self, value: Any) -> None:
        self.setRange(min(value, self._minimum), value)

    def setMinimum(self, value: Any) -> None:
        self.minimum = value

    def setMaximum(self, value: Any) -> None:
        self.maximum = value

    def setRange(self, minimum: Any, maximum: Any) -> None:
        self._minimum, self._maximum = self.CAST(minimum), self.CAST(maximum)
        self.value = self._value

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        clamped = self._clamp(value)
        if clamped != self._value:
            self._value = clamped
            self.valueChanged.emit(clamped)


class QSpinBox(QAbstractSpinBox):
    CAST = int


class QDoubleSpinBox(QAbstractSpinBox):
    CAST = float


class QCheckBox(QWidget):
    _checked = False

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        if bool(value) != self._checked:
            self._checked = bool(value)
            self.stateChanged.emit(2 if value else 0)
            self.toggled.emit(bool(value))


class QComboBox(QWidget):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._items: list[str] = []
        self._index = -1
        self.editable = False

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentIndex(self) -> int:
        return self._index

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        index = index if -1 <= index < len(self._items) else -1
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    def setCurrentIndex(self, index: int) -> None:
        self.currentIndex = index

    @property
    def currentText(self) -> str:
        return self._items[self._index] if self._index >= 0 else ""

    def addItem(self, text: str, *args: Any) -> None:
        self._items.append(str(text))
        if self._index < 0:
            self.currentIndex = 0

    def clear(self) -> None:
        self._items.clear()
        self.currentIndex = -1

    def findText(self, text: str) -> int:
        return self._items.index(text) if text in self._items else -1

    def itemText(self, index: int) -> str:
        return self._items[index]

    def setItemData(self, *args: Any) -> None:
        pass


class QPushButton(QWidget):
    checkable = False

    def click(self) -> None:
        if self.enabled:
            self.clicked.emit(False)


class QLabel(QWidget):
    pass


class QProgressBar(QWidget):
    value = 0

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum


class QPlainTextEdit(QWidget):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.lines: list[str] = []

    def appendPlainText(self, text: str) -> None:
        self.lines.append(text)

    def clear(self) -> None:
        self.lines.clear()


def _textProperty(store: str, signal: str) -> property:
    """A text property that emits ``signal`` with the new text when it changes (as Qt's line edits do)."""

    def read(self: QWidget) -> str:
        return getattr(self, store, "")

    def write(self: QWidget, value: str) -> None:
        if str(value) != read(self):
            setattr(self, store, str(value))
            getattr(self, signal).emit(str(value))

    return property(read, write)


class QLineEdit(QWidget):
    placeholderText = ""
    text = _textProperty("_text", "textChanged")


class ctkPathLineEdit(QWidget):
    currentPath = _textProperty("_path", "currentPathChanged")


class qMRMLNodeComboBox(QWidget):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._node = None
        self.nodeTypes: list[str] = []
        self.scene = None

    def setMRMLScene(self, scene: Any) -> None:
        self.scene = scene

    def currentNode(self) -> Any:
        return self._node

    def setCurrentNode(self, node: Any) -> None:
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._checked: list[Any] = []

    def checkedNodes(self) -> list[Any]:
        return list(self._checked)

    def setCheckedNodes(self, nodes: list[Any]) -> None:
        self._checked = list(nodes)
        self.checkedNodesChanged.emit()


class qMRMLWidget(QWidget):
    pass


class QTimer:
    """``singleShot`` callbacks wait in :data:`PENDING` until :func:`processEvents` runs them."""

    @staticmethod
    def singleShot(msec: int, callback: Callable[[], None]) -> None:
        PENDING.append(callback)


PENDING: list[Callable[[], None]] = []


def processEvents() -> None:
    """Run the timer callbacks that are due (one round, like one pass of Qt's event loop)."""
    due = list(PENDING)
    PENDING.clear()
    for callback in due:
        callback()


class QSettings:
    """Empty settings: every value is its default (developer mode off)."""

    def contains(self, key: str) -> bool:
        return False

    def value(self, key: str, default: Any = None) -> Any:
        return default


class _StartupEnvironment:
    def __init__(self, variables: dict[str, str]) -> None:
        self._variables = variables

    def keys(self) -> list[str]:
        return list(self._variables)

    def value(self, name: str) -> str:
        return self._variables[name]


class _ModuleManager(QObject):
    pass


class App:
    """``slicer.app``: the members the module and ``slicer.util`` call."""

    def __init__(self, startupEnvironment: dict[str, str]) -> None:
        self._startupEnvironment = startupEnvironment
        self._moduleManager = _ModuleManager()

    def processEvents(self) -> None:
        processEvents()

    def translate(self, context: str, text: str) -> str:
        return text  # no translation loaded: the source language

    def startupEnvironment(self) -> _StartupEnvironment:
        return _StartupEnvironment(self._startupEnvironment)

    def moduleManager(self) -> _ModuleManager:
        return self._moduleManager

    def setOverrideCursor(self, cursor: Any) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass


def _namespace(name: str, classes: dict[str, type]) -> types.ModuleType:
    """A module whose unknown capitalised names are empty widget classes (types the connectors compare with)."""
    module = types.ModuleType(name)
    module.__dict__.update(classes)

    def __getattr__(attribute: str) -> Any:
        if attribute[:1].isupper() or attribute.startswith(("ctk", "q")):
            stand_in = type(attribute, (QWidget,), {})
            setattr(module, attribute, stand_in)
            return stand_in
        raise AttributeError(attribute)

    module.__getattr__ = __getattr__
    return module


QT_CLASSES = {
    "QObject": QObject,
    "QWidget": QWidget,
    "QVBoxLayout": QLayout,
    "QHBoxLayout": QLayout,
    "QFormLayout": QLayout,
    "QSpinBox": QSpinBox,
    "QDoubleSpinBox": QDoubleSpinBox,
    "QCheckBox": QCheckBox,
    "QComboBox": QComboBox,
    "QPushButton": QPushButton,
    "QLabel": QLabel,
    "QProgressBar": QProgressBar,
    "QPlainTextEdit": QPlainTextEdit,
    "QLineEdit": QLineEdit,
    "QTimer": QTimer,
    "QSettings": QSettings,
}
SLICER_WIDGETS = {
    "qMRMLNodeComboBox": qMRMLNodeComboBox,
    "qMRMLCheckableNodeComboBox": qMRMLCheckableNodeComboBox,
    "qMRMLWidget": qMRMLWidget,
}


def _value(prop: ET.Element) -> Any:
    node = next(iter(prop))
    if node.tag == "number":
        return int(node.text)
    if node.tag == "double":
        return float(node.text)
    if node.tag == "bool":
        return node.text == "true"
    if node.tag == "stringlist":
        return [s.text for s in node.findall("string")]
    return node.text or ""


def loadUI(path: str) -> QWidget:
    """Build the widget tree of a Designer ``.ui`` file from the stand-ins, properties in the file's order."""
    qt, ctk = sys.modules["qt"], sys.modules["ctk"]

    def build(element: ET.Element, parent: QWidget | None) -> QWidget:
        className = element.get("class")
        namespace = slicer if className.startswith("qMRML") else ctk if className.startswith("ctk") else qt
        widget = getattr(namespace, className)(parent)
        widget.objectName = element.get("name")
        for prop in element.findall("property"):
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), _value(prop))
            else:
                setattr(widget, prop.get("name"), _value(prop))
        for item in element.findall("item"):
            if isinstance(widget, QComboBox):
                widget.addItem(item.findtext("property/string"))
        for child in element.iter("widget"):
            if child is not element and _parentWidget(element, child):
                build(child, widget)
        return widget

    return build(ET.parse(path).getroot().find("widget"), None)


def _parentWidget(element: ET.Element, child: ET.Element) -> bool:
    """Whether ``child`` is a widget directly under ``element`` (layouts and items in between)."""

    def walk(node: ET.Element) -> Iterator[ET.Element]:
        for sub in node:
            if sub.tag == "widget":
                yield sub
            else:
                yield from walk(sub)

    return child in list(walk(element))


def _loadLabelVolume(path: str) -> Any:
    """``slicer.util.loadLabelVolume`` without Slicer's IO manager: a label map node read by its storage node."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", Path(path).name.split(".")[0])
    storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storageNode.SetFileName(str(path))
    if not storageNode.ReadData(node):
        raise RuntimeError(f"cannot load {path}")
    node.SetAndObserveStorageNodeID(storageNode.GetID())
    return node


def _saveNode(node: Any, path: str, *args: Any) -> bool:
    """``slicer.util.saveNode`` without Slicer's IO manager: the node's own storage node writes it."""
    storageNode = node.GetStorageNode() or node.CreateDefaultStorageNode()
    storageNode.SetFileName(str(path))
    return bool(storageNode.WriteData(node))


def childWidgetVariables(widget: QWidget) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{w.objectName: w for w in widget.findChildren(QWidget) if w.objectName})


def _loadSlicerFile(version: str, name: str, package: bool = False) -> types.ModuleType:
    folder = SHARED_SLICER / version / "slicer"
    path = folder / name / "__init__.py" if package else folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(
        f"slicer.{name}", path, submodule_search_locations=[str(path.parent)] if package else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(slicer, name, module)
    return module


SHARED_SLICER = Path(__file__).resolve().parents[3] / "shared" / "slicer"


@contextlib.contextmanager
def slicerApplication(
    version: str, startupEnvironment: dict[str, str] | None = None
) -> Iterator[types.SimpleNamespace]:
    """Slicer ``version``'s Python files on slicer-core with the stand-ins; everything is undone afterwards."""
    saved = {name: sys.modules.get(name) for name in ("qt", "ctk")}
    savedSlicer = dict(slicer.__dict__)
    savedSlicerModules = {name: m for name, m in sys.modules.items() if name.startswith("slicer.")}
    errors: list[str] = []
    messages: list[str] = []
    try:
        sys.modules["qt"] = _namespace("qt", QT_CLASSES)
        sys.modules["qt"].Qt = types.SimpleNamespace(ToolTipRole=3, WaitCursor=3)
        sys.modules["ctk"] = _namespace("ctk", {"ctkPathLineEdit": ctkPathLineEdit})
        for name, cls in SLICER_WIDGETS.items():
            setattr(slicer, name, cls)
        for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLSubjectHierarchyTreeView"):
            setattr(slicer, name, type(name, (QWidget,), {}))
        slicer.app = App(startupEnvironment or {})
        slicer.modules = types.SimpleNamespace()
        util = slicer.util
        patches = {
            "loadUI": loadUI,
            "childWidgetVariables": childWidgetVariables,
            "errorDisplay": lambda text, *args, **kwargs: errors.append(str(text)),
            "confirmOkCancelDisplay": lambda *args, **kwargs: False,
            "mainWindow": lambda: None,
            "setSliceViewerLayers": lambda **kwargs: None,
            "WaitCursor": contextlib.nullcontext,
            "delayDisplay": lambda message, *args, **kwargs: messages.append(str(message)),
            "tempDirectory": lambda *args, **kwargs: tempfile.mkdtemp(prefix="VoCoSlicerSelfTest-"),
            "loadLabelVolume": _loadLabelVolume,
            "saveNode": _saveNode,
        }
        savedUtil = {name: getattr(util, name, None) for name in patches}
        for name, value in patches.items():
            setattr(util, name, value)
        try:
            for name in SLICER_FILES[:1]:
                _loadSlicerFile(version, name)
            _loadSlicerFile(version, "parameterNodeWrapper", package=True)
            _loadSlicerFile(version, "ScriptedLoadableModule")
            yield types.SimpleNamespace(qt=sys.modules["qt"], ctk=sys.modules["ctk"], errors=errors, messages=messages)
        finally:
            for name, value in savedUtil.items():
                setattr(util, name, value)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in [n for n in sys.modules if n.startswith("slicer.") and n not in savedSlicerModules]:
            del sys.modules[name]
        for name in [n for n in slicer.__dict__ if n not in savedSlicer]:
            delattr(slicer, name)
        slicer.__dict__.update(savedSlicer)
        PENDING.clear()
