"""Post-processing of segmentation probabilities: a bone is one piece, and cartilage lies on its bone.

The femur, tibia and patella are each one connected bone, so any part of a bone's label that is not connected to its
largest piece is an error of the network (typically a small island in muscle or fat, or a piece of the fibula).
Articular cartilage covers the end of its bone, so a piece of cartilage that touches no voxel of its bone is an error
too (typically a rim along a fascia or a muscle border). :func:`clean_knee_probabilities` finds both on the network's
own grid (26-connected pieces of the most probable labels) and moves the probability of that structure there to
background, so the labelmap resampled afterwards has one piece per bone and no floating cartilage. This is the common
nnU-Net style post-processing, limited to what holds in every knee: menisci and ligaments are left as they are, a
cartilage piece is kept whole as soon as any of its voxels touches the bone, and cartilage is left alone where its bone
was not found at all.

The medial and lateral compartments lie on either side of the intercondylar notch, where the cruciate ligaments run,
and the lateral one is the side of the fibula and the lateral collateral ligament. In a sagittal image the two tibial
plateaus and the two menisci differ only in shape, so a network can call part of one compartment by the other's name.
:func:`assign_compartment_sides` gives every voxel of tibial cartilage or meniscus the name of the side of the notch it
lies on (physical left-right coordinates, so the rule holds for left and right knees and any slice orientation).
The cruciates themselves run inside the notch, about 20 mm wide, so :func:`keep_cruciates_in_notch` sends a cruciate
label farther than ``NOTCH_HALF_WIDTH_MM`` from the notch's centre to background (typically soft tissue on the
outermost slices of a wide series, beyond the condyles).

Resampling onto a series finer than the network grid can still split a bone where two pieces met only at a corner of
a coarse voxel, so :func:`keep_largest_bone_pieces` applies the one-piece rule once more to the labelmap on the
series' own grid, and on a thin-slice series also at the scale where bone topology is judged (a copy no finer than
``TOPOLOGY_MM``, as the anatomical checks read it): a part of a bone joined to the rest only by a bridge thinner than
that is no bone (real bones are joined by centimetres of marrow), typically labels in the soft tissue of the
outermost slices of a wide series.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .. import labels as label_tables
from .plausibility import TOPOLOGY_MM, topology_copy

__all__ = ["clean_knee_probabilities", "assign_compartment_sides", "left_right_mm", "postprocess_knee",
           "keep_largest_bone_pieces", "keep_cruciates_in_notch", "probabilities_by_value", "CARTILAGE_BONE",
           "COMPARTMENT_PAIRS", "SIDE_MARKERS"]

#: The bone each articular cartilage covers.
CARTILAGE_BONE = {"femoral_cartilage": "femur", "medial_tibial_cartilage": "tibia",
                  "lateral_tibial_cartilage": "tibia", "patellar_cartilage": "patella"}


#: The structures that come as a medial and a lateral one: (medial, lateral).
COMPARTMENT_PAIRS = (("medial_tibial_cartilage", "lateral_tibial_cartilage"), ("medial_meniscus", "lateral_meniscus"))
#: Context tissues that mark a side of the knee: +1 lateral (fibula, lateral collateral ligament), -1 medial.
SIDE_MARKERS = {"fibula": 1, "lcl": 1, "mcl": -1}
#: The structures that run through the intercondylar notch, between the two compartments.
NOTCH_STRUCTURES = ("acl", "pcl")
#: How far (mm, left-right) from the notch's centre a cruciate may lie: the notch is about 20 mm wide and each
#: cruciate runs inside it; the margin covers an ACL on the lateral wall and the error of the centre's estimate.
NOTCH_HALF_WIDTH_MM = 20.0


def _outside_largest_piece(mask: np.ndarray) -> np.ndarray:
    """(D, H, W) bool: the voxels of ``mask`` outside its largest 26-connected piece."""
    pieces = sitk.GetArrayFromImage(sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True), sortByObjectSize=True))
    return mask & (pieces != 1)


def _pieces_not_touching(mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(D, H, W) bool: the voxels of the 26-connected pieces of ``mask`` none of whose voxels is ``other`` or a
    26-neighbour of it."""
    pieces = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    near = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(other.astype(np.uint8)), [1, 1, 1],
                                                    sitk.sitkBox)).astype(bool)
    touching = np.unique(pieces[near & mask])
    return mask & ~np.isin(pieces, touching)


def _to_background(probs: np.ndarray, values: Sequence[int], value: int, where: np.ndarray) -> None:
    """Move the probability of the classes of label ``value`` to background (the first class of value 0) at
    ``where``, in place."""
    _move(probs, values, value, 0, where)


def _move(probs: np.ndarray, values: Sequence[int], value: int, to: int, where: np.ndarray) -> None:
    """Move the probability of the classes of label ``value`` to the first class of label ``to`` at ``where``,
    in place."""
    target = list(values).index(to)
    for c in (c for c, v in enumerate(values) if v == value):
        probs[target][where] += probs[c][where]
        probs[c][where] = 0.0


def probabilities_by_value(probabilities: np.ndarray, values: Sequence[int]) -> Dict[int, np.ndarray]:
    """``{label value: (D, H, W) probability}`` in increasing value order from class probabilities (C, D, H, W),
    the classes sharing a value (background and the context tissues) summed; ``values`` gives each class's value."""
    values = [int(v) for v in values]
    return {u: probabilities[[c for c, v in enumerate(values) if v == u]].sum(0) for u in sorted(set(values))}


def _winners(probabilities: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """(D, H, W) the most probable label value per voxel (classes sharing a value summed)."""
    by_value = probabilities_by_value(probabilities, values)
    return np.asarray(list(by_value))[np.stack(list(by_value.values())).argmax(0)]


def clean_knee_probabilities(probabilities: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Class probabilities (C, D, H, W) with each bone's probability moved to background wherever that bone is the
    most probable label but outside its largest connected piece, then each cartilage's wherever it wins in a piece
    that touches no voxel of its bone (module docstring). ``values``: the label-table value of each class (classes
    sharing a value, e.g. the context tissues and background, are summed for the vote). Returns a new array; the
    probabilities still sum to 1 per voxel."""
    values = [int(v) for v in values]
    out = np.array(probabilities, dtype=np.float32, copy=True)
    table = label_tables.structure_by_key()
    winner = _winners(out, values)
    for bone in (s.value for s in label_tables.knee_structures() if s.kind == "bone"):
        if bone in values and (winner == bone).any():
            _to_background(out, values, bone, _outside_largest_piece(winner == bone))
    winner = _winners(out, values)
    for cartilage, bone in CARTILAGE_BONE.items():
        c, b = table[cartilage].value, table[bone].value
        if c in values and b in values and (winner == c).any() and (winner == b).any():  # no bone: nothing to lie on
            _to_background(out, values, c, _pieces_not_touching(winner == c, winner == b))
    return out


def left_right_mm(reference: sitk.Image) -> np.ndarray:
    """(D, H, W) float32: the patient left-right coordinate (mm, LPS x: increasing towards the patient's left) of
    each voxel of ``reference``'s grid (array axes D, H, W are the image's z, y, x)."""
    d = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    (sx, sy, sz), (nx, ny, nz) = reference.GetSpacing(), reference.GetSize()
    x = (reference.GetOrigin()[0] + d[0, 0] * sx * np.arange(nx)[None, None, :]
         + d[0, 1] * sy * np.arange(ny)[None, :, None] + d[0, 2] * sz * np.arange(nz)[:, None, None])
    return np.broadcast_to(x, (nz, ny, nx)).astype(np.float32)


def _lateral_direction(winner: np.ndarray, side: np.ndarray, markers: Mapping[str, np.ndarray],
                       pairs: Sequence[tuple]) -> int:
    """+1 when the lateral compartment lies where ``side`` > 0, -1 where < 0, 0 when nothing tells.

    The side markers decide (each voxel of the fibula or LCL votes for its side, of the MCL against); without any,
    the network's own names do (each voxel called lateral votes for its side, called medial against)."""
    votes = sum(SIDE_MARKERS[name] * float(side[mask].sum()) for name, mask in markers.items())
    if votes == 0:
        votes = sum(float(side[winner == lat].sum() - side[winner == med].sum()) for med, lat in pairs)
    return int(np.sign(votes))


def assign_compartment_sides(probabilities: np.ndarray, values: Sequence[int], left_right: np.ndarray,
                             markers: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
    """Class probabilities (C, D, H, W) with the tibial cartilage and the menisci named by the side of the
    intercondylar notch they lie on (module docstring).

    The notch is the median left-right coordinate of the voxels whose most probable label is a cruciate ligament;
    the lateral side is found by :func:`_lateral_direction`. On the lateral side every medial structure's probability
    moves to its lateral partner, on the medial side the other way round, so the probabilities still sum to 1 and the
    two together keep their extent. Returns a new array; the same values when the volume has no cruciate voxel, no
    compartment pair, or nothing that tells the sides apart.

    Args:
        probabilities: (C, D, H, W) class probabilities; ``values`` gives each class's label-table value.
        left_right: (D, H, W) patient left-right coordinate of each voxel in mm (:func:`left_right_mm`).
        markers: ``{name in SIDE_MARKERS: (D, H, W) bool}`` voxels of those context tissues (may be empty).
    """
    values = [int(v) for v in values]
    table = label_tables.structure_by_key()
    pairs = [(table[m].value, table[l].value) for m, l in COMPARTMENT_PAIRS
             if table[m].value in values and table[l].value in values]
    out = np.array(probabilities, dtype=np.float32, copy=True)
    winner = _winners(out, values)
    centre = _notch_centre(winner, left_right, table)
    if not pairs or centre is None:
        return out
    side = np.sign(left_right - centre)
    lateral = _lateral_direction(winner, side, {k: v for k, v in (markers or {}).items() if k in SIDE_MARKERS},
                                 pairs)
    if lateral == 0:
        return out
    on_lateral_side = side == lateral
    for med, lat in pairs:
        _move(out, values, med, lat, on_lateral_side)
        _move(out, values, lat, med, ~on_lateral_side)
    return out


def _notch_centre(winner: np.ndarray, left_right: np.ndarray, table) -> Optional[float]:
    """The intercondylar notch's left-right coordinate (mm): the median of the voxels whose most probable label is a
    cruciate ligament; None when there are none."""
    notch = np.isin(winner, [table[k].value for k in NOTCH_STRUCTURES])
    return float(np.median(left_right[notch])) if notch.any() else None


def keep_cruciates_in_notch(probabilities: np.ndarray, values: Sequence[int], left_right: np.ndarray) -> np.ndarray:
    """Class probabilities (C, D, H, W) with each cruciate's probability moved to background wherever the voxel lies
    farther than ``NOTCH_HALF_WIDTH_MM`` (left-right, ``left_right`` as in :func:`assign_compartment_sides`) from the
    notch's centre (module docstring). Returns a new array; the same values when no voxel is a cruciate."""
    values = [int(v) for v in values]
    table = label_tables.structure_by_key()
    out = np.array(probabilities, dtype=np.float32, copy=True)
    centre = _notch_centre(_winners(out, values), left_right, table)
    if centre is None:
        return out
    outside = np.abs(left_right - centre) > NOTCH_HALF_WIDTH_MM
    for key in NOTCH_STRUCTURES:
        if table[key].value in values:
            _to_background(out, values, table[key].value, outside)
    return out


def postprocess_knee(probabilities: np.ndarray, values: Sequence[int], reference: sitk.Image,
                     context_tissues: Sequence[str] = ()) -> np.ndarray:
    """The knee post-processing of one network's class probabilities (C, D, H, W) on its grid ``reference``:
    :func:`clean_knee_probabilities`, :func:`keep_cruciates_in_notch`, then :func:`assign_compartment_sides` with the
    side markers among the ``context_tissues`` (the last ``len(context_tissues)`` classes, in that order) where they
    are the most probable class."""
    left_right = left_right_mm(reference)
    out = keep_cruciates_in_notch(clean_knee_probabilities(probabilities, values), values, left_right)
    first_context = len(values) - len(context_tissues)
    argmax = out.argmax(0) if context_tissues else None
    markers = {name: argmax == first_context + k for k, name in enumerate(context_tissues) if name in SIDE_MARKERS}
    return assign_compartment_sides(out, values, left_right, markers)


def keep_largest_bone_pieces(labelmap: sitk.Image) -> sitk.Image:
    """``labelmap`` (integer label-table values, any grid) with each bone's voxels outside its largest 26-connected
    piece set to background, judged on the labelmap's own grid and, where a voxel side is below ``TOPOLOGY_MM``, on a
    copy at that scale too (module docstring); the same image when there is nothing to remove. Each bone is searched
    only within its bounding box, so a large series costs a fraction of a second."""
    arr = sitk.GetArrayFromImage(labelmap)
    changed = False
    for bone in (s.value for s in label_tables.knee_structures() if s.kind == "bone"):
        mask = arr == bone
        box = _bounding_box(mask)
        if box is None:
            continue
        sub = mask[box]
        keep = sub & ~_outside_largest_coarse_piece(sub, labelmap, box)
        drop = sub & ~(keep & ~_outside_largest_piece(keep))
        if drop.any():
            arr[box][drop] = 0
            changed = True
    if not changed:
        return labelmap
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labelmap)
    return out


def _outside_largest_coarse_piece(mask: np.ndarray, labelmap: sitk.Image, box) -> np.ndarray:
    """(d, h, w) bool: the voxels of ``mask`` (the ``box`` of ``labelmap``'s grid) that lie in a voxel of a piece
    other than the largest on a copy no finer than ``TOPOLOGY_MM`` (nearest neighbour); none where the grid is no
    finer than that already."""
    none = np.zeros_like(mask)
    if min(labelmap.GetSpacing()) >= TOPOLOGY_MM:
        return none
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(labelmap.GetSpacing())
    img.SetDirection(labelmap.GetDirection())
    img.SetOrigin(labelmap.TransformIndexToPhysicalPoint([int(b.start) for b in reversed(box)]))
    pieces = sitk.RelabelComponent(sitk.ConnectedComponent(topology_copy(img), True), sortByObjectSize=True)
    if int(sitk.GetArrayViewFromImage(pieces).max()) <= 1:
        return none
    back = sitk.Resample(pieces, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pieces.GetPixelID())
    return mask & (sitk.GetArrayFromImage(back) > 1)


def _bounding_box(mask: np.ndarray):
    """The tuple of slices bounding the True voxels of ``mask`` (D, H, W), or None when there are none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
