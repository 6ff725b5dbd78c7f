"""The demo exam: a simulated procedural knee exam as an :class:`~OrthoDiffusionLib.io.Exam`.

``orthodiffusion demo`` (in :mod:`OrthoDiffusionLib.cli.predict`) simulates one exam with a stated abnormality
(:func:`OrthoDiffusionLib.simulate.simulate_exam`, default :data:`DEFAULT_ABNORMALITY`), converts it here and runs the
registry's default model on it.
"""
from __future__ import annotations

from ..io import Exam, Series, classify_plane
from ..io.series import META_KEYS

__all__ = ["exam_from_simulation", "DEFAULT_ABNORMALITY"]

DEFAULT_ABNORMALITY = "joint_effusion"


def exam_from_simulation(sim) -> Exam:
    """An :class:`~OrthoDiffusionLib.io.Exam` (first series of each plane) from a
    :class:`~OrthoDiffusionLib.simulate.SimulatedExam`, with de-identified metadata only."""
    import SimpleITK as sitk

    exam = Exam(source=f"simulated exam {sim.patient_id} (seed {sim.seed})")
    for s in sim.series:
        if exam.get(s.plane) is not None:
            continue
        image = sitk.Cast(s.image, sitk.sitkFloat32)
        plane, obliquity = classify_plane(image, 2, path=f"simulated {s.plane}")
        meta = {k: v for k, v in s.meta.items() if k in META_KEYS}
        meta.update({"format": "simulated", "modality": "MR"})
        setattr(exam, s.plane, Series(image=image, plane=plane, obliquity_deg=obliquity,
                                      source=f"simulated:{sim.patient_id}:{s.plane}", meta=meta))
        exam.choices.append(f"{s.plane}: simulated {s.meta.get('series_description', '')} "
                            f"({s.image.GetSize()[2]} slices)")
    return exam
