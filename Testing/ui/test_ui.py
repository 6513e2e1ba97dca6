"""The module's .ui against the Widget code: every widget the Widget uses exists, every parameter of the
parameter node is bound to a widget that can show it, and the panel renders (screenshot in Testing/output/)."""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import xml.etree.ElementTree as ET

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtUiTools")

from render_panel import REPO_ROOT, UI_PATH, load_panel, render_panel

MODULE_PATH = REPO_ROOT / "VoCoSlicer" / "VoCoSlicer.py"
PARAMETERS_PATH = REPO_ROOT / "VoCoSlicer" / "VoCoSlicerLib" / "parameters.py"
OUTPUT_DIR = REPO_ROOT / "Testing" / "output"
# The widget class that shows each kind of parameter (as Slicer's parameterNodeWrapper connects them).
WIDGET_FOR_TYPE = {"Path": "ctkPathLineEdit", "int": "QSpinBox", "bool": "QCheckBox", "str": "QComboBox"}


def widget_names_used_by_widget_code() -> set[str]:
    """Every ``self.ui.<name>`` in VoCoSlicer.py."""
    tree = ast.parse(MODULE_PATH.read_text(encoding="utf-8"))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def parameter_fields() -> dict[str, ast.expr]:
    """The annotated fields of the class decorated with ``parameterNodeWrapper``."""
    tree = ast.parse(MODULE_PATH.read_text(encoding="utf-8"))
    wrapped = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    assert len(wrapped) == 1, "VoCoSlicer.py must define one parameterNodeWrapper class"
    return {
        item.target.id: item.annotation
        for item in wrapped[0].body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    }


def bound_widgets() -> dict[str, ET.Element]:
    """SlicerParameterName → the <widget> element that carries it, from the raw Designer XML."""
    bound = {}
    for widget in ET.parse(UI_PATH).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.findtext("string")
                assert name not in bound, f"parameter {name} is bound to two widgets"
                bound[name] = widget
    return bound


def test_every_widget_the_code_uses_is_in_the_ui() -> None:
    from PySide6.QtWidgets import QApplication, QWidget

    _app = QApplication.instance() or QApplication([])
    panel = load_panel()
    used = widget_names_used_by_widget_code()
    assert {"segmentButton", "finetuneButton", "pretrainButton", "progressBar"} <= used
    missing = sorted(name for name in used if panel.findChild(QWidget, name) is None)
    assert not missing, f"VoCoSlicer.py uses widgets that the .ui lacks: {missing}"


# Lists that change at run time (the models found): Slicer's combo-box connector needs a fixed Choice list, so
# these are synced by the widget code, never bound through SlicerParameterName.
HAND_SYNCED = {"model": "modelComboBox", "finetuneInit": "finetuneInitComboBox"}
WIDGET_FOR_TYPE["float"] = "QDoubleSpinBox"


def test_every_parameter_is_bound_to_a_widget_that_can_show_it() -> None:
    fields = parameter_fields()
    bound = bound_widgets()
    assert set(bound) == set(fields) - set(HAND_SYNCED), (
        f"unbound parameters: {sorted(set(fields) - set(bound) - set(HAND_SYNCED))}; bindings without "
        f"a parameter: {sorted(set(bound) - set(fields))}; "
        f"hand-synced but bound: {sorted(set(bound) & set(HAND_SYNCED))}"
    )
    # a plain str is either hand-synced or free text in a QLineEdit (Slicer's QLineEditToStrConnector)
    free_text = {name for name, widget in bound.items() if widget.get("class") == "QLineEdit"}
    assert {name for name in fields if ast.unparse(fields[name]) == "str"} == set(HAND_SYNCED) | free_text
    assert set(HAND_SYNCED.values()) <= widget_names_used_by_widget_code()
    for name, widget in bound.items():
        annotation = fields[name]
        type_name = ast.unparse(annotation)
        if type_name.startswith("vtkMRML"):
            assert widget.get("class") == "qMRMLNodeComboBox", name
            assert widget.findtext("property[@name='nodeTypes']/stringlist/string") == type_name, name
            continue
        base_type = type_name.removeprefix("Annotated[").split(",")[0].rstrip("]")
        expected = "QLineEdit" if type_name == "str" else WIDGET_FOR_TYPE[base_type]
        assert widget.get("class") == expected, f"{name}: {type_name} in {widget.get('class')}"
        if widget.get("class") == "QComboBox":
            # Slicer's ComboBoxToStringableConnector raises in connectGui without a Choice annotation.
            assert "Choice(" in type_name, f"{name}: a str bound to a combo box needs Annotated[str, Choice(...)]"
        if widget.get("class") in ("QSpinBox", "QDoubleSpinBox"):
            # Without WithinRange Slicer's spin-box connector replaces the .ui's range with the full int range.
            number = "number" if widget.get("class") == "QSpinBox" else "double"
            low = widget.findtext(f"property[@name='minimum']/{number}")
            high = widget.findtext(f"property[@name='maximum']/{number}")
            assert low is not None and high is not None, f"{name}: the .ui must give the range"
            calls = [n for n in ast.walk(annotation) if isinstance(n, ast.Call)]
            ranges = [n for n in calls if ast.unparse(n.func) == "WithinRange"]
            assert len(ranges) == 1, f"{name}: {type_name} lacks WithinRange"
            given = [ast.literal_eval(a) for a in ranges[0].args]
            assert given == [float(low), float(high)], f"{name}: WithinRange{tuple(given)} vs the .ui's {low}..{high}"


def test_choice_parameters_offer_exactly_the_backend_choices() -> None:
    # parameters.py imports nothing of Slicer; loading it alone keeps slicer-core out of this Qt-only test.
    spec = importlib.util.spec_from_file_location("vocoParameters", PARAMETERS_PATH)
    parameters = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = parameters
    spec.loader.exec_module(parameters)
    bound = bound_widgets()
    for name, choices in (
        ("device", parameters.DEVICES),
        ("finetuneModelSize", parameters.MODEL_SIZES),
        ("pretrainModelSize", parameters.MODEL_SIZES),
    ):
        items = [item.findtext("property/string") for item in bound[name].findall("item")]
        assert items == list(choices), name
        assert f"Choice(list({'DEVICES' if name == 'device' else 'MODEL_SIZES'}))" in ast.unparse(
            parameter_fields()[name]
        )


def test_the_panel_renders_to_a_screenshot() -> None:
    from PySide6.QtGui import QImage

    path = render_panel(OUTPUT_DIR / "VoCoSlicer_panel.png")
    image = QImage(str(path))
    assert image.width() >= 400 and image.height() >= 600
