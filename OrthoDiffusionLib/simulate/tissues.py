"""Tissue classes shared by every anatomy source, the lesion models and the contrast model.

Values 1..11 are exactly the knee segmentation label values (``Resources/labels/knee_segmentation.json``), so the
segmentation ground truth is ``np.where(tissue <= 11, tissue, 0)``. Bones (femur, tibia, patella, fibula) are whole
bones; the contrast model renders cortex (dark) vs marrow (fat-like) from the distance to the bone surface.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Dict, Protocol, Tuple, runtime_checkable

import numpy as np


class Tissue(IntEnum):
    AIR = 0
    FEMUR = 1
    TIBIA = 2
    PATELLA = 3
    FEMORAL_CARTILAGE = 4
    MEDIAL_TIBIAL_CARTILAGE = 5
    LATERAL_TIBIAL_CARTILAGE = 6
    PATELLAR_CARTILAGE = 7
    MEDIAL_MENISCUS = 8
    LATERAL_MENISCUS = 9
    ACL = 10
    PCL = 11
    FIBULA = 12
    MCL = 13
    LCL = 14
    TENDON = 15  # patellar and quadriceps tendons
    FLUID = 16  # synovial fluid, joint effusion, torn-ligament gap fluid
    FAT = 17  # subcutaneous fat, Hoffa's fat pad, intermuscular fat
    MUSCLE = 18
    SKIN = 19
    VESSEL = 20  # popliteal artery and vein
    CAPSULE = 21  # joint capsule, retinacula
    EDEMA = 22  # bone-marrow or soft-tissue oedema (lesion signal)
    SOFT_TISSUE = 23  # other soft tissue


#: Highest segmentation label value (structures 1..11 are segmented).
N_STRUCTURES = 11

#: Tissues that are bone (for cortex/marrow rendering).
BONES: Tuple[Tissue, ...] = (Tissue.FEMUR, Tissue.TIBIA, Tissue.PATELLA, Tissue.FIBULA)


def segmentation_from_tissue(tissue: np.ndarray) -> np.ndarray:
    """Ground-truth segmentation labelmap (0 background, 1..11 structures) from a tissue array of any shape."""
    t = np.asarray(tissue)
    return np.where((t >= 1) & (t <= N_STRUCTURES), t, 0).astype(np.uint8)


#: Landmarks every anatomy source provides (``AnatomySource.landmarks``), LPS millimetres, each a (3,) float array.
#: Points: ``knee_center`` (centre of the tibiofemoral joint), ``acl_femoral``/``acl_tibial``, ``pcl_femoral``/
#: ``pcl_tibial``, ``mcl_femoral``/``mcl_tibial``, ``lcl_femoral``/``lcl_fibular`` (ligament attachment centres),
#: ``medial_meniscus_center``/``lateral_meniscus_center`` (centre of each meniscal C), ``patella_center``,
#: ``suprapatellar_recess`` (centre of the recess, posterior to the quadriceps tendon, above the patella).
#: Unit vectors: ``axis_lateral`` (towards the lateral side of THIS knee), ``axis_anterior``, ``axis_superior``
#: (the knee's own anatomical axes in patient coordinates; they differ from LPS axes by the knee's rotation).
#: Scalars stored as shape-(1,) arrays: ``medial_meniscus_radius``, ``lateral_meniscus_radius`` (mm, outer radius),
#: ``ligament_radius_acl``, ``ligament_radius_pcl``, ``ligament_radius_mcl``, ``ligament_radius_lcl`` (mm).
LANDMARK_NAMES: Tuple[str, ...] = (
    "knee_center", "acl_femoral", "acl_tibial", "pcl_femoral", "pcl_tibial", "mcl_femoral", "mcl_tibial",
    "lcl_femoral", "lcl_fibular", "medial_meniscus_center", "lateral_meniscus_center", "patella_center",
    "suprapatellar_recess", "axis_lateral", "axis_anterior", "axis_superior", "medial_meniscus_radius",
    "lateral_meniscus_radius", "ligament_radius_acl", "ligament_radius_pcl", "ligament_radius_mcl",
    "ligament_radius_lcl",
)


@runtime_checkable
class AnatomySource(Protocol):
    """A knee anatomy that can be sampled at arbitrary physical points.

    Attributes:
        side: ``"right"`` or ``"left"``.
        landmarks: ``{name: np.ndarray}`` with every name in :data:`LANDMARK_NAMES` (LPS mm).
    """

    side: str
    landmarks: Dict[str, np.ndarray]

    def tissue_at(self, points: np.ndarray) -> np.ndarray:
        """Tissue ids at physical points.

        Args:
            points: (N, 3) float64 or float32, LPS millimetres (DICOM patient coordinates).
        Returns:
            (N,) uint8 :class:`Tissue` values.
        """
        ...

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi): two (3,) LPS points of an axis-aligned box that contains the whole knee (skin included)."""
        ...
