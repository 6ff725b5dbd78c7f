"""The result folder of one prediction: what it holds, under which names, and reading it back.

``orthodiffusion predict`` (:func:`~OrthoDiffusionLib.inference.predictor.write_outputs`) writes, the browser viewer
and the 3D Slicer module read::

    diagnosis.json                   the result (format RESULT_FORMAT): labels with probabilities, plane weights and
                                     uncertainty, segmentations (file names and geometry), measures, exam, model,
                                     timings, warnings, the disclaimer
    segmentation_<plane>.seg.nrrd    per segmented plane: a 3D Slicer segmentation on that series' own geometry
    labelmap_<plane>.nii.gz          the same labels as a NIfTI labelmap
    segmentation_fused.seg.nrrd      with ``--fuse-segmentations``: the planes' segmentations fused on one grid
    labelmap_fused.nii.gz
    measures.csv                     structure volumes and cartilage thickness
    report.html                      the self-contained report (probabilities, Sankey, overlay pictures)

Only the standard library here: the Slicer module imports it before torch is installed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Union

from ..errors import CorruptFileError, MissingPathError

__all__ = ["DEFAULT_NOISE_DRAWS", "RESULT_FORMAT", "RESULT_VERSION", "DISCLAIMER", "DIAGNOSIS_FILE", "MEASURES_FILE", "REPORT_FILE", "FUSED",
           "segmentation_file_name", "labelmap_file_name", "segmentation_file", "is_result_folder",
           "read_diagnosis_json"]

PathLike = Union[str, os.PathLike]

#: Noise draws of a prediction run (``noise_draws`` in ``diagnosis.json``) from the command line, the viewer and the
#: Slicer module: enough for their spread to be a real uncertainty (one draw has none), at a few times the cost of
#: one diagnosis pass.
DEFAULT_NOISE_DRAWS = 4
#: ``format`` and ``version`` of ``diagnosis.json``.
RESULT_FORMAT = "orthodiffusion.prediction"
RESULT_VERSION = 1
#: Stated in ``diagnosis.json``, the report and every table of results.
DISCLAIMER = "Research use only, not for diagnosis."

DIAGNOSIS_FILE = "diagnosis.json"
MEASURES_FILE = "measures.csv"
REPORT_FILE = "report.html"
#: The name that stands for the plane in the file names of the fused segmentation.
FUSED = "fused"


def segmentation_file_name(plane: str) -> str:
    """``segmentation_<plane>.seg.nrrd`` (``plane`` may be :data:`FUSED`)."""
    return f"segmentation_{plane}.seg.nrrd"


def labelmap_file_name(plane: str) -> str:
    """``labelmap_<plane>.nii.gz`` (``plane`` may be :data:`FUSED`)."""
    return f"labelmap_{plane}.nii.gz"


def segmentation_file(folder: PathLike, plane: str) -> Path:
    """Where a result folder keeps the segmentation of ``plane``."""
    return Path(folder) / segmentation_file_name(plane)


def is_result_folder(folder: PathLike) -> bool:
    """True when ``folder`` holds a ``diagnosis.json`` (its content is not checked)."""
    return (Path(folder) / DIAGNOSIS_FILE).is_file()


def read_diagnosis_json(folder: PathLike) -> Dict[str, Any]:
    """``folder/diagnosis.json`` as a dict; :class:`MissingPathError` / :class:`CorruptFileError` naming the file."""
    path = Path(folder) / DIAGNOSIS_FILE
    if not path.is_file():
        raise MissingPathError(f"prediction result has no {DIAGNOSIS_FILE}", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptFileError(f"not a readable JSON file ({e})", path) from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{DIAGNOSIS_FILE} must hold a JSON object", path)
    return data
