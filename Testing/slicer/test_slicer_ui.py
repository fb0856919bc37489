"""The panel loads in real Qt (offscreen, custom widgets as their Qt bases) and has every widget the module uses."""

import ast
import os
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import ui_render  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def used_widget_names() -> set[str]:
    tree = ast.parse((REPO / "GenerateCT" / "GenerateCT.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            names.add(node.attr)
    for node in ast.walk(tree):  # getattr(self.ui, f"{name.lower()}WindowButton")
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[-1], ast.Constant):
            if str(node.values[-1].value).endswith("WindowButton"):
                names |= {f"{n.lower()}WindowButton" for n in ("Full", "Lung", "Mediastinal")}
    return names


def test_ui_loads_and_has_every_widget_the_module_uses(tmp_path):
    from PySide6 import QtWidgets

    _app, panel = ui_render.load_panel()
    present = {w.objectName() for w in panel.findChildren(QtWidgets.QWidget)}
    missing = used_widget_names() - present
    assert not missing, f"widgets used by GenerateCT.py but absent from the .ui: {sorted(missing)}"
    assert len(used_widget_names()) >= 30
    combo = panel.findChild(QtWidgets.QComboBox, "computeComboBox")
    assert [combo.itemText(i) for i in range(combo.count())] == ["Auto", "CUDA", "CPU", "Remote"]
    token = panel.findChild(QtWidgets.QLineEdit, "serverTokenLineEdit")
    assert token.echoMode() == QtWidgets.QLineEdit.Password
    slices = panel.findChild(QtWidgets.QSpinBox, "slicesSpinBox")
    assert (slices.value(), slices.singleStep(), slices.maximum()) == (201, 2, 201)


def test_screenshot_is_written(tmp_path):
    path = ui_render.screenshot(tmp_path / "panel.png")
    assert path.stat().st_size > 5000
    if os.environ.get("GENERATECT_WRITE_SCREENSHOT"):  # refresh the committed copy on request
        ui_render.screenshot(REPO / "Resources" / "Screenshots" / "GenerateCT-panel.png")
    assert (REPO / "Resources" / "Screenshots" / "GenerateCT-panel.png").is_file()


def test_parameter_names_match_the_parameter_node():
    import xml.etree.ElementTree as ET

    root = ET.parse(ui_render.UI_FILE).getroot()
    bound = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = ast.parse((REPO / "GenerateCT" / "GenerateCT.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "GenerateCTParameterNode")
    fields = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    assert bound <= fields and "serverToken" not in fields  # the token never goes into the scene
