"""Static check of Slicer-facing Python code against the Slicer API manifest (``Testing/Data/slicer_api.json``).

What it proves: the names we call exist in Slicer/CTK/PyTorchUtils sources (at the manifest's commits), in
Qt (PySide6) or in VTK, with keyword names that the recorded Python signatures accept. What it cannot prove:
that Slicer behaves as we expect at run time (that needs Slicer; see ``GenerateCTTest``).

Checks (each problem is one string naming the line):

1. every ``slicer.<...>`` attribute path resolves: a Python module shipped with Slicer and a name in it, a
   wrapped C++ class (and its method or enum value), ``slicer.app`` (qSlicerApplication), ``slicer.mrmlScene``
   (vtkMRMLScene) or ``slicer.modules.<module>`` (a module the manifest knows); ``from slicer... import X``
   and ``from DICOMLib import X`` too;
2. calls of recorded Python functions/methods use only keyword names their signature accepts;
3. every CamelCase method/attribute called on anything but a Python module or our own objects exists on some
   class of the manifest, of Qt or of VTK (``self.<m>`` must be defined in the file or by the scripted bases);
4. ``self.ui.<widget>`` exists in the .ui, and what is used on it exists on that widget's class; calling a Qt
   property (``text()``, ``value()``) is flagged, because PythonQt exposes properties as plain attributes;
5. class names passed to ``AddNewNodeByClass`` / ``CreateNodeByClass`` / ``nodeClassName=`` exist;
6. names used from the library modules ``GenerateCTLib.slicer_support`` and ``GenerateCTLib.slicer_worker``
   (imported as ``support`` and ``worker``) exist.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

MANIFEST = Path(__file__).resolve().parents[1] / "Data" / "slicer_api.json"
# Objects that Slicer's Python manager adds to the ``slicer`` namespace at start-up
# (Base/QTCore/qSlicerCorePythonManager.cxx, Base/Python/slicer/__init__.py): name -> manifest class.
RUNTIME_OBJECTS = {"app": "qSlicerApplication", "mrmlScene": "vtkMRMLScene"}
CAMEL = re.compile(r"^[a-z]+[A-Z]\w*$|^[A-Z][a-z0-9]+[A-Z]\w*$|^[A-Z][a-z0-9]+$")
NODE_CLASS_CALLS = {"AddNewNodeByClass", "CreateNodeByClass", "GetFirstNodeByClass", "GetNodesByClass",
                    "getNodesByClass", "getFirstNodeByClassByName"}
# Qt base classes for Slicer/CTK custom widgets, used when loading the .ui in plain Qt (PySide6)
QT_FALLBACK = {"ctkCollapsibleButton": "QGroupBox", "ctkSliderWidget": "QDoubleSpinBox",
               "ctkPathLineEdit": "QLineEdit", "qMRMLWidget": "QWidget"}


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@functools.lru_cache(maxsize=1)
def qt_classes() -> dict:
    from PySide6 import QtCore, QtGui, QtWidgets

    classes = {}
    for module in (QtCore, QtGui, QtWidgets):
        # PySide6 loads classes lazily: go through dir()/getattr, not vars()
        for name in dir(module):
            obj = getattr(module, name) if name.startswith("Q") else None
            if isinstance(obj, type):
                classes[name] = obj
    return classes


@functools.lru_cache(maxsize=1)
def qt_names() -> frozenset:
    return frozenset(name for cls in qt_classes().values() for name in dir(cls))


@functools.lru_cache(maxsize=4096)
def vtk_has(name: str) -> bool:
    return name in _vtk_names()


@functools.lru_cache(maxsize=1)
def _vtk_names() -> frozenset:
    """Every attribute of every VTK class, when the ``vtk`` wheel is installed. Without it the set is empty,
    which only makes the check stricter (a VTK-only name would be reported)."""
    try:
        import vtkmodules.all as vtk_all
    except ImportError:
        return frozenset()

    return frozenset(n for cls in vars(vtk_all).values() if isinstance(cls, type) for n in dir(cls))


def parse_signature(signature: str) -> tuple[list[str], bool, bool]:
    """``"(self, a, b=1, **kw)"`` -> (parameter names without self/cls, has *args, has **kwargs)."""
    tree = ast.parse(f"def f{signature}: pass").body[0]
    args = tree.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
    return names, args.vararg is not None, args.kwarg is not None


class Manifest:
    def __init__(self, data: dict):
        self.cpp = data["cpp"]
        self.python = data["python"]
        self.cpp_members: dict[str, set[str]] = {}
        for name in self.cpp:
            self.cpp_members[name] = self._members(name)
        self.all_cpp_names = set().union(*self.cpp_members.values())
        self.py_methods: dict[str, list[str]] = {}  # method name -> signatures
        self.py_functions: dict[str, dict[str, str]] = {}
        for module, entry in self.python.items():
            module = module.split(":")[-1]
            self.py_functions[module] = entry["functions"]
            for cls in entry["classes"].values():
                for method, signature in cls["methods"].items():
                    self.py_methods.setdefault(method, []).append(signature)
        self.module_names = {n[len("qSlicer"):-len("Module")].lower() for n in self.cpp
                             if n.startswith("qSlicer") and n.endswith("Module") and len(n) > 13}
        self.module_names |= {m.split(":")[-1].split(".")[0].lower() for m in self.python}

    def _members(self, name: str, seen=None) -> set[str]:
        seen = seen or set()
        if name in seen or name not in self.cpp:
            return set()
        seen.add(name)
        entry = self.cpp[name]
        members = set(entry["methods"]) | set(entry.get("properties", {})) | set(entry.get("enums", []))
        for base in entry["bases"]:
            members |= self._members(base, seen)
        return members

    def class_has(self, cls: str, name: str) -> bool:
        """``name`` on a manifest class or (for its Qt/VTK bases, which the manifest omits) on those."""
        if name in self.cpp_members.get(cls, set()):
            return True
        for base in self._ancestors(cls):
            if base.startswith("Q") and base in qt_classes():
                return hasattr(qt_classes()[base], name)
            if base.startswith("vtk") and base not in self.cpp and vtk_has(name):
                return True
        return False

    def _ancestors(self, cls: str) -> list[str]:
        out, todo = [], [cls]
        while todo:
            current = todo.pop()
            out.append(current)
            todo += self.cpp.get(current, {}).get("bases", [])
        return out

    def python_module_names(self, module: str) -> set[str] | None:
        """Names defined by a shipped Python module (or package: the union of its submodules)."""
        found = None
        for key, entry in self.python.items():
            key = key.split(":")[-1]
            if key == module or key == module + ".__init__" or key.startswith(module + "."):
                found = found or set()
                found |= set(entry["functions"]) | set(entry["classes"]) | set(entry["names"])
                if key.startswith(module + ".") and not key.endswith("__init__"):
                    found.add(key[len(module) + 1:].split(".")[0])
        return found

    def function_signature(self, module: str, name: str) -> str | None:
        for key, functions in self.py_functions.items():
            if (key == module or key == module + ".__init__") and name in functions:
                return functions[name]
        return None


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def ui_widget_classes(ui_path: Path) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(ui_path).getroot().iter("widget")}


def _qt_property_names(qt_class) -> set[str]:
    meta = qt_class.staticMetaObject
    return {bytes(meta.property(i).name()).decode() if not isinstance(meta.property(i).name(), str)
            else meta.property(i).name() for i in range(meta.propertyCount())}


class ApiChecker:
    def __init__(self, manifest: dict | None = None, ui_classes: dict[str, str] | None = None,
                 library_modules: dict | None = None):
        self.m = Manifest(manifest or load_manifest())
        self.ui_classes = ui_classes or {}
        self.library = library_modules or {}  # name in GenerateCTLib (e.g. "slicer_support") -> module
        self.counts = {"slicer_paths": 0, "keyword_calls": 0, "camel_methods": 0, "ui_members": 0,
                       "node_classes": 0, "library_names": 0}

    # -- helpers ---------------------------------------------------------------------------------------------
    def _problem(self, node, text):
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {text}")

    def _check_keywords(self, call: ast.Call, signature: str, what: str):
        names, varargs, varkw = parse_signature(signature)
        self.counts["keyword_calls"] += 1
        for keyword in call.keywords:
            if keyword.arg is not None and keyword.arg not in names and not varkw:
                self._problem(call, f"{what}() has no keyword {keyword.arg!r}; signature {signature}")
        if not varargs and not any(isinstance(a, ast.Starred) for a in call.args) and len(call.args) > len(names):
            self._problem(call, f"{what}() takes at most {len(names)} positional arguments, got {len(call.args)}")

    def _resolve_slicer_path(self, node, parts: list[str]) -> None:
        """parts = ['slicer', ...] (an attribute chain, not crossing calls)."""
        self.counts["slicer_paths"] += 1
        path = ".".join(parts)
        if len(parts) == 1:
            return
        head, rest = parts[1], parts[2:]
        if head in RUNTIME_OBJECTS:
            if rest and not self.m.class_has(RUNTIME_OBJECTS[head], rest[0]):
                self._problem(node, f"{path}: {RUNTIME_OBJECTS[head]} has no {rest[0]!r}")
            return
        if head == "modules":
            if rest and rest[0].lower() not in self.m.module_names:
                self._problem(node, f"{path}: no Slicer module {rest[0]!r}")
            elif len(rest) > 1 and not self.m.class_has("qSlicerAbstractCoreModule", rest[1]):
                self._problem(node, f"{path}: a module object has no {rest[1]!r}")
            return
        if head in self.m.cpp:
            if rest and not self.m.class_has(head, rest[0]):
                self._problem(node, f"{path}: class {head} has no {rest[0]!r}")
            return
        module = f"slicer.{head}"
        names = self.m.python_module_names(module)
        if names is None:
            self._problem(node, f"{path}: 'slicer' has no attribute {head!r}")
            return
        if rest and rest[0] not in names:
            self._problem(node, f"{path}: {module} has no {rest[0]!r}")

    # -- main ------------------------------------------------------------------------------------------------
    def check(self, source: str) -> list[str]:
        self.problems = []
        tree = ast.parse(source)
        imported_functions: dict[str, str] = {}  # local name -> signature
        module_aliases: dict[str, str] = {}  # local name -> shipped python module
        own_methods = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        own_methods |= {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for base in ("ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
            own_methods |= set(self.m.python["slicer.ScriptedLoadableModule"]["classes"][base]["methods"])
        own_methods |= {n for n in dir(__import__("unittest").TestCase)}
        own_methods |= set(self.m.python["slicer.util"]["classes"]["VTKObservationMixin"]["methods"])
        # attributes our code assigns (callbacks such as self.logCallback = ...)
        own_methods |= {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                        if isinstance(t, ast.Attribute)}
        own_methods |= {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                        if isinstance(t, ast.Tuple) for t in t.elts if isinstance(t, ast.Attribute)}
        # methods that @parameterNodeWrapper adds (slicer/parameterNodeWrapper/wrapper.py: _connectGui, ...)
        if any(isinstance(n, ast.Name) and n.id == "parameterNodeWrapper" for n in ast.walk(tree)):
            wrapper = self.m.python["slicer.parameterNodeWrapper.wrapper"]["functions"]
            own_methods |= {name[1:] for name in wrapper if name.startswith("_") and not name.startswith("__")}

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):  # a scripted module imported by name, e.g. import PyTorchUtils
                for alias in node.names:
                    if self.m.python_module_names(f"{alias.name}.{alias.name}") is not None:
                        module_aliases[alias.asname or alias.name] = f"{alias.name}.{alias.name}"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("slicer", "DICOMLib"):
                names = self.m.python_module_names(node.module)
                for alias in node.names:
                    local = alias.asname or alias.name
                    if node.module == "slicer":
                        self._resolve_slicer_path(node, ["slicer", alias.name])
                        continue
                    self.counts["slicer_paths"] += 1
                    if names is None or alias.name not in names:
                        self._problem(node, f"from {node.module} import {alias.name}: not in the manifest")
                        continue
                    signature = self.m.function_signature(node.module, alias.name)
                    if signature:
                        imported_functions[local] = signature
                    if self.m.python_module_names(f"{node.module}.{alias.name}") is not None:
                        module_aliases[local] = f"{node.module}.{alias.name}"

        library_aliases: dict[str, str] = {}  # local name -> library module name (support -> slicer_support)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "GenerateCTLib":
                library_aliases.update({a.asname or a.name: a.name for a in node.names if a.name in self.library})

        attribute_parents = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                attribute_parents.add(id(node.value))

        for node in ast.walk(tree):
            # 1. slicer.* attribute paths (outermost attribute of each chain only)
            if isinstance(node, ast.Attribute) and id(node) not in attribute_parents:
                parts = _chain(node)
                if parts and parts[0] == "slicer":
                    self._resolve_slicer_path(node, parts)
                elif parts and parts[0] in module_aliases and len(parts) > 1:
                    self.counts["slicer_paths"] += 1
                    if parts[1] not in (self.m.python_module_names(module_aliases[parts[0]]) or set()):
                        self._problem(node, f"{'.'.join(parts)}: {module_aliases[parts[0]]} has no {parts[1]!r}")
                elif parts and parts[0] in library_aliases:
                    self.counts["library_names"] += 1
                    module = library_aliases[parts[0]]
                    if not hasattr(self.library[module], parts[1]):
                        self._problem(node, f"{'.'.join(parts)}: GenerateCTLib.{module} has no {parts[1]!r}")
                # 4. self.ui.<widget>.<member>
                if parts and parts[:2] == ["self", "ui"] and self.ui_classes:
                    self._check_ui(node, parts)
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            # 2. keywords of recorded Python functions
            if isinstance(func, ast.Name) and func.id in imported_functions:
                self._check_keywords(node, imported_functions[func.id], func.id)
            parts = _chain(func)
            if parts and parts[0] == "slicer" and len(parts) == 3:
                signature = self.m.function_signature(f"slicer.{parts[1]}", parts[2])
                if signature:
                    self._check_keywords(node, signature, ".".join(parts))
            elif parts and parts[0] in module_aliases and len(parts) == 2:
                signature = self.m.function_signature(module_aliases[parts[0]], parts[1])
                if signature:
                    self._check_keywords(node, signature, ".".join(parts))
            elif isinstance(func, ast.Attribute) and len(self.m.py_methods.get(func.attr, [])) == 1 and node.keywords:
                self._check_keywords(node, self.m.py_methods[func.attr][0], func.attr)
            # 5. node class names
            if isinstance(func, ast.Attribute) and func.attr in NODE_CLASS_CALLS and node.args:
                self._check_node_class(node, node.args[0])
            for keyword in node.keywords:
                if keyword.arg == "nodeClassName":
                    self._check_node_class(node, keyword.value)
            # 3. CamelCase methods
            if isinstance(func, ast.Attribute) and CAMEL.match(func.attr):
                root = parts[0] if parts else None
                ui_member = bool(parts) and parts[:2] == ["self", "ui"]
                if root == "slicer" or root in library_aliases or root in module_aliases or ui_member:
                    continue  # checked above with the exact class/module
                self.counts["camel_methods"] += 1
                if parts == ["self", func.attr] or (parts and len(parts) == 2 and parts[0] == "self"):
                    if func.attr not in own_methods:
                        self._problem(node, f"self.{func.attr}() is not defined in this file or its Slicer bases")
                    continue
                if (func.attr in self.m.all_cpp_names or func.attr in self.m.py_methods or func.attr in own_methods
                        or func.attr in qt_names() or vtk_has(func.attr)):
                    continue
                self._problem(node, f".{func.attr}() exists on no Slicer/CTK/MRML, Qt or VTK class")
        return self.problems

    def _check_node_class(self, node, arg):
        self.counts["node_classes"] += 1
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value not in self.m.cpp:
            self._problem(node, f"node class {arg.value!r} does not exist")

    def _check_ui(self, node, parts):
        if len(parts) < 3:
            return
        widget = parts[2]
        self.counts["ui_members"] += 1
        if widget not in self.ui_classes:
            self._problem(node, f"self.ui.{widget}: no widget of that name in the .ui")
            return
        if len(parts) < 4:
            return
        cls, member = self.ui_classes[widget], parts[3]
        qt_cls = qt_classes().get(cls)
        if qt_cls is not None:  # PythonQt: methods, signals and Q_PROPERTYs (as attributes)
            exists = hasattr(qt_cls, member) or member in _qt_property_names(qt_cls)
        else:
            exists = self.m.class_has(cls, member)
        if not exists:
            self._problem(node, f"self.ui.{widget}.{member}: {cls} has no {member!r}")

    def check_property_calls(self, source: str) -> list[str]:
        """``self.ui.w.text()`` where ``text`` is a Qt property: PythonQt returns the value, not a method."""
        problems = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                parts = _chain(node.func)
                if parts and parts[:2] == ["self", "ui"] and len(parts) == 4 and parts[2] in self.ui_classes:
                    cls = self.ui_classes[parts[2]]
                    qt_cls = qt_classes().get(cls) or qt_classes().get(QT_FALLBACK.get(cls, ""))
                    props = set(self.m.cpp.get(cls, {}).get("properties", {}))
                    props |= _qt_property_names(qt_cls) if qt_cls is not None and cls in qt_classes() else set()
                    if parts[3] in props:
                        problems.append(f"line {node.lineno}: self.ui.{parts[2]}.{parts[3]}() calls a Qt property; "
                                        f"PythonQt exposes it as an attribute (use .{parts[3]} without parentheses)")
        return problems


def load_library_modules() -> dict:
    """The library modules the Slicer module imports by name: ``{"slicer_support": module, ...}``."""
    return {name: importlib.import_module(f"GenerateCTLib.{name}") for name in ("slicer_support", "slicer_worker")}
