"""The in-memory series model shared by every stage: one 3D MR volume with its geometry and de-identified metadata."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

PLANES: Tuple[str, str, str] = ("sagittal", "coronal", "axial")

# The only metadata keys a Series may carry. Anything that could identify a patient, a visit or an institution
# (names, IDs, dates, accession numbers, institution, UIDs) is never copied into a Series.
META_KEYS: Tuple[str, ...] = (
    "format",
    "modality",
    "body_part_examined",
    "anatomic_region",
    "study_description",
    "series_description",
    "protocol_name",
    "series_number",
    "scanning_sequence",
    "sequence_variant",
    "scan_options",
    "sequence_name",
    "mr_acquisition_type",
    "echo_time",
    "repetition_time",
    "inversion_time",
    "echo_number",
    "echo_train_length",
    "flip_angle",
    "magnetic_field_strength",
    "manufacturer",
    "manufacturer_model",
    "slice_thickness",
    "spacing_between_slices",
    "pixel_spacing",
    "rows",
    "columns",
    "number_of_slices",
    "transfer_syntax",
    "fat_sat",
    "weighting",
)


@dataclass
class Series:
    """One MR series as a 3D volume.

    Attributes:
        image: 3D ``SimpleITK.Image`` (float32 intensities, rescale slope/intercept applied) whose ITK axis 2 is the
            slice axis, so ``sitk.GetArrayFromImage(image)`` has shape (D, H, W) = (slices, rows, columns). Origin,
            spacing and direction are the scanner's (LPS, millimetres).
        plane: "sagittal", "coronal" or "axial" (from the slice normal, see :func:`classify_plane`).
        obliquity_deg: angle in degrees between the slice normal and the nearest patient axis.
        source: the file or folder the series was read from.
        meta: de-identified acquisition metadata (keys from :data:`META_KEYS`; missing values are None).
        identity: in memory only, for the one-patient check of an exam (:mod:`.exam_identity`): PatientID,
            StudyInstanceUID, PatientBirthDate, PatientSex where the files have them; never written anywhere.
        identity_conflict: why the slices of this series belong to different patients/studies (None when they do
            not).
    """

    image: sitk.Image
    plane: str
    obliquity_deg: float
    source: str
    meta: Dict[str, Any] = field(default_factory=dict)
    identity: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    identity_conflict: Optional[str] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ValueError(f"plane must be one of {PLANES}, got {self.plane!r}")
        self.source = os.fspath(self.source)
        unknown = set(self.meta) - set(META_KEYS)
        if unknown:
            raise ValueError(f"meta keys not allowed in a Series (de-identified metadata only): {sorted(unknown)}")

    @property
    def array(self) -> np.ndarray:
        """Intensities as float32, shape (D, H, W) = (slices, rows, columns)."""
        return sitk.GetArrayFromImage(self.image).astype(np.float32, copy=False)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(D, H, W) = (slices, rows, columns)."""
        w, h, d = self.image.GetSize()
        return (d, h, w)

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """ITK order (column spacing, row spacing, slice spacing) in mm."""
        return tuple(self.image.GetSpacing())  # type: ignore[return-value]

    @property
    def origin(self) -> Tuple[float, float, float]:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return tuple(self.image.GetOrigin())  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 direction matrix; column j is the LPS unit vector of ITK axis j (column 2 = slice normal)."""
        return np.asarray(self.image.GetDirection(), dtype=np.float64).reshape(3, 3)

    @property
    def description(self) -> str:
        return str(self.meta.get("series_description") or os.path.basename(self.source.rstrip("/\\")))

    def summary(self) -> Dict[str, Any]:
        """A JSON-friendly, identifier-free description (used by the ``inspect`` CLI and Exam.choices)."""
        d, h, w = self.shape
        return {
            "source": self.source,
            "plane": self.plane,
            "obliquity_deg": round(float(self.obliquity_deg), 2),
            "size": [w, h, d],
            "spacing": [round(float(s), 4) for s in self.spacing],
            **{k: self.meta.get(k) for k in META_KEYS},
        }
