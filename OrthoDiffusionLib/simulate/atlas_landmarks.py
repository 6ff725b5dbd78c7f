"""Anatomical landmarks of a knee measured from its tissue label volume (see ``tissues.LANDMARK_NAMES``).

Everything is measured from voxels: the knee frame from the bones, compartments and patella; ligament attachment
centres from the two ends of each ligament's principal axis (PCA of its voxels); meniscus centres and outer radii
from a circle fitted to the meniscus in the tibial-plateau plane; the suprapatellar recess from the patella's upper
pole and the anterior femoral surface above it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from ..errors import InvalidVolumeError
from .label_volume import LabelVolume
from .tissues import Tissue


@dataclass(frozen=True)
class KneeFrame:
    """Knee centre (3,) LPS mm and the knee's orthonormal anatomical axes (each (3,) LPS unit vectors)."""

    center: np.ndarray
    lateral: np.ndarray
    anterior: np.ndarray
    superior: np.ndarray

    def coordinates(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) (lateral, anterior, superior) mm of (N, 3) LPS points relative to the centre."""
        return (np.asarray(points) - self.center) @ np.stack([self.lateral, self.anterior, self.superior], axis=1)

    def to_lps(self, coords: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points of (N, 3) (lateral, anterior, superior) knee coordinates."""
        return self.center + np.asarray(coords) @ np.stack([self.lateral, self.anterior, self.superior], axis=0)

    @property
    def side(self) -> str:
        """``"left"`` if this knee's lateral side points to patient left (+L), else ``"right"``."""
        return "left" if self.lateral[0] > 0 else "right"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _require(points: np.ndarray, name: str, source: str) -> np.ndarray:
    if len(points) < 10:
        raise InvalidVolumeError(f"label map has no (or too little) {name}; cannot measure the knee", source)
    return points


def knee_frame(vol: LabelVolume, source: str = "label map") -> KneeFrame:
    """Knee centre and anatomical axes measured from bones, tibial compartments and patella.

    superior: distal tibial shaft -> proximal femoral shaft (quarter of each bone furthest from the joint). lateral: medial -> lateral compartment
    (meniscus + tibial cartilage centroids), orthogonalised. anterior: completes the frame, pointing to the patella.
    centre: midpoint of the two compartment centroids (tibial plateau / joint line level).
    """
    femur = _require(vol.points_of([Tissue.FEMUR], 60_000), "femur", source)
    tibia = _require(vol.points_of([Tissue.TIBIA], 60_000), "tibia", source)
    patella = _require(vol.points_of([Tissue.PATELLA], 20_000), "patella", source)
    med = _require(vol.points_of([Tissue.MEDIAL_MENISCUS, Tissue.MEDIAL_TIBIAL_CARTILAGE], 40_000),
                   "medial meniscus / medial tibial cartilage", source)
    lat = _require(vol.points_of([Tissue.LATERAL_MENISCUS, Tissue.LATERAL_TIBIAL_CARTILAGE], 40_000),
                   "lateral meniscus / lateral tibial cartilage", source)
    # Long axis: from the distal tibial shaft to the proximal femoral shaft (the quarter of each bone furthest from
    # the joint), starting from patient superior (+S); two refinements make it independent of the image axes.
    sup = np.array([0.0, 0.0, 1.0])
    for _ in range(2):
        fz, tz = femur @ sup, tibia @ sup
        top = femur[fz >= np.quantile(fz, 0.75)].mean(axis=0)
        bottom = tibia[tz <= np.quantile(tz, 0.25)].mean(axis=0)
        sup = _unit(top - bottom)
    center = 0.5 * (med.mean(axis=0) + lat.mean(axis=0))
    lat_dir = lat.mean(axis=0) - med.mean(axis=0)
    lat_dir = _unit(lat_dir - np.dot(lat_dir, sup) * sup)
    ant = _unit(np.cross(sup, lat_dir))
    if np.dot(patella.mean(axis=0) - center, ant) < 0:
        ant = -ant
    return KneeFrame(center=center, lateral=lat_dir, anterior=ant, superior=sup)


def ligament_ends(points: np.ndarray, superior: np.ndarray, end_fraction: float = 0.05
                  ) -> Tuple[np.ndarray, np.ndarray, float, float]:
    """Ends of a band-like structure along its principal axis.

    Args:
        points: (N, 3) LPS voxel centres of the structure.
        superior: (3,) unit vector; the returned upper end is the one further along it.
        end_fraction: fraction of voxels (by projection) averaged at each end.
    Returns:
        (upper_end (3,), lower_end (3,), length mm (2nd..98th percentile of the projections), axis spread).
    """
    c = points.mean(axis=0)
    _, s, vt = np.linalg.svd(points - c, full_matrices=False)
    axis = vt[0]
    t = (points - c) @ axis
    lo, hi = np.quantile(t, [end_fraction, 1.0 - end_fraction])
    end_a = points[t >= hi].mean(axis=0)
    end_b = points[t <= lo].mean(axis=0)
    length = float(np.subtract(*np.quantile(t, [0.98, 0.02])))
    if np.dot(end_a - end_b, superior) < 0:
        end_a, end_b = end_b, end_a
    return end_a, end_b, length, float(s[0])


def meniscus_circle(points: np.ndarray, frame: KneeFrame) -> Tuple[np.ndarray, float]:
    """Centre (3,) LPS and outer radius (mm, 95th percentile of radial distances) of a meniscal C.

    A circle is fitted (algebraic least squares) to the meniscus voxels projected on the tibial-plateau plane.
    """
    q = frame.coordinates(points)
    x, y = q[:, 0], q[:, 1]
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    b = x * x + y * y
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r = np.hypot(x - cx, y - cy)
    center = frame.to_lps(np.array([[cx, cy, q[:, 2].mean()]]))[0]
    return center, float(np.quantile(r, 0.95))


def suprapatellar_recess(vol: LabelVolume, frame: KneeFrame, patella: np.ndarray) -> np.ndarray:
    """Centre of the suprapatellar recess: ~12 mm above the patella's upper pole, 5 mm anterior to the femur.

    At that level, the anterior femoral surface is the most anterior femur voxel within 12 mm (laterally) of the
    patella's centre; the recess lies between it and the quadriceps tendon.
    """
    pq = frame.coordinates(patella)
    top = float(np.quantile(pq[:, 2], 0.99))
    level = top + 12.0
    femur = vol.points_of([Tissue.FEMUR], 400_000)
    fq = frame.coordinates(femur)
    lat_c = float(np.median(pq[:, 0]))
    for half in (2.0, 4.0, 8.0, 16.0):
        sel = (np.abs(fq[:, 2] - level) < half) & (np.abs(fq[:, 0] - lat_c) < 12.0)
        if sel.sum() >= 20:
            break
    if sel.sum() < 20:  # femur does not reach that level: use the highest femur slab
        level = float(np.quantile(fq[:, 2], 0.98))
        sel = np.abs(fq[:, 2] - level) < 3.0
    front = float(np.quantile(fq[sel, 1], 0.98))
    return frame.to_lps(np.array([[lat_c, front + 5.0, level]]))[0]


def compute_landmarks(vol: LabelVolume, source: str = "label map") -> Dict[str, np.ndarray]:
    """Every landmark of ``tissues.LANDMARK_NAMES`` measured on ``vol`` (LPS mm; scalars as shape-(1,) arrays).

    Raises:
        InvalidVolumeError: a structure needed for a landmark is missing (message names ``source``).
    """
    frame = knee_frame(vol, source)
    out: Dict[str, np.ndarray] = {
        "knee_center": frame.center,
        "axis_lateral": frame.lateral,
        "axis_anterior": frame.anterior,
        "axis_superior": frame.superior,
    }
    vox = vol.voxel_volume()
    lig = {"acl": (Tissue.ACL, "acl_femoral", "acl_tibial"), "pcl": (Tissue.PCL, "pcl_femoral", "pcl_tibial"),
           "mcl": (Tissue.MCL, "mcl_femoral", "mcl_tibial"), "lcl": (Tissue.LCL, "lcl_femoral", "lcl_fibular")}
    for key, (tissue, upper_name, lower_name) in lig.items():
        pts = _require(vol.points_of([tissue], 100_000), tissue.name, source)
        upper, lower, length, _ = ligament_ends(pts, frame.superior)
        out[upper_name] = upper
        out[lower_name] = lower
        volume = vol.count(tissue) * vox
        out[f"ligament_radius_{key}"] = np.array([np.sqrt(volume / (np.pi * max(length, 1.0)))])
    for side_name, tissue in (("medial", Tissue.MEDIAL_MENISCUS), ("lateral", Tissue.LATERAL_MENISCUS)):
        pts = _require(vol.points_of([tissue], 100_000), tissue.name, source)
        center, radius = meniscus_circle(pts, frame)
        out[f"{side_name}_meniscus_center"] = center
        out[f"{side_name}_meniscus_radius"] = np.array([radius])
    patella = vol.points_of([Tissue.PATELLA], 100_000)
    out["patella_center"] = patella.mean(axis=0)
    out["suprapatellar_recess"] = suprapatellar_recess(vol, frame, patella)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
