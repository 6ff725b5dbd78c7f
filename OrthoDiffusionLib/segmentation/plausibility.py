"""Anatomical plausibility of a knee segmentation of a real scan, where no ground truth exists.

The checks a reader makes at a glance, in patient coordinates (LPS: +y posterior, +z superior), so they hold for any
plane and orientation of the series:

* ``present``: femur, tibia and patella are each labelled (at least ``MIN_BONE_ML``).
* ``one piece``: each of them is essentially one connected piece (the largest 26-connected component holds at least
  ``ONE_PIECE`` of its voxels).
* ``patella anterior``: the patella's centre lies anterior to the femur's; ``tibia inferior``: the tibia's centre
  lies inferior to the femur's.
* ``cartilage on bone``: at least ``ON_SURFACE`` of the femoral cartilage lies within ``SURFACE_MM`` of the femur,
  plus half the largest voxel size: on a 4 mm coronal series the cartilage of the posterior condyles sits in the slice
  behind the femur's last one, so voxel centres of touching voxels lie a whole slice apart.
* ``volumes``: structure volumes within adult ranges (``ADULT_ML``; cartilage after Eckstein et al. 2001, bones with
  a margin for what a series covers). Upper bounds hold whatever the coverage; lower bounds are those of a series
  covering the joint.
* ``knee extent``: the bones are labelled along the whole knee that the series covers, not on a few central slices:
  along the series' slice axis the bones together span at least ``min(BONES_SPAN_MM, SPAN_FRACTION x coverage)``
  (the condyles and the plateau are 70-85 mm wide, patella to posterior condyles about 90 mm deep, femur and tibia
  alone about 50-65 mm), and no bone is cut off: where a bone's labels stop short of the series' ends, its
  cross-section on that end slice is at most ``CUT_OFF_SHARE`` of its largest one (bones taper at their ends;
  labels confined to a few central slices end on full cross-sections).

Input: a labelmap (SimpleITK, any geometry) with the values of the knee label table. Volumes and centres are
measured on its own grid; the connected pieces and the distances to the femur on a copy no finer than
``TOPOLOGY_MM`` in each direction (nearest neighbour), which keeps a 0.3 mm 3D series quick to check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from OrthoDiffusionLib import labels

MIN_BONE_ML = {"femur": 20.0, "tibia": 10.0, "patella": 3.0}
ONE_PIECE = 0.9
ON_SURFACE = 0.8
SURFACE_MM = 3.0
TOPOLOGY_MM = 1.0
BONES_SPAN_MM = 50.0
CUT_OFF_SHARE = 0.6
SPAN_FRACTION = 0.6
#: (lower, upper) adult volume in mL; None = no bound. Lower bounds are not applied to the ligaments and menisci
#: (a thick-slice series may show them on two or three slices).
ADULT_ML: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "patella": (5.0, 40.0),
    "femoral_cartilage": (2.0, 20.0),
    "medial_tibial_cartilage": (None, 5.0),
    "lateral_tibial_cartilage": (None, 5.0),
    "patellar_cartilage": (None, 8.0),
    "medial_meniscus": (None, 8.0),
    "lateral_meniscus": (None, 8.0),
    "acl": (None, 6.0),
    "pcl": (None, 8.0),
}


@dataclass(frozen=True)
class Check:
    """One plausibility check: ``name``, whether it ``passed``, and the measured values in words."""

    name: str
    passed: bool
    detail: str


def _masks(labelmap: sitk.Image) -> Tuple[Dict[str, np.ndarray], float]:
    """(boolean (z, y, x) mask per structure key, voxel volume in mL)."""
    arr = sitk.GetArrayViewFromImage(labelmap)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    return {s.key: arr == s.value for s in labels.knee_structures()}, voxel_ml


def _centre(labelmap: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical (LPS, mm) centre of a non-empty (z, y, x) mask."""
    zyx = np.argwhere(mask).mean(axis=0)
    return np.asarray(labelmap.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def _largest_share(mask: np.ndarray) -> float:
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    sizes = np.bincount(sitk.GetArrayFromImage(cc).ravel())[1:]
    return float(sizes.max() / sizes.sum()) if sizes.size else 0.0


def _near_femur_share(labelmap: sitk.Image, femur: np.ndarray, cartilage: np.ndarray) -> Tuple[float, float]:
    """(share of the cartilage voxels near the femur, the tolerance in mm: ``SURFACE_MM`` + half the largest voxel
    size), distances in mm with the image spacing."""
    image = sitk.GetImageFromArray(femur.astype(np.uint8))
    image.SetSpacing(labelmap.GetSpacing())
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False,
                                                                       squaredDistance=False, useImageSpacing=True))
    tolerance = SURFACE_MM + max(labelmap.GetSpacing()) / 2.0
    return float((distance[cartilage] <= tolerance).mean()), tolerance


def topology_copy(labelmap: sitk.Image) -> sitk.Image:
    """``labelmap`` resampled (nearest neighbour, same extent and direction) so no voxel side is below
    ``TOPOLOGY_MM``; returned unchanged when none is."""
    spacing = np.asarray(labelmap.GetSpacing(), dtype=np.float64)
    if spacing.min() >= TOPOLOGY_MM:
        return labelmap
    new_spacing = np.maximum(spacing, TOPOLOGY_MM)
    size = np.maximum(1, np.round(np.asarray(labelmap.GetSize()) * spacing / new_spacing)).astype(int)
    direction = np.asarray(labelmap.GetDirection()).reshape(3, 3)
    # keep the physical extent: the first voxel's corner stays where it was
    origin = np.asarray(labelmap.GetOrigin()) + direction @ ((new_spacing - spacing) / 2.0)
    return sitk.Resample(labelmap, [int(v) for v in size], sitk.Transform(), sitk.sitkNearestNeighbor,
                         [float(v) for v in origin], [float(v) for v in new_spacing], labelmap.GetDirection(), 0,
                         labelmap.GetPixelID())


def _cartilage_check(labelmap: sitk.Image, femur: np.ndarray, cartilage: np.ndarray) -> Check:
    if not cartilage.any() or not femur.any():
        return Check("cartilage on bone", False,
                     f"not measurable: no {'femoral cartilage' if not cartilage.any() else 'femur'} labelled")
    share, tolerance = _near_femur_share(labelmap, femur, cartilage)
    return Check("cartilage on bone", share >= ON_SURFACE,
                 f"{100 * share:.0f} % of the femoral cartilage within {tolerance:.1f} mm of the femur")


def _span_mm(labelmap: sitk.Image, mask: np.ndarray) -> Tuple[float, float]:
    """(extent of ``mask`` along the series' slice axis, the series' coverage along it), both in mm."""
    slices = np.nonzero(mask.any(axis=(1, 2)))[0]
    dz = float(labelmap.GetSpacing()[2])
    span = (slices.max() - slices.min() + 1) * dz if slices.size else 0.0
    return span, labelmap.GetSize()[2] * dz


def _cut_off(mask: np.ndarray) -> List[str]:
    """The ends ("first"/"last" slice) where a (z, y, x) mask stops short of the series' ends on a cross-section
    larger than ``CUT_OFF_SHARE`` of its largest one."""
    area = mask.sum(axis=(1, 2))
    slices = np.nonzero(area)[0]
    if slices.size == 0:
        return []
    ends = [("first", slices[0], slices[0] > 0), ("last", slices[-1], slices[-1] < area.size - 1)]
    return [name for name, z, inside in ends if inside and area[z] > CUT_OFF_SHARE * area.max()]


def _extent_check(labelmap: sitk.Image, bones: Mapping[str, np.ndarray]) -> Check:
    span, coverage = _span_mm(labelmap, np.logical_or.reduce(list(bones.values())))
    needed = min(BONES_SPAN_MM, SPAN_FRACTION * coverage)
    cut = [f"{k} cut off on its {' and '.join(ends)} slice" for k, m in bones.items() for ends in [_cut_off(m)] if ends]
    detail = f"the bones span {span:.0f} mm of the {coverage:.0f} mm the series covers (>= {needed:.0f})"
    return Check("knee extent", span >= needed and not cut, "; ".join([detail, *cut]))


def knee_plausibility(labelmap: sitk.Image, segmented: Optional[Iterable[str]] = None) -> List[Check]:
    """Every check of the module docstring on one labelmap, in order. ``segmented``: the structure keys the model
    segments on this plane (default all); checks of structures it does not segment (the patella on a coronal
    series) are left out. A check that needs a structure the labelmap lacks fails and says so."""
    keys = set(segmented) if segmented is not None else {s.key for s in labels.knee_structures()}
    masks, voxel_ml = _masks(labelmap)
    ml = {k: float(m.sum()) * voxel_ml for k, m in masks.items()}
    coarse_map = topology_copy(labelmap)
    coarse = _masks(coarse_map)[0] if coarse_map is not labelmap else masks
    bones = [k for k in MIN_BONE_ML if k in keys]
    found = [k for k in bones if masks[k].any()]
    checks = [Check("present", all(ml[k] >= MIN_BONE_ML[k] for k in bones),
                    ", ".join(f"{k} {ml[k]:.1f} mL (>= {MIN_BONE_ML[k]:g})" for k in bones))]
    shares = {k: _largest_share(coarse[k]) for k in found}
    checks.append(Check("one piece", bool(shares) and all(v >= ONE_PIECE for v in shares.values()),
                        ", ".join(f"{k} {100 * v:.0f} % in its largest piece" for k, v in shares.items())
                        or "no bone labelled"))
    centre = {k: _centre(labelmap, masks[k]) for k in found}
    if "patella" in bones:
        checks.append(_relative_check("patella anterior", centre, "patella", 1, "anterior"))
    if "tibia" in bones:
        checks.append(_relative_check("tibia inferior", centre, "tibia", 2, "inferior"))
    if "femoral_cartilage" in keys:
        thin = not coarse["femoral_cartilage"].any()  # a sliver that vanished on the coarse grid
        checks.append(_cartilage_check(labelmap, masks["femur"], masks["femoral_cartilage"]) if thin else
                      _cartilage_check(coarse_map, coarse["femur"], coarse["femoral_cartilage"]))
    out_of_range = [f"{k} {ml[k]:.1f} mL (adult {lo if lo is not None else 0:g}-{hi:g})"
                    for k, (lo, hi) in ADULT_ML.items()
                    if k in keys and ((lo is not None and ml[k] < lo) or (hi is not None and ml[k] > hi))]
    checks.append(Check("volumes", not out_of_range, "; ".join(out_of_range) or "all within adult ranges"))
    checks.append(_extent_check(labelmap, {k: masks[k] for k in bones}))
    return [Check(c.name, bool(c.passed), c.detail) for c in checks]  # plain bools (JSON)


def _relative_check(name: str, centre: Mapping[str, np.ndarray], bone: str, axis: int, word: str) -> Check:
    """``bone``'s centre lies in direction ``word`` of the femur's: anterior = smaller LPS y (axis 1), inferior =
    smaller LPS z (axis 2)."""
    missing = [k for k in ("femur", bone) if k not in centre]
    if missing:
        return Check(name, False, f"not measurable: no {' or '.join(missing)} labelled")
    offset = float(centre["femur"][axis] - centre[bone][axis])
    return Check(name, offset > 0, f"{bone} centre {offset:.1f} mm {word} to the femur's")


def summary(checks: List[Check]) -> str:
    """One line per check: ``PASS``/``FAIL``, its name and detail."""
    return "\n".join(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in checks)
