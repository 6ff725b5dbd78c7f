"""Simulated multi-plane knee MRI with exact ground truth (``orthodiffusion simulate``).

Anatomy sources (procedural knee, deformed real label maps) produce tissue labels at arbitrary physical points; the
acquisition renders sagittal/coronal/axial 2D multi-slice series from them; lesions modify the anatomy; the cohort
writer emits DICOM + NIfTI series, labelmaps and a manifest CSV.
"""

from .acquisition import SeriesSpec, render_series, series_geometry
from .cohort import (DEFAULT_PREVALENCES, LABEL_KEYS, MANIFEST_COLUMNS, SimulatedExam, SimulatedSeries, plan_cohort,
                     simulate_exam, write_cohort)
from .contrast import CENTERS
from .ehr import INJURY_EVENTS, sample_ehr
from .lesions import LESION_ORDER, apply_abnormalities
from .procedural import ProceduralKnee
from .tissues import LANDMARK_NAMES, AnatomySource, Tissue, segmentation_from_tissue

__all__ = [
    "AnatomySource", "Tissue", "LANDMARK_NAMES", "segmentation_from_tissue", "ProceduralKnee", "apply_abnormalities",
    "LESION_ORDER", "SeriesSpec", "series_geometry", "render_series", "CENTERS", "sample_ehr", "INJURY_EVENTS",
    "simulate_exam", "write_cohort", "plan_cohort", "SimulatedExam", "SimulatedSeries", "DEFAULT_PREVALENCES",
    "LABEL_KEYS", "MANIFEST_COLUMNS",
]
