"""The package layout holds: few modules at the library root, no import circles, argparse only in the command-line
layer, no private names imported across modules, few long functions, and no code line citing documents the project
does not contain.

Read from the source files with ``ast`` (nothing is imported), so these checks are fast and need no optional
package.
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "OrthoDiffusionLib"
TRAINING = ROOT / "training"
SLICER_MODULE = ROOT / "OrthoDiffusion"
#: source folder -> the package name it installs as (setup.py's mapping)
PACKAGES = {LIBRARY: "OrthoDiffusionLib", TRAINING: "OrthoDiffusionLib.training"}


def _modules() -> Dict[str, Tuple[Path, bool]]:
    """Installed module name -> (file, is a package ``__init__``) of every library and training module."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            out[".".join([package, *parts])] = (path, is_package)
    return out


MODULES = _modules()


def _imported(module: str, is_package: bool, node: ast.AST) -> List[Tuple[str, List[str]]]:
    """``[(imported module, names taken from it)]`` of one import statement, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    base = module.split(".")
    if node.level:
        if not is_package:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append((sub, []) if sub in MODULES else (target, [alias.name]))
    return out


def _project_module(name: str) -> str:
    """The project module that ``name`` (a module or a name inside one) belongs to, or ''."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports() -> Dict[str, List[Tuple[str, List[str], int]]]:
    """module -> ``[(project module imported, names taken, line)]``, every import statement (lazy ones too)."""
    out: Dict[str, List[Tuple[str, List[str], int]]] = {}
    for module, (path, is_package) in MODULES.items():
        rows = out.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, names in _imported(module, is_package, node):
                    found = _project_module(target)
                    if found and found != module:
                        rows.append((found, names, node.lineno))
    return out


IMPORTS = _imports()


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_modules_are_found():
    assert "OrthoDiffusionLib.inference.predictor" in MODULES and "OrthoDiffusionLib.training.diagnosis.train" in MODULES
    assert len(MODULES) > 80


def test_at_most_twelve_modules_at_the_library_root():
    root_modules = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert len(root_modules) <= 12, root_modules


def test_no_import_circle():
    graph = {m: {target for target, _names, _line in rows} for m, rows in IMPORTS.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_argparse_only_in_the_command_line_layer():
    cli = LIBRARY / "cli"
    offenders = []
    for module, (path, is_package) in MODULES.items():
        if cli in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_only_the_command_line_layer_imports_training_and_bench():
    offenders = []
    for module, rows in IMPORTS.items():
        if module.startswith(("OrthoDiffusionLib.cli", "OrthoDiffusionLib.training", "OrthoDiffusionLib.bench")):
            continue
        for target, _names, line in rows:
            if target.startswith(("OrthoDiffusionLib.training", "OrthoDiffusionLib.bench")):
                offenders.append(f"{module}:{line} -> {target}")
    assert offenders == []


def test_no_private_name_imported_from_another_module():
    offenders = [f"{module}:{line}: {name} from {target}"
                 for module, rows in IMPORTS.items() for target, names, line in rows
                 for name in names if name.startswith("_") and not name.startswith("__")]
    assert offenders == []


#: A function (or method) longer than this many lines, docstring included, counts as long.
LONG_FUNCTION_LINES = 80
#: How many long functions the project may hold (library, training code and the 3D Slicer module together).
MOST_LONG_FUNCTIONS = 3


def _long_functions(folders=(LIBRARY, TRAINING, SLICER_MODULE), limit: int = LONG_FUNCTION_LINES) -> List[str]:
    """``"folder/path:line name (N lines)"`` of every function and method over ``limit`` lines in ``folders``."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        where = path.relative_to(folder.parent)
                        found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_few_long_functions():
    long_ones = _long_functions()
    assert len(long_ones) <= MOST_LONG_FUNCTIONS, "\n".join(long_ones)


def test_the_long_function_finder_counts_docstrings_and_methods(tmp_path):
    body = "".join(f"x{i} = {i}\n" for i in range(79))
    indented = "".join(f"        {line}\n" for line in body.splitlines())
    source = f'class C:\n    def f(self):\n        """doc"""\n{indented}\n\ndef g():\n'
    source += "".join(f"    {line}\n" for line in body.splitlines())
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(source, encoding="utf-8")
    assert _long_functions([tmp_path / "pkg"]) == ["pkg/m.py:2 f (81 lines)"]  # g: 80 lines, not long


def _tracked_files() -> List[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed.splitlines()]


def test_no_code_line_cites_documents_outside_the_project():
    cited = re.compile("|".join(re.escape(name + ".md") for name in ("METHOD", "DESIGN", "CONTRACTS")))
    code = {".py", ".sh", ".json", ".toml", ".cfg", ".txt", ".ui"}
    offenders = []
    for path in _tracked_files():
        if path.suffix not in code and path.name != "CMakeLists.txt":
            continue
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if cited.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []


_WITHOUT_TRAINING = r"""
import importlib.abc, json, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("OrthoDiffusionLib.training", "OrthoDiffusionLib.bench", "OrthoDiffusionLib.viewer")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from OrthoDiffusionLib.cli import build_parser
parser = build_parser()
print(json.dumps(sorted(parser._subparsers._group_actions[0].choices)))
"""


def test_the_command_works_with_only_what_inference_needs():
    """The 3D Slicer extension ships neither training/ nor bench/ nor viewer/: the command still builds, without the
    subcommands that need them."""
    import json
    import sys

    out = subprocess.run([sys.executable, "-c", _WITHOUT_TRAINING], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    commands = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"predict", "demo", "simulate", "inspect", "models", "export", "import-weights"} <= commands
    assert not commands & {"pretrain", "train-diagnosis", "train-segmentation", "evaluate", "bench"}
