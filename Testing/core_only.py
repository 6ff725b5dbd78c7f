"""Run the ``orthodiffusion`` command as in a Python that has only the core (inference) packages, like Slicer's
after the module installed what it needs: the optional packages (training, viewer, test extras) cannot be imported.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]

# Top-level modules of the packages outside the core dependencies (pyproject.toml extras).
OPTIONAL_MODULES = ("lightning", "pytorch_lightning", "monai", "einops", "sklearn", "torchmetrics", "scipy",
                    "tensorboard", "matplotlib", "trame", "trame_slicer", "slicer", "slicer_core", "vtk", "pytest",
                    "nrrd", "slicerio")

_RUNNER = """
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("not installed in a core-only environment: " + name)
        return None
sys.meta_path.insert(0, _Blocked())
from OrthoDiffusionLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def core_only_command(*args: str) -> List[str]:
    """argv running ``orthodiffusion ARGS`` with :data:`OPTIONAL_MODULES` made unimportable."""
    return [sys.executable, "-c", _RUNNER.format(blocked=set(OPTIONAL_MODULES)), *args]


CORE_ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
