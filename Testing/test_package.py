"""Package hygiene: cheap offline import, public names resolve, no Slicer/Qt/VTK in the library."""

import ast
import subprocess
import sys
import time
from pathlib import Path

import GenerateCTLib

LIBRARY = Path(GenerateCTLib.__file__).parent


def test_import_is_cheap_and_side_effect_free():
    code = "import sys, GenerateCTLib; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert time.perf_counter() - start < 5  # process start included; the import itself is milliseconds
    assert out.stdout.strip() == "[]"


def test_public_names_resolve():
    for name in GenerateCTLib.__all__:
        assert getattr(GenerateCTLib, name) is not None


def test_library_never_imports_slicer_qt_or_vtk():
    forbidden = {"slicer", "qt", "vtk", "ctk", "PythonQt", "PyQt5", "PySide6"}
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path}: imports {name}"
