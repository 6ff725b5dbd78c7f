"""The Slicer module's files, checked without Slicer: the .ui is valid Qt Designer XML holding every widget the module
code uses (``self.ui.X``, parsed from OrthoDiffusion.py's syntax tree -- the module is not imported: it needs the
Slicer application), the module defines Module/Widget/Logic/Test, the icon is a 128x128 PNG, the CMake files list
existing files, and the command lines the module builds use options the library CLI has."""
from __future__ import annotations

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "OrthoDiffusion"
MODULE_FILE = MODULE_DIR / "OrthoDiffusion.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "OrthoDiffusion.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "OrthoDiffusion.png"

# Classes a Qt Designer file may use without declaring them as custom widgets.
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QCheckBox", "QSpinBox", "QProgressBar", "QFrame",
              "QLineEdit", "QPlainTextEdit", "QTableView"}


@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def module_tree():
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def _ui_attributes(tree: ast.AST) -> set:
    """Names X of every ``self.ui.X`` in the module."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def test_ui_is_qt_designer_xml(ui_tree):
    assert ui_tree.tag == "ui" and ui_tree.get("version") == "4.0"
    top = ui_tree.find("widget")
    assert ui_tree.findtext("class") == top.get("name") == "OrthoDiffusion"
    assert top.get("class") == "qMRMLWidget"
    widgets = ui_tree.iter("widget")
    names = [w.get("name") for w in ui_tree.iter("widget")] + [lay.get("name") for lay in ui_tree.iter("layout")]
    assert all(names) and len(names) == len(set(names)), "every widget/layout needs a unique name"
    custom = {c.findtext("class"): c for c in ui_tree.iter("customwidget")}
    for w in widgets:
        cls = w.get("class")
        assert cls in QT_CLASSES or cls in custom, f"{cls} is neither a Qt class nor a declared custom widget"
    for c in custom.values():
        assert c.findtext("extends") and c.findtext("header")
    for layout in ui_tree.iter("layout"):
        assert layout.get("class") in {"QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout"}
    widget_names = {w.get("name") for w in ui_tree.iter("widget")}
    for conn in ui_tree.iter("connection"):
        assert conn.findtext("sender") in widget_names and conn.findtext("receiver") in widget_names
    selectors = [w for w in ui_tree.iter("widget") if w.get("class") == "qMRMLNodeComboBox"]
    assert sorted(w.get("name") for w in selectors) == ["axialSelector", "coronalSelector", "sagittalSelector"]
    for w in selectors:
        types = [s.text for p in w.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert types == ["vtkMRMLScalarVolumeNode"]
        receivers = {c.findtext("receiver") for c in ui_tree.iter("connection")
                     if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
        assert w.get("name") in receivers, "a node selector needs the scene"


def test_every_widget_the_code_uses_exists_in_the_ui(ui_tree, module_tree):
    used = _ui_attributes(module_tree)
    defined = {w.get("name") for w in ui_tree.iter("widget")}
    assert len(used) >= 25
    assert used - defined == set(), f"widgets used in OrthoDiffusion.py but missing in the .ui: {used - defined}"
    device_items = [s.text for w in ui_tree.iter("widget") if w.get("name") == "deviceComboBox"
                    for item in w.findall("item") for s in item.iter("string")]
    assert device_items == ["Auto", "CPU", "GPU"]
    # the device names the code maps must be exactly the combo box items
    devices = next(n for n in ast.walk(module_tree) if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "DEVICES" for t in n.targets))
    assert [k.value for k in devices.value.keys] == device_items


def test_module_defines_module_widget_logic_and_test(module_tree):
    classes = {c.name: [ast.unparse(b) for b in c.bases] for c in module_tree.body if isinstance(c, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["OrthoDiffusion"]
    assert "ScriptedLoadableModuleWidget" in classes["OrthoDiffusionWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["OrthoDiffusionLogic"]
    assert "ScriptedLoadableModuleTest" in classes["OrthoDiffusionTest"]
    test_cls = next(c for c in module_tree.body if isinstance(c, ast.ClassDef) and c.name == "OrthoDiffusionTest")
    tests = [f.name for f in test_cls.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert tests, "the self-test needs a test_ method"
    logic = next(c for c in module_tree.body if isinstance(c, ast.ClassDef) and c.name == "OrthoDiffusionLogic")
    run = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "run")
    assert [a.arg for a in run.args.args[:4]] == ["self", "sagittalNode", "coronalNode", "axialNode"]
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert 'categories = ["Segmentation"]' in text and "arXiv:2409.09176" in text
    assert 'resourcePath("UI/OrthoDiffusion.ui")' in text
    # nothing heavy at import time: torch and the library are imported inside functions only
    top_imports = {a.name.split(".")[0] for n in module_tree.body if isinstance(n, ast.Import) for a in n.names}
    top_imports |= {n.module.split(".")[0] for n in module_tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top_imports & {"torch", "OrthoDiffusionLib", "numpy", "SimpleITK"}


def test_icon_is_a_128_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)
    assert len(data) > 2000                                 # a drawing, not a blank square


def test_cmake_files():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({var} ", top), var
    assert "add_subdirectory(OrthoDiffusion)" in top
    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module and "WITH_GENERIC_TESTS" in module
    assert "${MODULE_NAME}.py" in module
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in module and (MODULE_DIR / resource.replace("${MODULE_NAME}", "OrthoDiffusion")).is_file()
    for folder in ("OrthoDiffusionLib", "Resources"):
        assert f"${{_repo_root}}/{folder}" in module
    # the installed extension holds what inference needs: no training code, no benchmarks, no browser viewer
    assert "${_repo_root}/training" not in module
    assert 'EXCLUDE REGEX "^(bench|viewer)/"' in module
    tests = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(" in tests and "OrthoDiffusion.py" in tests
    assert "add_subdirectory(Python)" in (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")


def _class(tree: ast.AST, name: str) -> ast.ClassDef:
    return next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == name)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name)


def _constant(tree: ast.AST, name: str):
    """The value of the module-level literal ``name = {...}``."""
    node = next(n for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in n.targets))
    return ast.literal_eval(node.value)


def _parameters_used(function: ast.FunctionDef, tree: ast.AST) -> set:
    """Parameter names a function uses: its string literals, plus the names of the tables it looks them up in."""
    names = {n.value for n in ast.walk(function) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for table in ("VOLUME_REFERENCES", "SEGMENT_PARAMETERS"):
        if any(isinstance(n, ast.Name) and n.id == table for n in ast.walk(function)):
            names |= set(_constant(tree, table).values())
    return names


def _widgets_used(function: ast.FunctionDef, widget: ast.ClassDef) -> set:
    """``self.ui.X`` names a widget method uses, with ``self.selectors`` / ``self.segmentationCheckBoxes`` (built
    in ``setup`` from ``self.ui`` widgets) expanded."""
    tables = {}
    for node in ast.walk(_method(widget, "setup")):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and isinstance(node.targets[0], ast.Attribute)):
            tables[node.targets[0].attr] = _ui_attributes(node.value)
    used = _ui_attributes(function)
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and node.attr in tables:
            used |= tables[node.attr]
    return used


def test_every_choice_of_the_panel_is_in_the_parameter_node(ui_tree, module_tree):
    """Each choice widget of the .ui is written into the parameter node and shown from it, each parameter has a
    default, and Apply runs with the node's values (SlicerTotalSegmentator's parameter node pattern)."""
    widget, logic = _class(module_tree, "OrthoDiffusionWidget"), _class(module_tree, "OrthoDiffusionLogic")
    choices = {w.get("name") for w in ui_tree.iter("widget")
               if w.get("class") in {"QCheckBox", "QComboBox", "QSpinBox", "qMRMLNodeComboBox"}}
    assert {"precisionComboBox", "segmentAxialCheckBox", "modelComboBox", "sagittalSelector"} <= choices
    to_node, from_node = (_method(widget, "updateParameterNodeFromGUI"), _method(widget, "updateGUIFromParameterNode"))
    assert choices - _widgets_used(to_node, widget) == set()
    assert choices - _widgets_used(from_node, widget) == set()
    parameters = set(_constant(module_tree, "DEFAULT_PARAMETERS")) | set(_constant(module_tree, "VOLUME_REFERENCES")
                                                                        .values())
    assert set(_constant(module_tree, "SEGMENT_PARAMETERS").values()) <= parameters
    for function in (to_node, from_node, _method(logic, "runOptions")):
        assert parameters - _parameters_used(function, module_tree) == set(), function.name
    # every choice widget's change signal reaches updateParameterNodeFromGUI
    connect = _method(widget, "connectGUI")
    assert any(isinstance(n, ast.Attribute) and n.attr == "updateParameterNodeFromGUI" for n in ast.walk(connect))
    assert choices - _widgets_used(connect, widget) == set()
    for name in ("setDefaultParameters", "runOptions"):
        _method(logic, name)
    for name in ("initializeParameterNode", "setParameterNode", "enter", "exit", "onSceneStartClose"):
        _method(widget, name)
    apply = ast.unparse(_method(widget, "onApply"))
    assert "self.logic.runOptions(self._parameterNode)" in apply
    precision_items = [s.text for w in ui_tree.iter("widget") if w.get("name") == "precisionComboBox"
                       for item in w.findall("item") for s in item.iter("string")]
    assert precision_items == list(_constant(module_tree, "PRECISIONS"))
    assert set(_constant(module_tree, "PRECISIONS").values()) == {"fp32", "bf16"}


def test_actions_show_their_errors(module_tree):
    """Every button's action runs inside ``slicer.util.tryWithErrorDisplay``."""
    widget = _class(module_tree, "OrthoDiffusionWidget")
    handlers = set()
    for node in ast.walk(_method(widget, "connectGUI")):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "clicked(bool)"):
            handlers |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)
                         and isinstance(n.value, ast.Name) and n.value.id == "self"}
    assert {"onApply", "onCancel", "onLoadSample", "onImportModel", "onOpenReport", "onAutoAssign"} <= handlers
    for name in handlers:
        guarded = [w for w in ast.walk(_method(widget, name)) if isinstance(w, ast.With)
                   and any("tryWithErrorDisplay" in ast.unparse(item.context_expr) for item in w.items)]
        assert guarded, f"{name} does not run inside slicer.util.tryWithErrorDisplay"


def test_the_child_process_gets_the_plane_choice_and_precision(module_tree):
    """The module passes the planes to segment and the precision to ``orthodiffusion predict`` (the child segments
    only those planes)."""
    start = _method(_class(module_tree, "OrthoDiffusionLogic"), "start")
    call = next(n for n in ast.walk(start) if isinstance(n, ast.Call) and ast.unparse(n.func) == "predict_arguments")
    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert keywords["segmentation_planes"] == "list(segmentationPlanes)" and keywords["precision"] == "precision"
    assert "segmentation" not in keywords
