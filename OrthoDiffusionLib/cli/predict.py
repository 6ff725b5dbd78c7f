"""``orthodiffusion predict``: run a model bundle on one exam and write its result folder.

    orthodiffusion predict --sagittal P [--coronal P] [--axial P] | --study DIR  --out DIR
        [--model BUNDLE|NAME] [--device auto|cpu|cuda] [--precision fp32|bf16] [--ehr FILE.json]
        [--no-segmentation | --segmentation-planes PLANE,...] [--fuse-segmentations] [--no-diagnosis]
        [--noise-draws K] [--seed S] [--json] [--progress json|bar|none] [--overwrite] [--allow-anatomy-mismatch]
        [--allow-mixed-patients] [--series-uid UID ...] [--echo N]

The options shared with ``orthodiffusion demo`` (:mod:`.demo`) are :func:`add_run_arguments`. ``--out`` is claimed
before any work (:mod:`OrthoDiffusionLib.output_folder`): it may not overlap an input, a second run into it is refused
while the first runs, and an existing non-empty ``--out`` is refused unless ``--overwrite`` and it is an earlier
result of this tool. Outputs are written into a temporary folder beside ``--out`` and renamed onto it only on
success; an error, Ctrl-C or SIGTERM leaves nothing behind. ``--json`` prints ``diagnosis.json`` to stdout.
``--progress json`` prints one line per progress event to stderr, e.g.
``ORTHODIFFUSION-PROGRESS {"stage": "coronal: backbone t=50", "fraction": 0.42}`` (stages name the plane and the
step, see :mod:`OrthoDiffusionLib.inference.predictor`; then ``writing outputs`` and ``done`` at 1.0).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from ..errors import InputError, MissingPathError
from ..model.uncertainty import DEFAULT_NOISE_DRAWS, spread_percent
from ..inference.result_folder import REPORT_FILE
from ..output_folder import claim_output_folder, sigterm_raises
from ..progress import ProgressFn, progress_line
from .common import add_command, add_device_argument, add_precision_argument, plane_list, positive_int

__all__ = ["format_result_table", "progress_printer", "add_run_arguments", "run_and_write", "register"]


def format_result_table(data: Mapping[str, Any]) -> str:
    """Plain-text table of a ``diagnosis.json``: label, calibrated probability, uncertainty, plane weights."""
    lines = []
    if (data.get("model") or {}).get("synthetic_data_only"):
        lines.append("WARNING: this model was trained on SIMULATED (synthetic) data only; its outputs on real "
                     "patient images are not meaningful.")
    if data.get("labels"):
        spread = int(data.get("noise_draws") or 1) > 1  # one draw measures no spread: show none rather than 0
        lines.append(f"{'Abnormality':<26} {'Prob.':>6} {'+/-':>6}   {'sag':>5} {'cor':>5} {'ax':>5}")
        for lb in data["labels"]:
            w = lb["plane_weights"]
            sd = f"{spread_percent(lb['uncertainty'], 1):>6}" if spread else f"{'-':>6}"
            lines.append(f"{lb['name']:<26} {100 * lb['calibrated_probability']:>5.1f}% "
                         f"{sd}   {w['sagittal']:>5.2f} {w['coronal']:>5.2f} {w['axial']:>5.2f}")
        if not spread:
            lines.append("(one noise draw: no uncertainty measured; --noise-draws K > 1 gives one)")
    segs = data.get("segmentations") or {}
    if segs:
        lines.append(f"segmentations: {', '.join(segs)}")
    fused = data.get("fused_segmentation")
    if fused:
        lines.append(f"fused segmentation: {' + '.join(fused['planes'])} on the {fused['grid']} grid")
    for w in data.get("warnings") or []:
        lines.append(f"note: {w}")
    lines.append(data.get("disclaimer", ""))
    return "\n".join(lines)


def progress_printer(mode: str, name: str = "predict") -> tuple[ProgressFn, Callable[[], None]]:
    """(callback, close) for ``--progress``: ``json`` lines on stderr, a tqdm ``bar`` on stderr (labelled with the
    command's ``name``), or ``none``."""
    if mode == "json":
        def emit(stage: str, fraction: float) -> None:
            print(progress_line(stage, fraction), file=sys.stderr, flush=True)

        return emit, lambda: None
    if mode == "none":
        return (lambda stage, fraction: None), lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", desc=name, file=sys.stderr, leave=False,
               bar_format="{desc:<22} {percentage:3.0f}%|{bar}| {elapsed}")

    def update(stage: str, fraction: float) -> None:
        bar.set_description_str(f"{name}: {stage}")
        bar.n = min(100, int(round(100 * fraction)))
        bar.refresh()

    return update, bar.close


def _read_ehr(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise MissingPathError("EHR file not found", p)
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not readable JSON ({e})", p) from None
    if not isinstance(record, dict):
        raise InputError("the EHR file must hold one JSON object (age, sex, height, weight, patient_type, "
                         "injury_event)", p)
    return record


def run_and_write(predictor, exam, args: argparse.Namespace, ehr=None, claim=None) -> Dict[str, Any]:
    """Predict ``exam`` and write the result folder ``args.out`` (into ``claim`` when the folder was claimed before)
    with the options of :func:`add_run_arguments`; returns the content of ``diagnosis.json``."""
    from ..inference.predictor import predict_and_write

    progress, close = progress_printer(args.progress)
    try:
        result = predict_and_write(predictor, exam, args.out, ehr, progress=progress, overwrite=args.overwrite,
                                   claim=claim, diagnosis=not getattr(args, "no_diagnosis", False),
                                   segmentation=not args.no_segmentation, noise_draws=args.noise_draws,
                                   fuse_segmentations=args.fuse_segmentations,
                                   segmentation_planes=args.segmentation_planes)
    finally:
        close()
    return result.to_json()


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.predictor import Predictor, load_exam

    out = Path(args.out)
    if args.study is None and not any((args.sagittal, args.coronal, args.axial)):
        raise InputError("give --study DIR or at least one of --sagittal/--coronal/--axial")
    inputs = (args.sagittal, args.coronal, args.axial, args.study, args.ehr, args.model)
    with sigterm_raises(), claim_output_folder(out, overwrite=args.overwrite, inputs=inputs) as claim:
        ehr = _read_ehr(args.ehr)
        # the model first: its anatomy decides which series the exam loader accepts
        predictor = Predictor(args.model, device=args.device, seed=args.seed, precision=args.precision)
        exam = load_exam(args.sagittal, args.coronal, args.axial, study=args.study, anatomy=predictor.anatomy,
                         allow_anatomy_mismatch=args.allow_anatomy_mismatch,
                         allow_mixed_patients=args.allow_mixed_patients, series_uid=args.series_uid,
                         echo=args.echo)
        data = run_and_write(predictor, exam, args, ehr, claim)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_result_table(data))
        print(f"outputs in {out} (report: {out / REPORT_FILE})")
    return 0


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a prediction run shared by ``predict`` and ``demo``."""
    p.add_argument("--model", default=None, help="model bundle file or registered name (default: the registry's "
                                                 "default model)")
    add_device_argument(p)
    add_precision_argument(p, help="fp32 (default) or bf16 autocast (faster on GPUs and CPUs with AVX512-BF16/AMX; "
                                   "probabilities differ by ~1e-2)")
    segmentation = p.add_mutually_exclusive_group()
    segmentation.add_argument("--no-segmentation", action="store_true", help="skip segmentation")
    segmentation.add_argument("--segmentation-planes", type=plane_list, default=None, metavar="PLANE,...",
                              help="segment only these planes, e.g. sagittal,coronal (default: every plane the model "
                                   "segments)")
    p.add_argument("--fuse-segmentations", action="store_true",
                   help="also write segmentation_fused.seg.nrrd / labelmap_fused.nii.gz: the segmented planes' class "
                        "probabilities averaged on the sagittal series' grid (needs two segmented planes)")
    p.add_argument("--noise-draws", type=positive_int, default=DEFAULT_NOISE_DRAWS, metavar="K",
                   help="noise draws averaged; their standard deviation is the uncertainty "
                        f"(default {DEFAULT_NOISE_DRAWS}; 1 is fastest and gives no uncertainty)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="progress on stderr: a bar (default), JSON lines for GUIs, or none")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def register(subparsers) -> None:
    """Add ``orthodiffusion predict``."""
    p = add_command(subparsers, "predict", _cmd_predict, help="segment and diagnose a knee MRI exam",
                    description="Run a model bundle on an exam (three series, or a study folder) and write "
                                "diagnosis.json, segmentation_<plane>.seg.nrrd, labelmap_<plane>.nii.gz, "
                                "measures.csv and report.html into --out.")
    p.add_argument("--sagittal", default=None, help="sagittal series (DICOM folder, NIfTI, NRRD, ...)")
    p.add_argument("--coronal", default=None, help="coronal series")
    p.add_argument("--axial", default=None, help="axial series")
    p.add_argument("--study", default=None, help="study folder: one series per plane is chosen automatically")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ehr", default=None, help="EHR record as a JSON object (age, sex, height, weight, ...)")
    p.add_argument("--no-diagnosis", action="store_true", help="skip diagnosis")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0; results are reproducible)")
    p.add_argument("--json", action="store_true", help="print diagnosis.json to stdout")
    p.add_argument("--allow-anatomy-mismatch", action="store_true",
                   help="run on series whose DICOM metadata (BodyPartExamined, descriptions) names another body part "
                        "than the model's anatomy (refused by default)")
    p.add_argument("--allow-mixed-patients", action="store_true",
                   help="run on an exam whose series differ in PatientID, StudyInstanceUID, birth date or sex "
                        "(refused by default; the result then carries a warning)")
    p.add_argument("--series-uid", action="append", default=None, metavar="UID",
                   help="in a folder holding several series: read the one with this SeriesInstanceUID (or "
                        "SeriesNumber); repeat for several folders")
    p.add_argument("--echo", type=positive_int, default=None, metavar="N",
                   help="in a multi-echo series: read echo N (1 = first echo)")
    add_run_arguments(p)
