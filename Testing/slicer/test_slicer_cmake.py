"""Extension packaging: the CMake lists cover every Python file and resource; extension metadata is complete."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [item for item in match.group(1).split() if not item.startswith("#")]


def test_top_level_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(GenerateCT)" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text
    for url in re.findall(r"main/(Resources/\S+?\.png)", text):
        assert (REPO / url).is_file(), url


def test_module_lists_every_python_file_and_resource():
    text = (REPO / "GenerateCT" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    library = set(cmake_list(text, "MODULE_LIBRARY_SCRIPTS"))
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "GenerateCTLib").rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = sorted(on_disk - library)
    assert not missing, f"add to MODULE_LIBRARY_SCRIPTS in GenerateCT/CMakeLists.txt: {missing}"
    assert library - on_disk == set(), f"listed but missing: {sorted(library - on_disk)}"
    # the bundled demo model is installed as a folder by its own install(DIRECTORY) rule
    demo = REPO / "GenerateCTLib" / "models" / "demo"
    assert "set(DEMO_MODEL_DIR ${PROJECT_SOURCE_DIR}/GenerateCTLib/models/demo)" in text
    assert "install(DIRECTORY ${DEMO_MODEL_DIR}" in text
    non_python = [p for p in (REPO / "GenerateCTLib").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and demo not in p.parents]
    assert non_python == [], f"library data files need a RESOURCES entry: {non_python}"
    module_py = {p.name for p in (REPO / "GenerateCT").glob("*.py")}
    scripts = {s.replace("${MODULE_NAME}", "GenerateCT") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    assert module_py <= scripts
    resources = {r.replace("${MODULE_NAME}", "GenerateCT") for r in cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    on_disk = {p.relative_to(REPO / "GenerateCT").as_posix() for p in (REPO / "GenerateCT" / "Resources").rglob("*")
               if p.is_file()}
    assert on_disk == resources


def test_module_finds_its_resources_in_source_and_installed_layouts(tmp_path):
    from GenerateCTLib.slicer_support import find_resource

    assert find_resource(REPO / "GenerateCT", "UI/GenerateCT.ui").is_file()
    installed = tmp_path / "qt-scripted-modules"
    (installed / "Resources" / "UI").mkdir(parents=True)
    (installed / "Resources" / "UI" / "GenerateCT.ui").write_text("<ui/>")
    assert find_resource(installed, "UI/GenerateCT.ui") == installed / "Resources" / "UI" / "GenerateCT.ui"
