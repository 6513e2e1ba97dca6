"""Load the module's ``.ui`` with PySide6 (no Slicer) and render the panel to a PNG.

Slicer's custom widgets (ctk, qMRML) are unknown to plain Qt, so the Designer XML is rewritten in memory: each
custom class becomes the Qt class it stands in for, and the properties only Slicer knows are dropped. Object
names and dynamic properties (``SlicerParameterName``) are kept, which is what the tests check.

Regenerate the documentation screenshot with::

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/ui/render_panel.py docs/panel.png
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
UI_PATH = REPO_ROOT / "VoCoSlicer" / "Resources" / "UI" / "VoCoSlicer.ui"
STAND_INS = {
    "qMRMLWidget": "QWidget",
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLCheckableNodeComboBox": "QComboBox",
    "ctkPathLineEdit": "QLineEdit",
    "ctkCollapsibleButton": "QGroupBox",
}
SLICER_ONLY_PROPERTIES = {
    "nodeTypes",
    "showChildNodeTypes",
    "addEnabled",
    "removeEnabled",
    "noneEnabled",
    "noneDisplay",
    "filters",
    "collapsed",
}
# What a user sees after loading CTChest4, choosing a model and starting a fine-tuning run (tutorial state).
EXAMPLE_STATE = {
    "inputVolumeSelector": "CTChest4",
    "modelComboBox": "chest model",
    "finetuneInitComboBox": "VoCo_B_SSL_head",
    "finetuneModelSizeComboBox": "B",
    "pretrainModelSizeComboBox": "B",
    "outputSegmentationSelector": "Create new segmentation",
    "trainingSegmentationsSelector": "CTChest4 segmentation (corrected)",
    "finetuneOutputPathLineEdit": "/home/me/VoCo/models/chest model 2",
}


def stand_in_xml(ui_path: Path = UI_PATH) -> bytes:
    """The Designer XML with Slicer's custom widgets replaced by their plain Qt stand-ins."""
    tree = ET.parse(ui_path)
    root = tree.getroot()
    for widget in root.iter("widget"):
        custom_class = widget.get("class")
        if custom_class not in STAND_INS:
            continue
        widget.set("class", STAND_INS[custom_class])
        for prop in list(widget.findall("property")):
            if prop.get("name") in SLICER_ONLY_PROPERTIES:
                widget.remove(prop)
            elif custom_class == "ctkCollapsibleButton" and prop.get("name") == "text":
                prop.set("name", "title")
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    return ET.tostring(root, encoding="utf-8")


def load_panel(ui_path: Path = UI_PATH):
    """The panel as a QWidget (a QApplication must exist)."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader

    data = QByteArray(stand_in_xml(ui_path))
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(buffer)
    if widget is None:
        raise RuntimeError(f"cannot load {ui_path}")
    return widget


def show_example_state(panel) -> None:
    """Fill the stand-ins as in the tutorial so the screenshot shows a panel in use."""
    from PySide6.QtWidgets import QComboBox, QLineEdit, QWidget

    for name, text in EXAMPLE_STATE.items():
        widget = panel.findChild(QWidget, name)
        if isinstance(widget, QComboBox):
            if widget.findText(text) < 0:
                widget.addItem(text)
            widget.setCurrentText(text)
        elif isinstance(widget, QLineEdit):
            widget.setText(text)
    panel.findChild(QWidget, "segmentButton").setEnabled(True)
    panel.findChild(QWidget, "finetuneButton").setText("Cancel")
    panel.findChild(QWidget, "finetuneButton").setEnabled(True)
    panel.findChild(QWidget, "progressBar").setValue(20)
    panel.findChild(QWidget, "statusLabel").setText("finetune 40/200 · loss 0.412 · 5 min left")
    panel.findChild(QWidget, "logTextEdit").setPlainText(
        "[info] classes from --classes: 1 ribs, 2 cervical vertebral column, …, 7 tissue\n"
        "[info] initialisation: VoCo_B_SSL_head (145 tensors loaded)"
    )


def render_panel(output_path: Path) -> Path:
    """Render the panel in its example state to ``output_path`` (PNG)."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    panel = load_panel()
    show_example_state(panel)
    panel.resize(460, panel.sizeHint().height())
    app.processEvents()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output_path)):
        raise RuntimeError(f"cannot write {output_path}")
    return output_path


if __name__ == "__main__":
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    print(render_panel(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "docs" / "panel.png"))
