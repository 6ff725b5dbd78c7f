"""Label tables: the single source of truth is ``Resources/labels/*.json``.

Diagnosis labels per anatomy (knee 8, ankle 4, shoulder 7) and the 11 knee segmentation structures with fixed label
values, display colours and the planes on which each structure is segmented.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Sequence, Tuple

PLANES: Tuple[str, str, str] = ("sagittal", "coronal", "axial")
SHARED_PLANE = "shared"  # a backbone trained on, and used for, every plane


def planes_in_order(planes: Sequence[str], what: str = "plane") -> Tuple[str, ...]:
    """``planes`` in ``PLANES`` order, each once; ValueError naming every unknown one (``what``: how the message
    calls them, e.g. ``segmentation plane``)."""
    unknown = [p for p in planes if p not in PLANES]
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(map(str, unknown))}: choose from {', '.join(PLANES)}")
    return tuple(p for p in PLANES if p in planes)


@dataclass(frozen=True)
class DiagnosisLabel:
    key: str
    name: str


@dataclass(frozen=True)
class Structure:
    value: int
    key: str
    name: str
    color: Tuple[int, int, int]
    planes: Tuple[str, ...]
    kind: str


def resource_path(*parts: str):
    """Path (a ``Traversable``) of a file under the packaged ``Resources/`` folder."""
    node = resources.files("OrthoDiffusionLib.resources")
    for p in parts:
        node = node / p
    return node


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    with resource_path("labels", name).open("r", encoding="utf-8") as f:
        return json.load(f)


def anatomies() -> List[str]:
    """Anatomies with a diagnosis label set, e.g. ``["knee", "ankle", "shoulder"]``."""
    return list(_load("diagnosis.json")["anatomies"].keys())


def diagnosis_labels(anatomy: str = "knee") -> List[DiagnosisLabel]:
    """Diagnosis labels of ``anatomy`` in model output order."""
    table = _load("diagnosis.json")["anatomies"]
    if anatomy not in table:
        raise KeyError(f"unknown anatomy {anatomy!r}; known: {', '.join(table)}")
    return [DiagnosisLabel(key=d["key"], name=d["name"]) for d in table[anatomy]]


def knee_structures(plane: str | None = None) -> List[Structure]:
    """The knee segmentation structures (background excluded), optionally only those segmented on ``plane``."""
    out = []
    for s in _load("knee_segmentation.json")["structures"]:
        st = Structure(value=int(s["value"]), key=s["key"], name=s["name"], color=tuple(s["color"]),
                       planes=tuple(s["planes"]), kind=s["kind"])
        if plane is None or plane in st.planes:
            out.append(st)
    return out


def structure_by_key() -> Dict[str, Structure]:
    return {s.key: s for s in knee_structures()}


def color_table_lines(structures: Sequence[Structure] | None = None) -> List[str]:
    """A Slicer colour table (``.ctbl``): ``value name R G B A`` per line, background first."""
    structures = knee_structures() if structures is None else structures
    lines = ["# OrthoDiffusion knee structures", "0 Background 0 0 0 0"]
    for s in structures:
        r, g, b = s.color
        lines.append(f"{s.value} {s.name.replace(' ', '_')} {r} {g} {b} 255")
    return lines
