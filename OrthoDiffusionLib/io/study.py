"""Multi-plane exams: the :class:`Exam` object and :func:`load_study`, which picks one series per plane.

Choice rule per plane (the model was trained on PD-weighted, non-fat-suppressed series):
1. rank by :func:`sequence.preference` (PD without fat suppression, then PD with fat suppression, then unknown
   weighting without fat suppression, then T1/T2 without, then other fat-suppressed series);
2. ties: more slices, then finer in-plane pixel area, then less obliquity, then shorter TE, then name.
DICOM series are judged from their headers and only the chosen ones are read; a chosen series that fails to load is
reported and the next candidate is taken.

Anatomy: both loaders refuse a series whose metadata names another body part than the model's ``anatomy``
(:mod:`.anatomy`; default ``"knee"``, ``None`` = no check). In a study folder such series are ignored (and listed in
``choices``) like non-MR ones; when nothing else is left, or when the series was given explicitly, the loader raises
:class:`~OrthoDiffusionLib.errors.AnatomyMismatchError`. ``allow_anatomy_mismatch=True`` keeps them and notes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import (
    AmbiguousSeriesError,
    AnatomyMismatchError,
    CorruptFileError,
    InputError,
    MissingPathError,
    MissingPlaneError,
    NoDicomError,
)
from ..output_folder import carries_marker
from ..progress import ProgressFn
from . import sequence
from .anatomy import check_anatomy
from .dicom_read import DicomSeriesGroup, load_group, meta_from_header, scan_dicom_folder, sort_frames
from .exam_identity import check_exam_identity
from .orientation import classify_plane
from .reader import volume_files, read_series
from .series import PLANES, Series
from .volume_read import read_volume

PathLike = Union[str, os.PathLike]
SeriesLike = Union[Series, PathLike, None]


@dataclass
class Exam:
    """One knee exam: up to one series per plane.

    Attributes:
        sagittal, coronal, axial: the series per plane (None = missing).
        choices: human-readable lines: what was chosen for each plane and why, which planes are missing, and which
            files were ignored.
        source: the study folder (or None when assembled from series).
        warnings: problems found while loading that the result must carry (unreadable files skipped, series of
            different patients accepted with ``allow_mixed_patients``).
    """

    sagittal: Optional[Series] = None
    coronal: Optional[Series] = None
    axial: Optional[Series] = None
    choices: List[str] = field(default_factory=list)
    source: Optional[str] = None
    warnings: List[str] = field(default_factory=list)

    def get(self, plane: str) -> Optional[Series]:
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
        return getattr(self, plane)

    def planes_present(self) -> List[str]:
        return [p for p in PLANES if getattr(self, p) is not None]

    def require(self, planes: Iterable[str] = PLANES) -> None:
        """Raise :class:`MissingPlaneError` naming every plane in ``planes`` that the exam lacks."""
        missing = [p for p in planes if self.get(p) is None]
        if missing:
            present = ", ".join(self.planes_present()) or "none"
            raise MissingPlaneError(f"exam lacks the {', '.join(missing)} series (present: {present})",
                                    self.source or "exam")

    @classmethod
    def from_series(cls, sagittal: SeriesLike = None, coronal: SeriesLike = None, axial: SeriesLike = None, *,
                    anatomy: Optional[str] = "knee", allow_anatomy_mismatch: bool = False,
                    allow_mixed_patients: bool = False, series_uid: Union[str, Sequence[str], None] = None,
                    echo: Optional[int] = None) -> "Exam":
        """Assemble an exam from Series objects or paths (read with :func:`read_series`).

        Args:
            anatomy: the model's anatomy; a series whose metadata names another one is refused (None = no check).
            allow_anatomy_mismatch: keep such a series and note it in ``choices`` instead.
            allow_mixed_patients: accept series of different patients/studies (noted in ``warnings``).
            series_uid, echo: passed to :func:`read_series` for paths holding several series or echoes.

        Raises:
            InputError: a series' slices are not in the plane it was given for.
            AnatomyMismatchError: a series' metadata names another anatomy.
            MixedPatientsError: the series belong to different patients or studies.
        """
        exam = cls()
        for plane, item in zip(PLANES, (sagittal, coronal, axial)):
            if item is None:
                exam.choices.append(f"{plane}: missing (not given)")
                continue
            s = item if isinstance(item, Series) else read_series(item, series_uid=series_uid, echo=echo)
            if s.plane != plane:
                raise InputError(f"given as the {plane} series, but its slices are {s.plane}", s.source)
            note = check_anatomy(s.meta, anatomy, s.source, f"the {plane} series", allow_anatomy_mismatch)
            setattr(exam, plane, s)
            exam.choices.append(f"{plane}: {describe_series(s.meta, s.shape[0], s.spacing)} from {s.source} (given)")
            if note:
                exam.choices.append(note)
        exam.warnings += check_exam_identity({p: exam.get(p) for p in PLANES}, allow_mixed_patients)
        return exam


@dataclass
class _Candidate:
    plane: str
    obliquity: float
    meta: dict
    n_slices: int
    spacing: Tuple[float, float, float]
    label: str
    source: str
    load: Callable[[], Series]

    def key(self) -> tuple:
        rank, _ = sequence.preference(self.meta)
        te = self.meta.get("echo_time")
        return (rank, -self.n_slices, round(self.spacing[0] * self.spacing[1], 6), round(self.obliquity, 1),
                te if te is not None else 1e9, self.label)


def describe_series(meta: dict, n_slices: int, spacing: Sequence[float]) -> str:
    desc = meta.get("series_description") or "(no description)"
    parts = []
    if meta.get("series_number") is not None:
        parts.append(f"series {meta['series_number']}")
    parts.append(repr(desc))
    if meta.get("echo_number") is not None and meta.get("format") == "DICOM":
        parts.append(f"echo {meta['echo_number']}")
    geo = f"{n_slices} slices, {spacing[0]:.2f}x{spacing[1]:.2f}x{spacing[2]:.2f} mm"
    te, tr = meta.get("echo_time"), meta.get("repetition_time")
    if te is not None or tr is not None:
        geo += f", TE {te if te is not None else '?'}/TR {tr if tr is not None else '?'} ms"
    return " ".join(parts) + f" ({geo})"


def _dicom_candidate(group: DicomSeriesGroup, where: str, tolerance_deg: float) -> _Candidate:
    frames, normal, spacing = sort_frames(group.frames, where)
    ref = frames[0]
    direction = np.stack([ref.row_dir, ref.col_dir, normal], axis=1)
    plane, obliquity = classify_plane(direction, 2, tolerance_deg, path=where)
    meta = meta_from_header(group.header, len(frames), spacing, ref.pixel_spacing, group.echo_number,
                             group.echo_time)
    sp = (ref.pixel_spacing[1], ref.pixel_spacing[0], spacing)
    return _Candidate(plane, obliquity, meta, len(frames), sp, group.label(), where,
                      lambda: load_group(group, where=where, tolerance_deg=tolerance_deg))


def _volume_candidate(series: Series) -> _Candidate:
    return _Candidate(series.plane, series.obliquity_deg, series.meta, series.shape[0], series.spacing,
                      os.path.basename(series.source), series.source, lambda: series)


def find_candidates(folder: PathLike, tolerance_deg: float = 30.0,
                    progress: Optional[ProgressFn] = None, *,
                    series_uid: Union[str, Sequence[str], None] = None, echo: Optional[int] = None,
                    corrupt: Optional[List[Tuple[str, str]]] = None
                    ) -> Tuple[List[_Candidate], List[Tuple[str, str]]]:
    """All usable series under ``folder`` (DICOM judged from headers, volumes read) and the ignored files.

    ``series_uid`` (SeriesInstanceUIDs or SeriesNumbers) keeps only those DICOM series; ``echo`` keeps only that echo
    of multi-echo series. ``corrupt``, when given, receives ``(file, problem)`` of the unreadable DICOM files."""
    folder = os.fspath(folder)
    ignored: List[Tuple[str, str]] = []
    candidates: List[_Candidate] = []
    if progress:
        progress("scanning DICOM headers", 0.0)
    scan = scan_dicom_folder(folder, strict=False)
    ignored.extend(scan.ignored)
    if corrupt is not None:
        corrupt.extend(scan.corrupt)
    for g in _chosen_groups(scan.groups, series_uid, echo, folder):
        where = g.folder
        if g.modality.upper() != "MR":
            ignored.append((where, f"not MR (modality {g.modality or 'missing'}): {g.label()}"))
            continue
        try:
            candidates.append(_dicom_candidate(g, where, tolerance_deg))
        except InputError as e:
            ignored.append((where, f"{g.label()}: {e.problem}"))
    volumes = volume_files(folder)
    for i, path in enumerate(volumes):
        if progress:
            progress(f"reading {os.path.basename(path)}", 0.5 + 0.5 * i / max(1, len(volumes)))
        try:
            candidates.append(_volume_candidate(read_volume(path, tolerance_deg=tolerance_deg)))
        except InputError as e:
            ignored.append((path, e.problem))
    return candidates, ignored


def _chosen_groups(groups: Sequence[DicomSeriesGroup], series_uid: Union[str, Sequence[str], None],
                   echo: Optional[int], folder: str) -> List[DicomSeriesGroup]:
    """The groups a study scan considers: those ``series_uid`` names (all without it) and, of multi-echo series, only
    echo ``echo`` (all echoes without it)."""
    out = list(groups)
    if series_uid is not None:
        uids = [str(series_uid)] if isinstance(series_uid, (str, int)) else [str(u) for u in series_uid]
        out = [g for g in out if g.uid in uids or (g.series_number is not None and str(g.series_number) in uids)]
        if not out:
            raise AmbiguousSeriesError("no series in this study matches --series-uid (SeriesInstanceUID or "
                                       "SeriesNumber)", folder)
    if echo is not None:
        out = [g for g in out if g.n_echoes == 1 or (g.echo_number if g.echo_number is not None else 1) == echo]
    return out


def load_study(folder: PathLike, *, tolerance_deg: float = 30.0,
               progress: Optional[ProgressFn] = None, anatomy: Optional[str] = "knee",
               allow_anatomy_mismatch: bool = False, allow_mixed_patients: bool = False,
               series_uid: Union[str, Sequence[str], None] = None, echo: Optional[int] = None) -> Exam:
    """Scan a study folder (DICOM series and/or NIfTI/NRRD/MetaImage files) and assign one series per plane.

    Args:
        folder: study folder (searched recursively).
        tolerance_deg: obliquity accepted when classifying planes; more oblique series are ignored (reported).
        progress: optional ``progress(stage, fraction)``.
        anatomy: the model's anatomy: series whose metadata names another one are ignored (None = no check).
        allow_anatomy_mismatch: keep them (noted in ``choices``).
        allow_mixed_patients: accept chosen series of different patients/studies (noted in ``warnings``).
        series_uid: consider only these DICOM series (SeriesInstanceUIDs or SeriesNumbers).
        echo: of multi-echo series, consider only this echo (1 = first).

    Returns:
        An :class:`Exam`; ``choices`` says what was chosen per plane and why, which planes are missing, and which
        files/series were ignored; ``warnings`` names unreadable files that were skipped. Missing planes are not an
        error here (use :meth:`Exam.require`). This tool's own outputs (labelmaps, result folders) are never
        candidates.

    Raises:
        MissingPathError: the folder does not exist. NoDicomError: no usable MR series at all.
        CorruptFileError: nothing usable, and an unreadable (e.g. truncated) file is why (named).
        AnatomyMismatchError: every usable series names another anatomy (or ``folder`` is one such file).
        MixedPatientsError: the chosen series belong to different patients or studies.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise MissingPathError("no such study folder", folder)
    if os.path.isdir(folder) and carries_marker(folder):
        raise InputError("this is a result folder written by orthodiffusion, not a study", folder)
    if not os.path.isdir(folder):
        s = read_series(folder, series_uid=series_uid, echo=echo)
        note = check_anatomy(s.meta, anatomy, folder, f"the {s.plane} series", allow_anatomy_mismatch)
        exam = Exam(source=folder)
        setattr(exam, s.plane, s)
        for plane in PLANES:
            if plane == s.plane:
                _, reason = sequence.preference(s.meta)
                exam.choices.append(f"{plane}: {describe_series(s.meta, s.shape[0], s.spacing)} from {s.source}: "
                                    f"{reason}; the only series in this file")
            else:
                exam.choices.append(f"{plane}: missing (a single file holds only the {s.plane} series)")
        if note:
            exam.choices.append(note)
        exam.warnings += check_exam_identity({s.plane: s}, allow_mixed_patients)
        return exam
    corrupt: List[Tuple[str, str]] = []
    candidates, ignored = find_candidates(folder, tolerance_deg, progress, series_uid=series_uid, echo=echo,
                                          corrupt=corrupt)
    kept: List[Tuple[_Candidate, Optional[str]]] = []
    refused: List[AnatomyMismatchError] = []
    for c in candidates:
        try:
            note = check_anatomy(c.meta, anatomy, c.source, c.label, allow_anatomy_mismatch)
        except AnatomyMismatchError as e:
            refused.append(e)
            ignored.append((c.source, e.problem))
            continue
        kept.append((c, note))
    if refused and not kept:
        raise refused[0]
    try:
        exam = assign_planes(folder, [c for c, _ in kept], ignored, corrupt)
    except NoDicomError:
        if corrupt:  # nothing usable, and an unreadable file is why: name it
            raise CorruptFileError(f"unreadable file in the study ({corrupt[0][1]})", corrupt[0][0]) from None
        raise
    if corrupt and not exam.planes_present():
        raise CorruptFileError(f"unreadable file in the study ({corrupt[0][1]})", corrupt[0][0])
    chosen = {exam.get(p).source for p in exam.planes_present()}
    exam.choices += [note for c, note in kept if note and c.source in chosen]
    exam.warnings += [f"skipped an unreadable file in the study: {path}: {problem}" for path, problem in corrupt]
    exam.warnings += check_exam_identity({p: exam.get(p) for p in PLANES}, allow_mixed_patients)
    if progress:
        progress("done", 1.0)
    return exam


def assign_planes(folder: str, candidates: List[_Candidate], ignored: List[Tuple[str, str]],
                  corrupt: Optional[List[Tuple[str, str]]] = None) -> Exam:
    """Choose one candidate per plane (rule in the module docstring), load it, and record the reasons.
    ``corrupt``, when given, receives ``(file, problem)`` of unreadable files met while loading.

    Raises:
        NoDicomError: no candidates at all.
    """
    ignored = list(ignored)
    if not candidates:
        why = f" (ignored: {'; '.join(f'{os.path.basename(p)}: {r}' for p, r in ignored[:5])})" if ignored else ""
        raise NoDicomError(f"no usable MR image series in this study folder{why}", folder)
    exam = Exam(source=folder)
    for plane in PLANES:
        pool = sorted((c for c in candidates if c.plane == plane), key=_Candidate.key)
        if not pool:
            exam.choices.append(f"{plane}: missing (no series with {plane} slices found)")
            continue
        chosen = None
        for c in pool:
            try:
                chosen = (c, c.load())
                break
            except InputError as e:
                ignored.append((c.source, f"{c.label}: {e.problem}"))
                if isinstance(e, CorruptFileError) and corrupt is not None:
                    corrupt.append((e.path or c.source, e.problem))
        if chosen is None:
            exam.choices.append(f"{plane}: missing (every {plane} series failed to load, see ignored)")
            continue
        c, series = chosen
        setattr(exam, plane, series)
        _, reason = sequence.preference(c.meta)
        line = f"{plane}: {describe_series(c.meta, c.n_slices, c.spacing)} from {c.source}: {reason}"
        if c.obliquity >= 0.05:
            line += f"; {c.obliquity:.1f} deg oblique"
        others = [o for o in pool if o is not c]
        if others:
            shown = "; ".join(f"{o.label} [{sequence.preference(o.meta)[1].split(' (')[0]}]" for o in others[:4])
            more = f" and {len(others) - 4} more" if len(others) > 4 else ""
            line += f". Preferred over {len(others)} other {plane} series: {shown}{more}"
        exam.choices.append(line)
    for path, reason in ignored:
        exam.choices.append(f"ignored: {path}: {reason}")
    return exam


__all__ = ["Exam", "load_study", "find_candidates", "assign_planes", "describe_series", "inspect_path"]


def inspect_path(path: str, series_uid: Union[str, Sequence[str], None] = None,
                 echo: Optional[int] = None) -> Dict[str, Any]:
    """What ``orthodiffusion inspect`` shows about a study folder or series file, as a JSON-friendly report:
    ``series`` (one entry per series/echo), ``assignment`` (plane -> chosen source or None), ``choices`` (the
    reasons) and ``ignored``. ``series_uid`` / ``echo`` narrow a folder with several series or echoes as ``predict``
    does."""
    if not os.path.exists(path):
        raise MissingPathError("no such file or folder", path)
    series: List[Dict[str, Any]] = []
    if os.path.isdir(path):
        candidates, ignored = find_candidates(path, series_uid=series_uid, echo=echo)
        exam = assign_planes(path, candidates, ignored)
        for c in sorted(candidates, key=lambda c: (c.plane, c.label)):
            series.append({
                "label": c.label, "source": c.source, "plane": c.plane, "obliquity_deg": round(c.obliquity, 2),
                "size": [c.meta.get("columns"), c.meta.get("rows"), c.n_slices],
                "spacing": [round(float(v), 4) for v in c.spacing],
                "echo_time": c.meta.get("echo_time"), "repetition_time": c.meta.get("repetition_time"),
                "series_description": c.meta.get("series_description"), "weighting": c.meta.get("weighting"),
                "fat_sat": c.meta.get("fat_sat"), "format": c.meta.get("format"),
            })
    else:
        s = read_series(path, series_uid=series_uid, echo=echo)
        summary = s.summary()
        series.append({"label": describe_series(s.meta, s.shape[0], s.spacing), **{k: summary[k] for k in (
            "source", "plane", "obliquity_deg", "size", "spacing", "echo_time", "repetition_time",
            "series_description", "weighting", "fat_sat", "format")}})
        exam = load_study(path, series_uid=series_uid, echo=echo)
    return {
        "path": os.fspath(path),
        "series": series,
        "assignment": {p: (exam.get(p).source if exam.get(p) is not None else None) for p in ("sagittal", "coronal",
                                                                                               "axial")},
        "choices": exam.choices,
    }
