"""Load ``GenerateCT.ui`` in plain Qt (PySide6, offscreen) with Slicer/CTK custom widgets replaced by their Qt
base classes, and optionally save a screenshot of the panel for review.

    QT_QPA_PLATFORM=offscreen python Testing/slicer/ui_render.py Resources/Screenshots/GenerateCT-panel.png
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "GenerateCT" / "Resources" / "UI" / "GenerateCT.ui"
FALLBACK = {"ctkCollapsibleButton": "QGroupBox", "ctkSliderWidget": "QDoubleSpinBox",
            "ctkPathLineEdit": "QLineEdit", "qMRMLWidget": "QWidget"}


def plain_qt_ui(text: str) -> str:
    """Rewrite custom classes to Qt bases; a collapsible button's ``text`` becomes a group box ``title``."""
    text = re.sub(r"<customwidgets>.*?</customwidgets>", "", text, flags=re.S)
    for custom, base in FALLBACK.items():
        text = text.replace(f'class="{custom}"', f'class="{base}" data-custom="{custom}"')
    text = re.sub(r'(<widget class="QGroupBox" data-custom="ctkCollapsibleButton" name="\w+">\s*<property name=")text"',
                  r'\1title"', text)
    text = re.sub(r'<property name="(collapsed|filters)">.*?</property>', "", text, flags=re.S)
    return text.replace(' data-custom="ctkCollapsibleButton"', "").replace(' data-custom="ctkSliderWidget"', "") \
        .replace(' data-custom="ctkPathLineEdit"', "").replace(' data-custom="qMRMLWidget"', "")


def load_panel():
    """(QApplication, the loaded top-level QWidget)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    data = QtCore.QByteArray(plain_qt_ui(UI_FILE.read_text()).encode())
    buffer = QtCore.QBuffer(data)
    buffer.open(QtCore.QIODevice.ReadOnly)
    widget = QUiLoader().load(buffer)
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {UI_FILE}")
    return app, widget


def screenshot(path: str | os.PathLike) -> Path:
    """Render the panel as a user sees it while a run goes on (example prompt, heatmaps of an earlier run)."""
    from PySide6 import QtWidgets

    app, panel = load_panel()
    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QtWidgets.QPlainTextEdit, "impressionTextEdit").setPlainText("Cardiomegaly. Bilateral pleural effusion.")
    find(QtWidgets.QComboBox, "attentionComboBox").addItems(
        ["phrase: Cardiomegaly", "phrase: Bilateral pleural effusion", "word: cardiomegaly", "word: effusion"])
    find(QtWidgets.QGroupBox, "remoteGroupBox").setVisible(False)
    find(QtWidgets.QPushButton, "downloadModelButton").setVisible(False)
    find(QtWidgets.QLabel, "modelStatusLabel").setText("Model: Resources/Models/demo")
    slices = find(QtWidgets.QSpinBox, "slicesSpinBox")
    slices.setMaximum(33)  # what the module sets for the demo model (slicer_support.panel_slice_limits)
    slices.setValue(33)
    find(QtWidgets.QPushButton, "generateButton").setText("Cancel")  # what Generate reads while a run is going
    find(QtWidgets.QProgressBar, "progressBar").setValue(62)
    find(QtWidgets.QLabel, "statusLabel").setText("Super-resolution 3/25 - about 4 min 10 s left (6 min 02 s elapsed)")
    find(QtWidgets.QPlainTextEdit, "logTextEdit").setPlainText(
        "$ PythonSlicer -m GenerateCTLib.cli generate …\nloading bundle models/demo\n")
    panel.resize(440, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(path), "PNG"):
        raise RuntimeError(f"could not write {path}")
    return path


if __name__ == "__main__":
    print(screenshot(sys.argv[1] if len(sys.argv) > 1 else REPO / "Resources" / "Screenshots" / "GenerateCT-panel.png"))
