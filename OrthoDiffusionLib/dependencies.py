"""The packages inference needs, and which of them are missing from the running Python.

The 3D Slicer module checks these on the first Apply (never at import) and installs what is missing into Slicer's
Python (torch through the PyTorch extension when it is installed, the rest with pip) after asking the user. The list
mirrors ``[project] dependencies`` of ``pyproject.toml`` (a test keeps them equal). Only the standard library is
used here, so the check runs before anything is installed.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Requirement:
    """One core package: pip ``spec`` (e.g. ``"torch>=2.2"``), the ``module`` it is imported as, its ``dist``."""
    spec: str
    module: str

    @property
    def dist(self) -> str:
        return re.split(r"[<>=!~ ;\[]", self.spec, maxsplit=1)[0]

    @property
    def minimum(self) -> Optional[str]:
        m = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", self.spec)
        return m.group(1) if m else None


CORE_REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("torch>=2.2", "torch"),
    Requirement("numpy>=1.24", "numpy"),
    Requirement("SimpleITK>=2.3", "SimpleITK"),
    Requirement("pydicom>=2.4", "pydicom"),
    Requirement("pylibjpeg>=2.0", "pylibjpeg"),
    Requirement("pylibjpeg-openjpeg>=2.0", "openjpeg"),
    Requirement("pylibjpeg-libjpeg>=2.0", "libjpeg"),
    Requirement("safetensors>=0.4", "safetensors"),
    Requirement("tqdm>=4.60", "tqdm"),
    Requirement("plotly>=5.18", "plotly"),
    Requirement("monai>=1.3", "monai"),
)


def version_tuple(version: str) -> Tuple[int, ...]:
    """Leading numeric release parts of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    parts = []
    for piece in version.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def installed_version(requirement: Requirement) -> Optional[str]:
    """The installed version of the requirement's distribution (None if its module cannot be imported)."""
    if importlib.util.find_spec(requirement.module) is None:
        return None
    try:
        return importlib.metadata.version(requirement.dist)
    except importlib.metadata.PackageNotFoundError:
        return "0"   # importable but without metadata (e.g. bundled by an application): accepted as present


def missing_requirements(requirements: Sequence[Requirement] = CORE_REQUIREMENTS) -> List[Requirement]:
    """The requirements whose module is not importable or whose installed version is below the minimum."""
    missing = []
    for r in requirements:
        version = installed_version(r)
        if version is None:
            missing.append(r)
        elif r.minimum and version != "0" and version_tuple(version) < version_tuple(r.minimum):
            missing.append(r)
    return missing
