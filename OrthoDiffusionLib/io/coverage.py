"""Whether a series covers enough of the knee for the model: warnings, not refusals.

A series with fewer slices than the model's input is zero-padded (:func:`OrthoDiffusionLib.inference.preprocess.
preprocess_series`), and one that spans only a few millimetres cannot show the structures the model reports; the
prediction still runs, but its result carries a warning (``diagnosis.json`` ``warnings``, the report, the terminal).
"""
from __future__ import annotations

from typing import List

#: Below this extent along the slice axis (slices x spacing, mm) a series cannot hold the joint.
MIN_SLICE_EXTENT_MM = 15.0
#: Below this in-plane field of view (mm, the smaller side) a series cannot hold a cruciate ligament (~30-38 mm).
MIN_INPLANE_FOV_MM = 30.0


def coverage_warnings(series, plane: str, slices_needed: int) -> List[str]:
    """Warnings for ``series`` used as the ``plane`` input of a model that takes ``slices_needed`` slices."""
    d, h, w = series.shape
    sx, sy, sz = series.spacing
    notes: List[str] = []
    if d < slices_needed:
        notes.append(f"the {plane} series ({series.source}) has {d} slice{'s' if d != 1 else ''}; the model needs "
                     f"{slices_needed}: the missing slices are zero-padded and its results are unreliable")
    extent, fov = d * sz, min(w * sx, h * sy)
    if extent < MIN_SLICE_EXTENT_MM or fov < MIN_INPLANE_FOV_MM:
        notes.append(f"the {plane} series ({series.source}) covers only {extent:.0f} mm across its slices and "
                     f"{fov:.0f} mm in-plane (less than {MIN_SLICE_EXTENT_MM:.0f} / {MIN_INPLANE_FOV_MM:.0f} mm): "
                     "it cannot show the whole knee and its results are unreliable")
    return notes


__all__ = ["MIN_SLICE_EXTENT_MM", "MIN_INPLANE_FOV_MM", "coverage_warnings"]
