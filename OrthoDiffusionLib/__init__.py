"""OrthoDiffusion: multi-plane knee MRI segmentation and diagnosis with a diffusion-pretrained foundation model.

Heavy submodules (torch) are imported lazily, so ``import OrthoDiffusionLib`` stays cheap (the Slicer module imports
it before torch is installed).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "DiffusionUNet": "OrthoDiffusionLib.model.backbone",
    "Predictor": "OrthoDiffusionLib.inference.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'OrthoDiffusionLib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
