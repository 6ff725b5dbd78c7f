"""One patient and one study per exam.

Every DICOM series keeps, in memory only, the identity of the exam it belongs to (:data:`IDENTITY_TAGS`: PatientID,
StudyInstanceUID, PatientBirthDate, PatientSex) in ``Series.identity``; it never goes into ``Series.meta``, a
result file or a report. Values are compared only where both sides have one (NIfTI/NRRD volumes carry none). An
exam is refused with :class:`~OrthoDiffusionLib.errors.MixedPatientsError` when

- the slices of one series differ (``Series.identity_conflict``, set when the series is read), or
- two series of the exam differ.

The refusal is one line naming both series (or files) and the differing values, so the user can see what was mixed.
``allow=True`` (``--allow-mixed-patients``) accepts the exam; the returned warnings then name the series and the
differing tags (not their values, which stay out of result files).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import MixedPatientsError

#: DICOM attributes that tell one patient's exam from another's, in the order they are compared.
IDENTITY_TAGS: Tuple[str, ...] = ("PatientID", "StudyInstanceUID", "PatientBirthDate", "PatientSex")
OVERRIDE_HINT = "pass --allow-mixed-patients (library: allow_mixed_patients=True) to run anyway"


def header_identity(ds: Any) -> Dict[str, str]:
    """The :data:`IDENTITY_TAGS` a DICOM header has (non-empty values, stripped)."""
    out: Dict[str, str] = {}
    for tag in IDENTITY_TAGS:
        try:
            value = ds.get(tag)
        except Exception:  # a malformed value: not usable for comparison
            continue
        text = "" if value is None else str(value).strip()
        if text:
            out[tag] = text
    return out


def first_difference(a: Mapping[str, str], b: Mapping[str, str]) -> Optional[Tuple[str, str, str]]:
    """``(tag, value in a, value in b)`` of the first tag both have with different values, else None."""
    for tag in IDENTITY_TAGS:
        if tag in a and tag in b and a[tag] != b[tag]:
            return tag, a[tag], b[tag]
    return None


def series_identity(items: Sequence[Tuple[str, Mapping[str, str]]]) -> Tuple[Dict[str, str], Optional[str]]:
    """The identity of one series from its files' ``(path, identity)`` and, when two files differ, a one-line
    description of the conflict naming both files and values (else None)."""
    merged: Dict[str, str] = {}
    where: Dict[str, str] = {}
    for path, ident in items:
        for tag, value in ident.items():
            if tag not in merged:
                merged[tag], where[tag] = value, path
            elif merged[tag] != value:
                return merged, (f"the slices of one series belong to different patients or studies: {tag} "
                                f"{merged[tag]!r} in {where[tag]} but {value!r} in {path}")
    return merged, None


def check_exam_identity(series: Mapping[str, Any], allow: bool = False) -> List[str]:
    """Check that the series of one exam (``{plane: Series}``, None entries skipped) belong to one patient and one
    study.

    Returns:
        Warnings (only with ``allow``; empty when everything matches).

    Raises:
        MixedPatientsError: a mix, unless ``allow``.
    """
    present = [(plane, s) for plane, s in series.items() if s is not None]
    notes: List[str] = []
    for plane, s in present:
        conflict = getattr(s, "identity_conflict", None)
        if conflict:
            if not allow:
                raise MixedPatientsError(f"the {plane} series: {conflict}; {OVERRIDE_HINT}", s.source)
            notes.append(f"the {plane} series ({s.source}) mixes slices of different patients or studies; used "
                         "anyway (--allow-mixed-patients)")
    for i, (plane_a, a) in enumerate(present):
        for plane_b, b in present[i + 1:]:
            diff = first_difference(getattr(a, "identity", {}) or {}, getattr(b, "identity", {}) or {})
            if diff is None:
                continue
            tag, va, vb = diff
            if not allow:
                raise MixedPatientsError(
                    f"the {plane_a} series and the {plane_b} series ({b.source}) belong to different patients or "
                    f"studies: {tag} {va!r} vs {vb!r}; {OVERRIDE_HINT}", a.source)
            notes.append(f"the {plane_a} series ({a.source}) and the {plane_b} series ({b.source}) differ in {tag} "
                         "(different patients or studies); fused anyway (--allow-mixed-patients)")
    return notes


__all__ = ["IDENTITY_TAGS", "header_identity", "first_difference", "series_identity", "check_exam_identity"]
