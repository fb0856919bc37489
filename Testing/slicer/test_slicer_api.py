"""GenerateCT.py against the Slicer API manifest (static: proves names and keywords exist, not behaviour)."""

from pathlib import Path

import pytest
from api_check import ApiChecker, load_library_modules, ui_widget_classes

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "GenerateCT" / "GenerateCT.py"
UI = REPO / "GenerateCT" / "Resources" / "UI" / "GenerateCT.ui"


@pytest.fixture(scope="module")
def checker():
    return ApiChecker(ui_classes=ui_widget_classes(UI), library_modules=load_library_modules())


def test_module_uses_only_existing_slicer_qt_vtk_api(checker):
    source = MODULE.read_text()
    assert checker.check(source) == []
    assert checker.check_property_calls(source) == []
    counts = checker.counts
    print("checked:", counts)  # shown with -s; quoted in the issue report
    assert counts["slicer_paths"] >= 40 and counts["camel_methods"] >= 80 and counts["ui_members"] >= 60
    assert counts["keyword_calls"] >= 20 and counts["node_classes"] >= 1


@pytest.mark.parametrize(("snippet", "expected"), [
    ("slicer.util.loadUIX('x')", "slicer.util has no 'loadUIX'"),
    ("node.SetWindowLevl(1, 2)", "SetWindowLevl() exists on no"),
    ("slicer.util.addVolumeFromArray(a, ijkToRas=m)", "no keyword 'ijkToRas'"),
    ("slicer.mrmlScene.AddNewNodeByClass('vtkMRMLScalarVolumeNodeX')", "node class 'vtkMRMLScalarVolumeNodeX'"),
    ("slicer.modules.volumez.logic()", "no Slicer module 'volumez'"),
    ("slicer.app.layoutManagr()", "qSlicerApplication has no 'layoutManagr'"),
    ("slicer.vtkMRMLLayoutNode.SlicerLayoutNoSuchView", "has no 'SlicerLayoutNoSuchView'"),
    ("self.ui.ageSpinBox.setValu(3)", "QSpinBox has no 'setValu'"),
    ("self.ui.customModelPathLineEdit.currentPth", "ctkPathLineEdit has no 'currentPth'"),
    ("self.ui.noSuchWidget.show()", "no widget of that name"),
    ("self.undefinedHelper()", "self.undefinedHelper() is not defined"),
    ("support.no_such_helper()", "slicer_support has no 'no_such_helper'"),
    ("worker.no_such_helper()", "slicer_worker has no 'no_such_helper'"),
    ("support.WorkerRun(print, print)", "slicer_support has no 'WorkerRun'"),
    ("t = PyTorchUtils.PyTorchUtilsLogic(); t.installTorch(askConfirmation=False, torchVersion='>=2')",
     "no keyword 'torchVersion'"),
])
def test_checker_catches_typos(checker, snippet, expected):
    source = f"import slicer\nimport PyTorchUtils\nfrom GenerateCTLib import slicer_support as support\n" \
             f"from GenerateCTLib import slicer_worker as worker\ndef f(self, node, a, m):\n    {snippet}\n"
    problems = checker.check(source)
    assert any(expected in p for p in problems), problems


def test_checker_flags_calling_a_qt_property(checker):
    problems = checker.check_property_calls("def f(self):\n    return self.ui.serverUrlLineEdit.text()\n")
    assert problems and "use .text without parentheses" in problems[0]
