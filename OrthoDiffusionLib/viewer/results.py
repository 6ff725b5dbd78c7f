"""Finished result folders (:mod:`OrthoDiffusionLib.inference.result_folder`) as the viewer reopens them: the parsed
``diagnosis.json`` plus the ``segmentation_<plane>.seg.nrrd`` of each segmented plane."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import CorruptFileError, MissingPathError
from ..inference.result_folder import DIAGNOSIS_FILE, read_diagnosis_json, segmentation_file
from ..io import PLANES


@dataclass
class ResultFolder:
    """A finished result: the parsed ``diagnosis.json`` and the segmentation files that exist, per plane."""

    path: Path
    diagnosis: Dict[str, Any]
    segmentations: Dict[str, Path] = field(default_factory=dict)

    @property
    def labels(self) -> List[Dict[str, Any]]:
        return list(self.diagnosis.get("labels") or [])

    @property
    def warnings(self) -> List[str]:
        return [str(w) for w in self.diagnosis.get("warnings") or []]

    def series_sources(self) -> Dict[str, str]:
        """{plane: file or folder the series was read from}, as ``diagnosis.json`` records them (``exam.planes``)."""
        planes = (self.diagnosis.get("exam") or {}).get("planes") or {}
        out = {}
        for plane in PLANES:
            entry = planes.get(plane)
            if isinstance(entry, dict) and entry.get("source"):
                out[plane] = str(entry["source"])
        return out

    def study_source(self) -> Optional[str]:
        """The study folder the exam was loaded from (``exam.source``), if recorded."""
        source = (self.diagnosis.get("exam") or {}).get("source")
        return str(source) if source else None


def open_result_folder(folder: Union[str, os.PathLike]) -> ResultFolder:
    """Read a result folder.

    Raises:
        MissingPathError: the folder does not exist, or it holds no ``diagnosis.json``.
        CorruptFileError: ``diagnosis.json`` is not JSON, or has no ``labels`` list whose entries carry ``name`` and
            ``probability``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError("no such result folder", folder)
    diagnosis = read_diagnosis_json(folder)
    path = folder / DIAGNOSIS_FILE
    labels = diagnosis.get("labels")
    if not isinstance(labels, list) or not labels:
        raise CorruptFileError("holds no 'labels' list", path)
    for i, entry in enumerate(labels):
        if not isinstance(entry, dict) or "name" not in entry or "probability" not in entry:
            raise CorruptFileError(f"label entry {i} lacks 'name' or 'probability'", path)
    segs = {p: segmentation_file(folder, p) for p in PLANES if segmentation_file(folder, p).is_file()}
    return ResultFolder(folder, diagnosis, segs)
