"""Inference: run a model bundle on knee MRI exams (the Python side of ``orthodiffusion predict``).

``Predictor`` loads a bundle once (:mod:`OrthoDiffusionLib.bundle.format`) and composes, from its metadata, the per-plane
diffusion backbones, the noise schedule, the diagnosis head (pooling + fusion + MPAE + temperatures), the optional EHR
branch and the per-plane segmentation heads. For every exam:

1. each present plane is preprocessed once per preprocessing setting the model uses (:mod:`.preprocess`);
2. each backbone pass runs ONCE per (backbone, plane, timestep, preprocessing) and serves every tap that the diagnosis
   head and the segmentation head of that plane need (``DiffusionUNet.encode``; the decoder never runs);
3. the diagnosis head gives calibrated probabilities and MPAE plane weights (a tissue-pooled diagnosis,
   :mod:`~OrthoDiffusionLib.model.tissue_diagnosis`, runs each plane's segmentation head on the diagnosis input and
   gives each plane's share of the evidence as its weight); the segmentation heads give class
   probabilities on the preprocessed grid; per label-table value they are resampled linearly back onto the ORIGINAL
   series geometry, where each voxel takes the most probable value; structure volumes and cartilage thickness are
   measured there.

Noise: ``noise_draws`` = K independent draws (default 1). The noise of draw ``s`` for a plane and timestep comes from
a CPU generator seeded from (``seed``, s, plane, timestep), per exam, so a result does not depend on the device, on
the batch an exam is predicted in, or on the other heads of the model. Probabilities are the mean over draws, the
uncertainty their standard deviation (:mod:`~OrthoDiffusionLib.model.uncertainty`); segmentation probabilities are averaged over draws.

Progress: ``progress(stage, fraction)`` with non-decreasing fractions ending at ``("done", 1.0)``; a stage names the
plane and the step: ``"<plane>: preprocessing"``, ``"<plane>: backbone t=<timestep>"`` (`` draw d/K`` with several
noise draws), ``"fusion"`` (the diagnosis head over the planes), ``"<plane>: segmentation"`` (its head),
``"<plane>: resampling segmentation"`` (onto the original series), ``"<plane>: measures"``.

Shapes: a preprocessed volume is (slices, size, size); the backbone input (B, 1, slices, size, size); diagnosis
outputs (B, K); plane weights (B, K, 3) in ``PLANES`` order; segmentation probabilities (B, C, slices, size, size).
"""
from __future__ import annotations

import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import SimpleITK as sitk
import torch

from .. import labels as label_tables
from ..bundle.format import ModelBundle, load_bundle
from ..device import check_precision, precision_autocast, resolve_device
from ..errors import CancelledError, InputError, MissingPlaneError
from ..io import Exam, load_study
from ..io.coverage import coverage_warnings
from ..labels import PLANES, planes_in_order
from ..progress import ProgressFn
from ..segmentation.plausibility import Check, knee_plausibility
from .preprocess import PreprocessedSeries, model_grid, preprocess_series
from .result_folder import (DIAGNOSIS_FILE, DISCLAIMER, FUSED, MEASURES_FILE, REPORT_FILE, RESULT_FORMAT,
                            RESULT_VERSION, labelmap_file_name, segmentation_file_name)
from ..model.schedule import CosineSchedule
from ..model.tissue_diagnosis import TISSUE_POOLED, head_features_and_logits, tissue_features
from ..model.uncertainty import DEFAULT_NOISE_DRAWS, aggregate_noise_draws

if TYPE_CHECKING:  # pragma: no cover
    from ..output_folder import OutputFolderClaim

__all__ = ["PredictionResult", "Predictor", "load_exam", "predict_and_write", "write_outputs", "noise_seed",
           "DEFAULT_NOISE_DRAWS"]

PathLike = Union[str, os.PathLike]
#: Overall progress fraction at which each phase of a batch starts (the last one ends at 1). "networks" is every
#: backbone pass and the heads (diagnosis fusion, segmentation) that run on its taps, per noise draw.
_PHASES = (("preprocess", 0.0), ("networks", 0.1), ("resample", 0.75), ("measures", 0.9))


# ----------------------------------------------------------------------------------------------------- exams
def load_exam(sagittal: Optional[PathLike] = None, coronal: Optional[PathLike] = None,
              axial: Optional[PathLike] = None, study: Optional[PathLike] = None, *, anatomy: Optional[str] = "knee",
              allow_anatomy_mismatch: bool = False, allow_mixed_patients: bool = False,
              series_uid: Union[str, Sequence[str], None] = None, echo: Optional[int] = None) -> Exam:
    """An :class:`~OrthoDiffusionLib.io.Exam` from series paths (each checked to be in its plane) or from a study
    folder (one series per plane chosen by :func:`~OrthoDiffusionLib.io.load_study`). Give either.

    ``anatomy`` (the model's, :attr:`Predictor.anatomy`) refuses series whose metadata names another body part
    (:mod:`OrthoDiffusionLib.io.anatomy`) unless ``allow_anatomy_mismatch``. Series of different patients or studies
    are refused unless ``allow_mixed_patients`` (:mod:`OrthoDiffusionLib.io.exam_identity`). ``series_uid`` /
    ``echo`` choose a series and an echo where a path holds several."""
    check = dict(anatomy=anatomy, allow_anatomy_mismatch=allow_anatomy_mismatch,
                 allow_mixed_patients=allow_mixed_patients, series_uid=series_uid, echo=echo)
    if study is not None:
        if any(p is not None for p in (sagittal, coronal, axial)):
            raise InputError("give either a study folder or series per plane, not both", study)
        return load_study(study, **check)
    if all(p is None for p in (sagittal, coronal, axial)):
        raise InputError("no input: give a study folder or at least one series")
    return Exam.from_series(sagittal, coronal, axial, **check)


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ---------------------------------------------------------------------------------------------------- result
@dataclass
class PredictionResult:
    """The prediction for one exam.

    Attributes:
        labels: one dict per diagnosis label: ``key``, ``name``, ``probability`` (uncalibrated, mean over draws),
            ``calibrated_probability``, ``uncertainty`` (std over draws of the calibrated probability; 0 for one
            draw), ``plane_weights`` ``{plane: w}`` (sum 1; absent plane 0). Empty without diagnosis.
        segmentations: ``{plane: uint8 labelmap}`` on the ORIGINAL series geometry (label-table values).
        measures: rows ``plane, value, key, name, volume_ml, mean_thickness_mm`` (NaN thickness -> None).
        exam: summary: ``source``, ``planes`` ({plane: series summary with origin/direction, or None}), ``choices``.
        model: bundle summary (name, version, sha256, file, description, synthetic_data_only, ...).
        timings: seconds per stage (``load_model`` = the predictor's load time; batch stages divided by the batch).
        device: where the networks ran.
        warnings: human-readable notes (missing planes, fallbacks, ignored EHR).
        fused_by: the fusion that gave the probabilities (``None`` without diagnosis).
        ehr_used: whether EHR late fusion gave the probabilities.
        noise_draws: K.
        images: ``{plane: series image}`` (original geometry; for the report's overlays; not in JSON).
        fused_segmentation: with ``fuse_segmentations`` and two or more segmented planes, one uint8 labelmap
            (label-table values) on the grid of the first of ``fused_planes`` (sagittal when present): every plane's
            class probabilities resampled linearly onto it and averaged over the planes that cover a voxel and
            segment that class (:func:`~OrthoDiffusionLib.segmentation.io.fuse_plane_segmentations`); otherwise ``None``.
        fused_planes: the planes in ``fused_segmentation`` (empty without it).
        segmentation_checks: ``{plane: [Check]}``, the anatomical plausibility checks of each knee segmentation
            (:mod:`~OrthoDiffusionLib.segmentation.plausibility`); a failing check also adds a warning.
    """

    labels: List[Dict[str, Any]]
    segmentations: Dict[str, sitk.Image]
    measures: List[Dict[str, Any]]
    exam: Dict[str, Any]
    model: Dict[str, Any]
    timings: Dict[str, float]
    device: str
    warnings: List[str] = field(default_factory=list)
    fused_by: Optional[str] = None
    ehr_used: bool = False
    noise_draws: int = 1
    images: Dict[str, sitk.Image] = field(default_factory=dict, repr=False)
    fused_segmentation: Optional[sitk.Image] = field(default=None, repr=False)
    fused_planes: List[str] = field(default_factory=list)
    segmentation_checks: Dict[str, List[Check]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The content of ``diagnosis.json`` (JSON-serialisable, no NaN)."""
        segs = {}
        for plane, img in self.segmentations.items():
            segs[plane] = {"file": segmentation_file_name(plane), "labelmap": labelmap_file_name(plane),
                           "size": list(img.GetSize()), "spacing": list(img.GetSpacing()),
                           "origin": list(img.GetOrigin()), "direction": list(img.GetDirection())}
        fused = None
        if self.fused_segmentation is not None:
            img = self.fused_segmentation
            fused = {"file": segmentation_file_name(FUSED), "labelmap": labelmap_file_name(FUSED),
                     "planes": list(self.fused_planes), "grid": f"{self.fused_planes[0]} series",
                     "size": list(img.GetSize()), "spacing": list(img.GetSpacing()),
                     "origin": list(img.GetOrigin()), "direction": list(img.GetDirection())}
        return {
            "format": RESULT_FORMAT, "version": RESULT_VERSION, "disclaimer": DISCLAIMER,
            "labels": [dict(lb) for lb in self.labels], "fused_by": self.fused_by, "ehr_used": self.ehr_used,
            "noise_draws": self.noise_draws, "segmentations": segs, "fused_segmentation": fused,
            "measures": [{k: _nan_to_none(v) for k, v in row.items()} for row in self.measures],
            "exam": self.exam, "model": self.model, "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "device": self.device, "warnings": list(self.warnings),
            "segmentation_checks": {p: [asdict(c) for c in checks] for p, checks in self.segmentation_checks.items()},
        }


# ------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _PassKey:
    """One backbone pass: which backbone, plane, timestep and preprocessing grid."""

    backbone: str
    plane: str
    timestep: int
    slices: int
    size: int


def noise_seed(seed: int, draw: int, plane: str, timestep: int) -> int:
    """The seed of the noise of one backbone pass: a function of the predictor's seed, the draw, the plane and the
    timestep only, so a result does not depend on the batch or on which other passes run."""
    return (int(seed) * 1_000_003 + draw * 10_007 + PLANES.index(plane) * 1_009 + int(timestep)) % (2**63 - 1)


def _series_summary(exam: Exam, plane: str) -> Optional[Dict[str, Any]]:
    s = exam.get(plane)
    if s is None:
        return None
    d = s.summary()
    d["origin"] = [round(float(v), 4) for v in s.origin]
    d["direction"] = [round(float(v), 6) for v in s.image.GetDirection()]
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class _NetworkOutputs:
    """What the networks gave for one batch, over the noise draws."""

    diag_probs: List[torch.Tensor] = field(default_factory=list)  #: per draw (B, K) calibrated probabilities
    raw_probs: List[torch.Tensor] = field(default_factory=list)  #: per draw (B, K) uncalibrated probabilities
    weights_sum: Optional[torch.Tensor] = None  #: (B, K, 3) plane weights summed over the draws
    fused_by: Optional[str] = None
    ehr_used: bool = False
    #: per plane, per exam (C, D, H, W) segmentation probabilities summed over the draws
    seg_sum: Dict[str, List[torch.Tensor]] = field(default_factory=dict)
    #: seconds spent in the heads (the rest of the network time is the backbones')
    head_seconds: Dict[str, float] = field(default_factory=lambda: {"diagnosis": 0.0, "segmentation": 0.0})


class _BatchProgress:
    """Reports a stage of one batch at a fraction of its phase (:data:`_PHASES`) on the batch's 0..1 progress, and
    raises :class:`CancelledError` when ``cancel`` is set."""

    def __init__(self, progress: ProgressFn, cancel: Optional[threading.Event]):
        self.progress = progress
        self.cancel = cancel

    def __call__(self, phase: str, within: float, stage: str) -> None:
        """``stage`` is at ``within`` (0..1) of ``phase``."""
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("prediction cancelled")
        i = [name for name, _ in _PHASES].index(phase)
        start, end = _PHASES[i][1], _PHASES[i + 1][1] if i + 1 < len(_PHASES) else 1.0
        self.progress(stage, start + min(1.0, within) * (end - start))


class Predictor:
    """Runs a model bundle on exams.

    Args:
        bundle: a ``.odbundle`` path, a registered model name, or ``None`` for the registry's default model.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: base seed of the noise draws (fixed, so results are reproducible).
        precision: ``fp32`` (default; the reference numbers) or ``bf16`` (networks under bfloat16 autocast:
            about 1.5-2x faster on CPUs with AVX512-BF16/AMX and on GPUs, probabilities differ by ~1e-2).
        channels_last: store the backbones channels-last (NDHWC; faster convolutions on some GPUs; same numbers).
    """

    def __init__(self, bundle: Union[PathLike, ModelBundle, None] = None, device: str = "auto", seed: int = 0,
                 precision: str = "fp32", channels_last: bool = False):
        check_precision(precision)
        start = time.perf_counter()
        if isinstance(bundle, ModelBundle):
            self.bundle = bundle
        else:
            from ..bundle.registry import resolve_model

            self.bundle = load_bundle(resolve_model(bundle))
        self.seed = int(seed)
        self.precision = precision
        self.schedule = CosineSchedule()
        meta = self.bundle.meta
        self.diag_meta: Optional[Dict[str, Any]] = meta.get("diagnosis")
        self.seg_meta: Dict[str, Dict[str, Any]] = dict(meta.get("segmentation") or {})
        self.backbones = {key: self.bundle.backbone(key) for key in meta["backbones"]}
        self.diagnosis_head = self.bundle.diagnosis_head() if self.diag_meta else None
        #: diagnosis from the planes' segmentation networks (:mod:`~OrthoDiffusionLib.model.tissue_diagnosis`)
        self.tissue_pooled = bool(self.diag_meta and self.diag_meta.get("kind") == TISSUE_POOLED)
        self.ehr_model = self.bundle.ehr_model() if self.diag_meta else None
        self.seg_heads = {plane: self.bundle.segmentation_head(plane) for plane in self.seg_meta}
        if channels_last:
            for net in self.backbones.values():
                net.to_channels_last_3d()
        self.device = resolve_device(device)
        self._move(self.device)
        self.load_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------------------------------------ helpers
    def _modules(self) -> List[torch.nn.Module]:
        mods: List[torch.nn.Module] = [*self.backbones.values(), *self.seg_heads.values()]
        mods += [m for m in (self.diagnosis_head, self.ehr_model) if m is not None]
        return mods

    def _move(self, device: torch.device) -> None:
        for m in self._modules():
            m.to(device)
        self.device = device

    @property
    def labels(self) -> List[Dict[str, str]]:
        return self.bundle.labels

    @property
    def anatomy(self) -> str:
        """The anatomy the model was trained on (the bundle's ``anatomy``; bundles without one are knee models)."""
        return str(self.bundle.meta.get("anatomy") or "knee")

    def _fusion_needs_all_planes(self) -> bool:
        """Whether the head's main fusion needs all of its planes (then a missing plane is fused by MPAE). A
        tissue-pooled head fills a missing plane's features with their training mean."""
        if self.tissue_pooled:
            return False
        return bool(getattr(self.diagnosis_head.fusion, "requires_all_planes", True))

    def _fusion_name(self) -> str:
        return TISSUE_POOLED if self.tissue_pooled else self.diagnosis_head.fusion.name

    def _needs_all_diag_planes(self) -> bool:
        """Whether the model cannot predict at all with a plane missing (main fusion needs all, no MPAE)."""
        return self._fusion_needs_all_planes() and getattr(self.diagnosis_head, "weights_module", None) is None

    def _plan(self, exam: Exam, diagnosis: bool, segmentation: Sequence[str], has_ehr: bool
              ) -> Tuple[List[str], List[str], List[str]]:
        """(diagnosis planes, segmentation planes, warnings) for an exam, segmenting the planes of ``segmentation``
        that the model segments; raises MissingPlaneError when the model cannot run on it."""
        present = exam.planes_present()
        where = exam.source or "exam"
        notes: List[str] = []
        diag_planes: List[str] = []
        if diagnosis and self.diag_meta:
            wanted = [p for p in PLANES if p in self.diag_meta["planes"]]
            diag_planes = [p for p in wanted if p in present]
            missing = [p for p in wanted if p not in present]
            if missing and self._needs_all_diag_planes():
                raise MissingPlaneError(f"the model's {self._fusion_name()} fusion needs all of "
                                        f"{', '.join(wanted)}; the exam lacks the {', '.join(missing)} series", where)
            if not diag_planes:
                raise MissingPlaneError(f"the exam has none of the planes the diagnosis model uses "
                                        f"({', '.join(wanted)})", where)
            if missing:
                by = "MPAE" if self._fusion_needs_all_planes() else self._fusion_name()
                filled = " (the missing plane's features set to their training mean)" if self.tissue_pooled else ""
                notes.append(f"{' and '.join(missing)} plane missing: diagnosis fused by {by} over "
                             f"{'+'.join(diag_planes)}{filled}")
        elif diagnosis and not self.diag_meta:
            notes.append("the model has no diagnosis head: no probabilities")
        seg_planes: List[str] = []
        for plane in (p for p in PLANES if p in segmentation and p in self.seg_meta):
            if plane in present:
                seg_planes.append(plane)
            else:
                notes.append(f"no {plane} series: no {plane} segmentation")
        if not diag_planes and not seg_planes:
            raise MissingPlaneError("nothing to run: the exam has no plane that the model's heads use "
                                    f"(exam planes: {', '.join(present) or 'none'})", where)
        if has_ehr and diag_planes:
            if self.ehr_model is None:
                notes.append("EHR given, but the model has no EHR branch: EHR ignored")
            elif len(diag_planes) < len(self.diag_meta["planes"]):
                notes.append("EHR given, but EHR late fusion needs all planes: EHR ignored")
        notes += list(getattr(exam, "warnings", None) or [])  # found while loading (skipped files, mixed patients)
        needed: Dict[str, int] = {}
        for key in self._passes(diag_planes, seg_planes):
            needed[key.plane] = max(needed.get(key.plane, 0), key.slices)
        notes += [note for plane, k in needed.items() for note in coverage_warnings(exam.get(plane), plane, k)]
        return diag_planes, seg_planes, notes

    def _passes(self, diag_planes: Sequence[str], seg_planes: Sequence[str]) -> Dict[_PassKey, List[str]]:
        passes: Dict[_PassKey, List[str]] = {}

        def add(key: _PassKey, taps: Sequence[str]) -> None:
            have = passes.setdefault(key, [])
            have.extend(t for t in taps if t not in have)

        for plane in diag_planes:
            add(self._diag_pass(plane), self._diag_taps(plane))
        for plane in seg_planes:
            if self._whole_series(plane):
                continue  # segmented in windows over the whole series (_segment_whole_series)
            add(self._seg_pass(plane), list(self.seg_heads[plane].required_taps))
        # plane by plane (the progress shows one plane after the other); the noise does not depend on the order
        return dict(sorted(passes.items(), key=lambda kv: (PLANES.index(kv[0].plane), kv[0].timestep)))

    # ------------------------------------------------------------------------------------------------ predict
    def predict(self, exam: Exam, ehr: Optional[Mapping[str, Any]] = None, *, diagnosis: bool = True,
                segmentation: bool = True, noise_draws: int = 1, progress: Optional[ProgressFn] = None,
                cancel: Optional[threading.Event] = None, measures: bool = True,
                fuse_segmentations: bool = False, segmentation_planes: Optional[Sequence[str]] = None
                ) -> PredictionResult:
        """Predict one exam (see the module docstring). ``ehr``: an EHR record (:mod:`OrthoDiffusionLib.model.ehr`);
        ``measures=False`` skips the structure volumes / cartilage thickness (``result.measures`` stays empty);
        ``fuse_segmentations=True`` also gives the fused labelmap of the segmented planes
        (``result.fused_segmentation``); ``segmentation_planes`` segments only these planes (default: every plane
        the model segments)."""
        return self.predict_many([exam], [ehr], diagnosis=diagnosis, segmentation=segmentation,
                                 noise_draws=noise_draws, progress=progress, cancel=cancel, measures=measures,
                                 fuse_segmentations=fuse_segmentations, segmentation_planes=segmentation_planes)[0]

    def predict_many(self, exams: Sequence[Exam], ehr: Optional[Sequence[Optional[Mapping[str, Any]]]] = None, *,
                     diagnosis: bool = True, segmentation: bool = True, noise_draws: int = 1,
                     progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                     batch_size: int = 8, measures: bool = True, fuse_segmentations: bool = False,
                     segmentation_planes: Optional[Sequence[str]] = None) -> List[PredictionResult]:
        """Predict several exams with the loaded model, ``batch_size`` exams per backbone pass (exams with the same
        planes are batched together). Returns one result per exam, in order. ``segmentation_planes``: segment only
        these planes (default: every plane the model segments; a chosen plane the model does not segment is named
        in the warnings)."""
        if noise_draws < 1:
            raise ValueError(f"noise_draws must be >= 1, got {noise_draws}")
        seg_wanted, seg_notes = self._segmentation_choice(segmentation, segmentation_planes)
        if not diagnosis and not seg_wanted:
            raise ValueError("nothing to do: diagnosis and segmentation are both off")
        exams = list(exams)
        records = list(ehr) if ehr is not None else [None] * len(exams)
        if len(records) != len(exams):
            raise ValueError(f"{len(records)} EHR records for {len(exams)} exams")
        plans = [self._plan(e, diagnosis, seg_wanted, r is not None) for e, r in zip(exams, records)]
        for _, _, notes in plans:
            notes[:0] = seg_notes
        groups: Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], List[int]] = {}
        for i, (dp, sp, _) in enumerate(plans):
            groups.setdefault((tuple(dp), tuple(sp)), []).append(i)
        batches = [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]
        results: List[Optional[PredictionResult]] = [None] * len(exams)
        for b, idx in enumerate(batches):
            def sub_progress(stage: str, fraction: float, b=b) -> None:
                if progress is not None:
                    progress(stage, (b + fraction) / len(batches))

            dp, sp, _ = plans[idx[0]]
            out = self._run_with_fallback([exams[i] for i in idx], [records[i] for i in idx], dp, sp, noise_draws,
                                          sub_progress, cancel, measures, fuse_segmentations)
            for i, res in zip(idx, out):
                res.warnings[:0] = plans[i][2]
                results[i] = res
        if progress is not None:
            progress("done", 1.0)
        return [r for r in results if r is not None]

    def _segmentation_choice(self, segmentation: bool, chosen: Optional[Sequence[str]]
                             ) -> Tuple[Tuple[str, ...], List[str]]:
        """(planes to segment, warnings): none without ``segmentation``, else the ``chosen`` planes (every plane
        when None); the warnings name chosen planes the model does not segment. Raises ValueError on an unknown
        plane name."""
        if not segmentation:
            return (), []
        if chosen is None:
            return tuple(PLANES), []
        wanted = planes_in_order(chosen, "segmentation plane")
        notes = [f"the model does not segment the {p} plane: no {p} segmentation" for p in wanted
                 if p not in self.seg_meta]
        return wanted, notes

    def _run_with_fallback(self, exams, records, diag_planes, seg_planes, draws, progress, cancel, measures=True,
                           fuse=False) -> List[PredictionResult]:
        try:
            return self._run_batch(exams, records, diag_planes, seg_planes, draws, progress, cancel, measures, fuse)
        except torch.cuda.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            note = "CUDA ran out of memory: fell back to the CPU (slower)"
            warnings.warn(note)
            torch.cuda.empty_cache()
            self._move(torch.device("cpu"))
            out = self._run_batch(exams, records, diag_planes, seg_planes, draws, progress, cancel, measures, fuse)
            for r in out:
                r.warnings.append(note)
            return out

    def _run_batch(self, exams: Sequence[Exam], records: Sequence[Optional[Mapping[str, Any]]],
                   diag_planes: Sequence[str], seg_planes: Sequence[str], draws: int,
                   progress: ProgressFn, cancel: Optional[threading.Event], measures: bool = True,
                   fuse: bool = False) -> List[PredictionResult]:
        """Predict a batch of exams with the same planes: preprocess, run the networks per noise draw, resample the
        segmentations onto the original series, measure, and assemble one result per exam."""
        report = _BatchProgress(progress, cancel)
        n = len(exams)
        timings: Dict[str, float] = {"load_model": self.load_seconds}
        clock = t0 = time.perf_counter()
        passes = self._passes(diag_planes, seg_planes)
        whole = [p for p in seg_planes if self._whole_series(p)]
        prepped = self._preprocess_batch(exams, passes, whole, report)
        timings["preprocess"] = time.perf_counter() - clock
        clock = time.perf_counter()
        nets = self._run_networks(exams, records, passes, prepped, diag_planes, seg_planes, whole, draws, report)
        timings["backbone"] = time.perf_counter() - clock - sum(nets.head_seconds.values())
        timings.update(nets.head_seconds)
        clock = time.perf_counter()
        segs, fused, fused_planes = self._resample_segmentations(prepped, nets.seg_sum, seg_planes, n, draws, fuse,
                                                                 report)
        timings["resample"] = time.perf_counter() - clock
        clock = time.perf_counter()
        measure_rows: List[List[Dict[str, Any]]] = [[] for _ in range(n)]
        if seg_planes and measures:
            measure_rows = self._measure_batch(segs, fused, fused_planes, report)
        timings["measures"] = time.perf_counter() - clock
        per_exam = {k: v / n for k, v in timings.items() if k != "load_model"}
        per_exam["total"] = (time.perf_counter() - t0) / n
        label_rows = self._label_rows(nets, n, draws)
        results = []
        for i, exam in enumerate(exams):
            results.append(PredictionResult(
                labels=label_rows[i], segmentations=segs[i], measures=measure_rows[i],
                exam={"source": exam.source, "planes": {p: _series_summary(exam, p) for p in PLANES},
                      "choices": list(exam.choices), "diagnosis_planes": list(diag_planes),
                      "segmentation_planes": list(seg_planes)},
                model=self.bundle.summary(), timings={"load_model": self.load_seconds, **per_exam},
                device=str(self.device), warnings=[], fused_by=nets.fused_by if diag_planes else None,
                ehr_used=bool(nets.ehr_used and records[i] is not None), noise_draws=draws,
                images={p: exam.get(p).image for p in exam.planes_present()},
                fused_segmentation=fused[i], fused_planes=fused_planes))
            if measures and self.anatomy == "knee":
                self._check_anatomy(results[-1])
            if fuse and not fused_planes:
                results[-1].warnings.append(
                    f"no fused segmentation: it needs two segmented planes, this exam has "
                    f"{', '.join(seg_planes) if seg_planes else 'none'}")
        return results

    def _preprocess_batch(self, exams: Sequence[Exam], passes: Mapping[_PassKey, List[str]], whole: Sequence[str],
                          report: "_BatchProgress") -> Dict[Tuple[str, int, int], List[PreprocessedSeries]]:
        """``{(plane, slices, size): one preprocessed series per exam}``: each plane once per preprocessing grid of
        the backbone passes, and the whole series (key slices 0) of the planes in ``whole`` (segmented in windows)."""
        grids = sorted({(k.plane, k.slices, k.size) for k in passes}, key=lambda g: (PLANES.index(g[0]), g[1:]))
        prepped: Dict[Tuple[str, int, int], List[PreprocessedSeries]] = {}
        for g, (plane, slices, size) in enumerate(grids):
            report("preprocess", g / max(1, len(grids)), f"{plane}: preprocessing")
            grid = self._grid_of(plane, slices, size)
            prepped[(plane, slices, size)] = [preprocess_series(e.get(plane), slices=slices, size=size, **grid)
                                             for e in exams]
        for plane in whole:
            report("preprocess", 1.0, f"{plane}: preprocessing the whole series")
            prep = self.seg_meta[plane]["preprocessing"]
            prepped[(plane, 0, int(prep["size"]))] = [
                preprocess_series(e.get(plane), slices=None, size=int(prep["size"]), **model_grid(prep))
                for e in exams]
        return prepped

    def _run_networks(self, exams: Sequence[Exam], records: Sequence[Optional[Mapping[str, Any]]],
                      passes: Mapping[_PassKey, List[str]],
                      prepped: Mapping[Tuple[str, int, int], List[PreprocessedSeries]], diag_planes: Sequence[str],
                      seg_planes: Sequence[str], whole: Sequence[str], draws: int,
                      report: "_BatchProgress") -> "_NetworkOutputs":
        """Every noise draw: the backbone passes, then the diagnosis head over their taps and each plane's
        segmentation head (or its whole-series windows); the heads' time is in ``head_seconds``."""
        n = len(exams)
        nets = _NetworkOutputs()
        total_steps = draws * (len(passes) + (1 if diag_planes else 0) + len(seg_planes))
        step = 0

        def network_step(stage: str) -> None:
            nonlocal step
            report("networks", step / max(1, total_steps), stage)
            step += 1

        with torch.inference_mode(), precision_autocast(self.device, self.precision):
            for draw in range(draws):
                of_draws = f" draw {draw + 1}/{draws}" if draws > 1 else ""
                taps_of: Dict[_PassKey, Dict[str, torch.Tensor]] = {}
                for key, tap_names in passes.items():
                    network_step(f"{key.plane}: backbone t={key.timestep}{of_draws}")
                    taps_of[key] = self._backbone_pass(key, tap_names, prepped[(key.plane, key.slices, key.size)],
                                                       draw, n)
                hc = time.perf_counter()
                if diag_planes:
                    network_step(f"fusion{of_draws}")
                    self._diagnose(taps_of, diag_planes, records, n, nets)
                nets.head_seconds["diagnosis"] += time.perf_counter() - hc
                hc = time.perf_counter()
                for plane in seg_planes:
                    network_step(f"{plane}: segmentation{of_draws}")
                    if plane in whole:
                        probs_list = self._segment_whole_series(plane, prepped[(plane, 0, self._seg_size(plane))],
                                                                draw)
                    else:
                        probs_list = list(self._segmentation_probabilities(plane, taps_of[self._seg_pass(plane)]))
                    nets.seg_sum[plane] = (probs_list if plane not in nets.seg_sum
                                           else [a + b for a, b in zip(nets.seg_sum[plane], probs_list)])
                nets.head_seconds["segmentation"] += time.perf_counter() - hc
                del taps_of
        return nets

    def _backbone_pass(self, key: _PassKey, tap_names: Sequence[str], vols: Sequence[PreprocessedSeries], draw: int,
                       n: int) -> Dict[str, torch.Tensor]:
        """The taps ``tap_names`` of one backbone pass over the batch: each exam's volume noised to ``key.timestep``
        with its own noise of this draw (:func:`noise_seed`)."""
        dev = self.device
        x0 = torch.stack([torch.from_numpy(v.volume) for v in vols])[:, None].to(dev)
        g_seed = noise_seed(self.seed, draw, key.plane, key.timestep)
        noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=torch.Generator().manual_seed(g_seed))
                           for _ in range(n)]).to(dev)
        t = self.schedule.as_timesteps(key.timestep, n, dev)
        x_t = self.schedule.q_sample(x0, t, noise)
        return self.backbones[key.backbone].encode(x_t, t, tap_names)

    def _diag_pass(self, plane: str) -> _PassKey:
        """The backbone pass whose taps the diagnosis head reads on ``plane`` (for a tissue-pooled diagnosis: the
        pass of the plane's segmentation network on the diagnosis input)."""
        p = self.diag_meta["planes"][plane]
        prep = self.diag_meta["preprocessing"]
        return _PassKey(p["backbone"], plane, int(p["timestep"]), int(prep["slices"]), int(prep["size"]))

    def _diag_taps(self, plane: str) -> List[str]:
        """The taps the diagnosis reads on ``plane``: its block, or every tap of the plane's segmentation head."""
        if self.tissue_pooled:
            return list(self.seg_heads[self.diag_meta["planes"][plane]["segmentation"]].required_taps)
        return [self.diag_meta["planes"][plane]["block"]]

    def _seg_pass(self, plane: str) -> _PassKey:
        """The backbone pass whose taps ``plane``'s segmentation head reads (heads that do not segment in windows)."""
        s = self.seg_meta[plane]
        prep = s["preprocessing"]
        return _PassKey(s["backbone"], plane, int(s["timestep"]), int(prep["slices"]), int(prep["size"]))

    def _diagnose(self, taps_of: Mapping[_PassKey, Mapping[str, torch.Tensor]], diag_planes: Sequence[str],
                  records: Sequence[Optional[Mapping[str, Any]]], n: int, nets: "_NetworkOutputs") -> None:
        """One draw of the diagnosis head (with EHR late fusion for the exams that have a record, when the model
        can): its calibrated and uncalibrated probabilities and plane weights are added to ``nets``."""
        if self.tissue_pooled:
            self._diagnose_from_tissues(taps_of, diag_planes, nets)
            return
        dev = self.device
        taps = {plane: taps_of[self._diag_pass(plane)][self.diag_meta["planes"][plane]["block"]]
                for plane in diag_planes}
        out = self.diagnosis_head(taps)
        nets.fused_by = out.fused_by
        temps = self.diagnosis_head.calibration.temperature.to(out.logits.dtype)
        raw_logits = out.logits * temps
        cal = out.probabilities
        raw = torch.sigmoid(raw_logits)
        ehr_rows = self._ehr_rows(records, diag_planes)
        if ehr_rows is not None:
            feats = self.diagnosis_head.pooled(taps)
            mri = torch.cat([feats[p] for p in self.diagnosis_head.planes], dim=1)
            batch = self.ehr_model.encoder.encode([r or {} for r in records])
            z = self.ehr_model(mri, batch)
            use = ehr_rows.to(dev)[:, None]
            raw = torch.where(use, torch.sigmoid(z), raw)
            cal = torch.where(use, torch.sigmoid(z), cal)
            nets.ehr_used = True
        w = self._weights_in_plane_order(out.plane_weights, diag_planes, n, cal.shape[1])
        nets.weights_sum = w if nets.weights_sum is None else nets.weights_sum + w
        nets.diag_probs.append(cal.float().cpu())
        nets.raw_probs.append(raw.float().cpu())

    def _diagnose_from_tissues(self, taps_of: Mapping[_PassKey, Mapping[str, torch.Tensor]],
                               diag_planes: Sequence[str], nets: "_NetworkOutputs") -> None:
        """One draw of a tissue-pooled diagnosis: each plane's segmentation head on the diagnosis input gives its
        tissue-pooled features (:func:`~OrthoDiffusionLib.model.tissue_diagnosis.tissue_features`, from the unmasked
        logits as in training); the per-label models give the probabilities and plane weights."""
        features = {}
        for plane in diag_planes:
            key = self._diag_pass(plane)
            head = self.seg_heads[self.diag_meta["planes"][plane]["segmentation"]]
            f, logits = head_features_and_logits(head, taps_of[key], (key.slices, key.size, key.size))
            features[plane] = tissue_features(logits, f)
        logits, calibrated, weights = self.diagnosis_head(features)
        nets.fused_by = TISSUE_POOLED
        w = weights.float().cpu()
        nets.weights_sum = w if nets.weights_sum is None else nets.weights_sum + w
        nets.diag_probs.append(calibrated.float().cpu())
        nets.raw_probs.append(torch.sigmoid(logits).float().cpu())

    def _resample_segmentations(self, prepped: Mapping[Tuple[str, int, int], List[PreprocessedSeries]],
                                seg_sum: Mapping[str, List[torch.Tensor]], seg_planes: Sequence[str], n: int,
                                draws: int, fuse: bool, report: "_BatchProgress"
                                ) -> Tuple[List[Dict[str, sitk.Image]], List[Optional[sitk.Image]], List[str]]:
        """(per exam ``{plane: labelmap}`` on the original series, per exam fused labelmap or None, fused planes):
        each plane's mean probabilities over the draws (for a knee model with each bone kept to its largest piece,
        no cartilage off its bone and the tibial cartilage and menisci named by their side of the notch,
        :func:`~OrthoDiffusionLib.segmentation.postprocess.postprocess_knee`), resampled linearly per
        label-table value onto its series and the most probable kept
        (:meth:`~.preprocess.PreprocessedSeries.labels_on_original`), bones kept to one piece once more on that grid;
        with ``fuse`` and two or more planes, the fused labelmap of those probabilities."""
        from ..segmentation.postprocess import postprocess_knee

        segs: List[Dict[str, sitk.Image]] = [{} for _ in range(n)]
        mean: Dict[str, List[torch.Tensor]] = {}
        for j, plane in enumerate(seg_planes):
            values = self.seg_meta[plane]["class_values"]
            series_prep = self._prepped_for_segmentation(prepped, plane)
            mean[plane] = []
            for i in range(n):
                report("resample", (j * n + i) / (len(seg_planes) * n), f"{plane}: resampling segmentation")
                probs = (seg_sum[plane][i] / draws).numpy()
                if self.anatomy == "knee":
                    probs = postprocess_knee(probs, values, series_prep[i].reference,
                                             self.seg_meta[plane].get("context_tissues") or ())
                mean[plane].append(torch.from_numpy(probs))
                segs[i][plane] = self._bones_in_one_piece(series_prep[i].labels_on_original(probs, values))
        fused: List[Optional[sitk.Image]] = [None] * n
        fused_planes = list(seg_planes) if fuse and len(seg_planes) >= 2 else []
        for i in range(n if fused_planes else 0):
            report("resample", 1.0, "fusing segmentations")
            fused[i] = self._bones_in_one_piece(self._fused_segmentation(
                {plane: mean[plane][i] for plane in fused_planes},
                {plane: self._prepped_for_segmentation(prepped, plane)[i] for plane in fused_planes}))
        return segs, fused, fused_planes

    def _bones_in_one_piece(self, labelmap: sitk.Image) -> sitk.Image:
        """For a knee model, ``labelmap`` with each bone kept to its largest piece on the series' own grid
        (:func:`~OrthoDiffusionLib.segmentation.postprocess.keep_largest_bone_pieces`); otherwise as it is."""
        from ..segmentation.postprocess import keep_largest_bone_pieces

        return keep_largest_bone_pieces(labelmap) if self.anatomy == "knee" else labelmap

    def _measure_batch(self, segs: Sequence[Mapping[str, sitk.Image]], fused: Sequence[Optional[sitk.Image]],
                       fused_planes: Sequence[str], report: "_BatchProgress") -> List[List[Dict[str, Any]]]:
        """Per exam, the measure rows of each segmented plane and of the fused labelmap (when there is one)."""
        n = len(segs)
        rows: List[List[Dict[str, Any]]] = [[] for _ in range(n)]
        for i in range(n):
            for j, (plane, img) in enumerate(segs[i].items()):
                report("measures", (i * len(segs[i]) + j) / (n * len(segs[i])), f"{plane}: measures")
                rows[i] += self.plane_measures(plane, img)
            if fused[i] is not None:
                report("measures", (i + 1) / n, "fused segmentation: measures")
                rows[i] += self.plane_measures("fused", fused[i], planes=fused_planes)
        return rows

    def _label_rows(self, nets: "_NetworkOutputs", n: int, draws: int) -> List[List[Dict[str, Any]]]:
        """Per exam, one row per diagnosis label (probabilities averaged over the draws, their uncertainty, plane
        weights normalised to sum 1); empty lists without diagnosis."""
        if not nets.diag_probs:
            return [[] for _ in range(n)]
        summary = aggregate_noise_draws(torch.stack(nets.diag_probs))
        raw_mean = torch.stack(nets.raw_probs).double().mean(0).numpy()
        out = []
        for i in range(n):
            w = (nets.weights_sum[i] / draws).numpy()
            rows = []
            for k, lab in enumerate(self.labels):
                pw = {p: float(w[k, j]) for j, p in enumerate(PLANES)}
                total = sum(pw.values())
                pw = {p: v / total for p, v in pw.items()}
                rows.append({"key": lab["key"], "name": lab["name"], "probability": float(raw_mean[i, k]),
                             "calibrated_probability": float(summary.mean[i, k]),
                             "uncertainty": float(summary.std[i, k]), "plane_weights": pw})
            out.append(rows)
        return out

    def _prepped_for_segmentation(self, prepped: Mapping[Tuple[str, int, int], List[PreprocessedSeries]],
                                  plane: str) -> List[PreprocessedSeries]:
        """The preprocessed series (one per exam) on the grid of ``plane``'s segmentation head (the whole series,
        key slices 0, for a head that segments in windows)."""
        prep = self.seg_meta[plane]["preprocessing"]
        return prepped[(plane, 0 if self._whole_series(plane) else int(prep["slices"]), int(prep["size"]))]

    def _whole_series(self, plane: str) -> bool:
        """Whether ``plane``'s head segments the whole series in windows: heads of models with a physical grid
        (``slice_mm`` in their preprocessing); older resize-only models segment their 16 central slices."""
        return bool(model_grid(self.seg_meta[plane]["preprocessing"]))

    def _seg_size(self, plane: str) -> int:
        return int(self.seg_meta[plane]["preprocessing"]["size"])

    def _grid_of(self, plane: str, slices: int, size: int) -> Dict[str, float]:
        """The physical grid of the head(s) that read ``plane`` at (slices, size) ({} for resize-only models)."""
        sections = [self.diag_meta["preprocessing"]] if self.diag_meta and plane in self.diag_meta["planes"] else []
        if plane in self.seg_meta:
            sections.append(self.seg_meta[plane]["preprocessing"])
        for prep in sections:
            if int(prep["slices"]) == slices and int(prep["size"]) == size:
                return model_grid(prep)
        return {}

    def _segment_whole_series(self, plane: str, series: Sequence[PreprocessedSeries], draw: int
                              ) -> List[torch.Tensor]:
        """Per exam (C, D, H, W) CPU probabilities over the whole series, from overlapping 16-slice windows."""
        from .windows import segment_series_in_windows

        s = self.seg_meta[plane]
        window = int(s["preprocessing"]["slices"])
        backbone, head = self.backbones[s["backbone"]], self.seg_heads[plane]
        timestep = int(s["timestep"])
        gen = torch.Generator().manual_seed(noise_seed(self.seed, draw, plane, timestep))
        allowed = self._allowed_classes(plane, self.device)

        def probabilities(slabs: torch.Tensor) -> torch.Tensor:
            x0 = slabs.to(self.device)
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            t = self.schedule.as_timesteps(timestep, x0.shape[0], self.device)
            logits = head(backbone.encode(self.schedule.q_sample(x0, t, noise), t, head.required_taps),
                          output_size=tuple(x0.shape[2:]))
            logits = logits.masked_fill(~allowed[None, :, None, None, None], float("-inf"))
            return torch.softmax(logits.float(), dim=1).cpu()

        return [segment_series_in_windows(torch.from_numpy(p.volume), probabilities, window=window) for p in series]

    def _fused_segmentation(self, probs: Mapping[str, torch.Tensor], prep: Mapping[str, PreprocessedSeries]
                            ) -> sitk.Image:
        """One uint8 labelmap fused from several planes' segmentation probabilities.

        Args:
            probs: ``{plane: (C_plane, slices, size, size)}`` class probabilities on that plane's preprocessed grid
                (channel ``c`` is label value ``seg_meta[plane]["class_values"][c]``; channels of one value are
                summed).
            prep: ``{plane: PreprocessedSeries}`` of those grids.

        Returns:
            Labelmap (label-table values) on the original grid of the first plane (the planes come in ``PLANES``
            order, so sagittal when present). Each plane's vote for a structure is weighted by its validation Dice
            of that structure (:func:`~OrthoDiffusionLib.segmentation.io.fusion_weights`; equal for a bundle that
            records none).
        """
        from ..segmentation.io import fuse_plane_segmentations, fusion_weights, validation_dice
        from ..segmentation.postprocess import probabilities_by_value

        n_values = 1 + max(max(int(v) for v in self.seg_meta[p]["class_values"]) for p in probs)
        maps: Dict[str, List[Optional[sitk.Image]]] = {}
        for plane, p in probs.items():
            by_value: List[Optional[sitk.Image]] = [None] * n_values
            summed = probabilities_by_value(p.float().numpy(), self.seg_meta[plane]["class_values"])
            for v, arr in summed.items():  # classes sharing a value (context tissues: background) are summed
                by_value[v] = prep[plane].as_image(arr)
            maps[plane] = by_value
        dice = {plane: validation_dice(self.seg_meta[plane]) for plane in probs}
        return fuse_plane_segmentations(maps, prep[next(iter(probs))].original, fusion_weights(dice, n_values))

    def _weights_in_plane_order(self, weights: Optional[torch.Tensor], diag_planes: Sequence[str], n: int,
                                k: int) -> torch.Tensor:
        """(B, K, 3) CPU plane weights in ``PLANES`` order (0 for planes the head lacks) from the head's
        ``(B, K, len(head.planes))`` MPAE weights, or equal shares of the present planes without MPAE."""
        full = torch.zeros(n, k, len(PLANES))
        if weights is None:
            for p in diag_planes:
                full[..., PLANES.index(p)] = 1.0 / len(diag_planes)
        else:
            for j, p in enumerate(self.diagnosis_head.planes):
                full[..., PLANES.index(p)] = weights[..., j].detach().float().cpu()
        return full

    def _ehr_rows(self, records: Sequence[Optional[Mapping[str, Any]]], diag_planes: Sequence[str]
                  ) -> Optional[torch.Tensor]:
        """(B,) bool: which exams use EHR late fusion (None when none can)."""
        if self.ehr_model is None or len(diag_planes) < len(self.diag_meta["planes"]):
            return None
        rows = torch.tensor([r is not None for r in records])
        return rows if bool(rows.any()) else None

    def _segmentation_probabilities(self, plane: str, taps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, C, slices, size, size) float32 CPU class probabilities of ``plane``'s segmentation head on its taps,
        with the classes the plane cannot have masked out."""
        prep = self.seg_meta[plane]["preprocessing"]
        shape = (int(prep["slices"]), int(prep["size"]), int(prep["size"]))
        logits = self.seg_heads[plane](taps, output_size=shape)
        logits = logits.masked_fill(~self._allowed_classes(plane, logits.device)[None, :, None, None, None],
                                    float("-inf"))
        return torch.softmax(logits.float(), dim=1).cpu()

    def _check_anatomy(self, result: PredictionResult) -> None:
        """Run the plausibility checks on each segmented plane of ``result``; warn about the failing ones."""
        for plane, labelmap in result.segmentations.items():
            checks = knee_plausibility(labelmap, self.seg_meta[plane]["structures"])
            result.segmentation_checks[plane] = checks
            failed = [c for c in checks if not c.passed]
            if failed:
                listed = "; ".join(f"{c.name}: {c.detail}" for c in failed)
                result.warnings.append(f"the {plane} segmentation fails anatomical checks ({listed}): "
                                       "review it before using its volumes")

    def plane_measures(self, plane: str, labelmap: sitk.Image, planes: Optional[Sequence[str]] = None
                       ) -> List[Dict[str, Any]]:
        """Rows ``plane, value, key, name, volume_ml, mean_thickness_mm`` of the structures ``plane``'s head
        segments, measured on ``labelmap`` (that plane's segmentation on its original grid). For a fused labelmap
        (``plane="fused"``) give the fused ``planes``: the structures any of their heads segments."""
        from ..segmentation.measures import measure_structures

        structures = label_tables.structure_by_key()
        wanted = {structures[k].value: structures[k] for p in (planes or [plane])
                  for k in self.seg_meta[p]["structures"] if p in structures[k].planes}
        rows = measure_structures(labelmap, structures=[wanted[v] for v in sorted(wanted)])
        return [{"plane": plane, **r.as_dict()} for r in rows]

    def _allowed_classes(self, plane: str, device: torch.device) -> torch.Tensor:
        """(C,) bool: output classes that may be predicted on ``plane`` (background + the plane's structures)."""
        s = self.seg_meta[plane]
        allowed_values = {0} | {st.value for st in label_tables.knee_structures(plane) if st.key in s["structures"]}
        return torch.tensor([v in allowed_values for v in s["class_values"]], device=device)



# ---------------------------------------------------------------------------------------------------- outputs
#: Share of the progress bar given to the prediction when its outputs are written afterwards.
_PREDICT_SHARE = 0.95


def predict_and_write(predictor: Predictor, exam: Exam, out_dir: PathLike, ehr: Optional[Mapping[str, Any]] = None,
                      *, progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                      overwrite: bool = False, claim: Optional["OutputFolderClaim"] = None,
                      **options: Any) -> PredictionResult:
    """Predict one exam (``options``: :meth:`Predictor.predict`'s ``diagnosis``, ``segmentation``, ``noise_draws``)
    and write its outputs with :func:`write_outputs` (into ``claim`` when the caller claimed the folder before).
    Progress: the prediction's stages on 0..0.95, then ``("writing outputs", 0.95)`` and ``("done", 1.0)`` once the
    folder is in place."""
    def predicting(stage: str, fraction: float) -> None:
        if progress is not None and stage != "done":
            progress(stage, _PREDICT_SHARE * fraction)

    result = predictor.predict(exam, ehr, progress=predicting, cancel=cancel, **options)
    if cancel is not None and cancel.is_set():
        raise CancelledError("prediction cancelled")
    if progress is not None:
        progress("writing outputs", _PREDICT_SHARE)
    write_outputs(result, out_dir, overwrite=overwrite, claim=claim)
    if progress is not None:
        progress("done", 1.0)
    return result


MEASURE_COLUMNS = ("plane", "value", "key", "name", "volume_ml", "mean_thickness_mm")


def _write_measures_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MEASURE_COLUMNS)
        for r in rows:
            thick = _nan_to_none(r.get("mean_thickness_mm"))
            writer.writerow([r["plane"], r["value"], r["key"], r["name"], f"{r['volume_ml']:.4f}",
                             "" if thick is None else f"{thick:.4f}"])


def write_outputs(result: PredictionResult, out_dir: PathLike, overwrite: bool = False,
                  claim: Optional["OutputFolderClaim"] = None) -> Path:
    """Write every output of ``result`` into ``out_dir`` atomically: everything goes into a temporary folder beside
    it, which is renamed onto ``out_dir`` only when all files were written (an error leaves nothing behind).

    The files are those of :mod:`~OrthoDiffusionLib.inference.result_folder` (the fused segmentation only when the
    result has one) and the marker ``.orthodiffusion-output.json``. The folder is claimed with
    :func:`~OrthoDiffusionLib.output_folder.claim_output_folder` (unless ``claim`` is one the caller made before any
    work): it may not overlap the exam's inputs, and an existing non-empty ``out_dir`` is refused unless
    ``overwrite`` and it is an earlier result of this tool holding nothing else.
    """
    import json

    from ..output_folder import claim_output_folder
    from .report import write_report
    from ..segmentation.io import write_labelmap_nifti, write_seg_nrrd

    if claim is None:
        planes = (result.exam or {}).get("planes") or {}
        inputs = [(result.exam or {}).get("source")] + [p.get("source") for p in planes.values() if p]
        claim = claim_output_folder(out_dir, overwrite=overwrite, inputs=inputs)
    tmp = claim.partial
    try:
        data = result.to_json()
        (tmp / DIAGNOSIS_FILE).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        for plane, img in result.segmentations.items():
            write_seg_nrrd(img, tmp / segmentation_file_name(plane), plane=plane)
            write_labelmap_nifti(img, tmp / labelmap_file_name(plane))
        if result.fused_segmentation is not None:  # two or more planes: every structure of the table
            write_seg_nrrd(result.fused_segmentation, tmp / segmentation_file_name(FUSED))
            write_labelmap_nifti(result.fused_segmentation, tmp / labelmap_file_name(FUSED))
        _write_measures_csv(result.measures, tmp / MEASURES_FILE)
        write_report(result, tmp / REPORT_FILE)
        return claim.commit()
    except BaseException:
        claim.abort()
        raise
