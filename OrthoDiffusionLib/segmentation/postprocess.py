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

Resampling onto a series finer than the network grid can still split a bone where two pieces met only at a corner of
a coarse voxel, so :func:`keep_largest_bone_pieces` applies the one-piece rule once more to the labelmap on the
series' own grid.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk

from .. import labels as label_tables

__all__ = ["clean_knee_probabilities", "keep_largest_bone_pieces", "probabilities_by_value", "CARTILAGE_BONE"]

#: The bone each articular cartilage covers.
CARTILAGE_BONE = {"femoral_cartilage": "femur", "medial_tibial_cartilage": "tibia",
                  "lateral_tibial_cartilage": "tibia", "patellar_cartilage": "patella"}


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
    background = list(values).index(0)
    for c in (c for c, v in enumerate(values) if v == value):
        probs[background][where] += probs[c][where]
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


def keep_largest_bone_pieces(labelmap: sitk.Image) -> sitk.Image:
    """``labelmap`` (integer label-table values, any grid) with each bone's voxels outside its largest 26-connected
    piece set to background; the same image when there is nothing to remove. Each bone is searched only within its
    bounding box, so a large series costs a fraction of a second."""
    arr = sitk.GetArrayFromImage(labelmap)
    changed = False
    for bone in (s.value for s in label_tables.knee_structures() if s.kind == "bone"):
        mask = arr == bone
        box = _bounding_box(mask)
        if box is None:
            continue
        outside = _outside_largest_piece(mask[box])
        if outside.any():
            arr[box][outside] = 0
            changed = True
    if not changed:
        return labelmap
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labelmap)
    return out


def _bounding_box(mask: np.ndarray):
    """The tuple of slices bounding the True voxels of ``mask`` (D, H, W), or None when there are none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
