"""``orthodiffusion predict`` and ``orthodiffusion demo`` (CONTRACTS.md section 4).

    orthodiffusion predict --sagittal P [--coronal P] [--axial P] | --study DIR  --out DIR
        [--model BUNDLE|NAME] [--device auto|cpu|cuda] [--ehr FILE.json] [--no-segmentation] [--no-diagnosis]
        [--noise-draws K] [--seed S] [--json] [--progress json|bar|none] [--overwrite] [--allow-anatomy-mismatch]
    orthodiffusion demo [--out DIR] [--abnormality KEY] [--seed N] [--device ...] [--model BUNDLE] [--matrix N]

Outputs are written into a temporary folder beside ``--out`` and renamed onto it only on success; an existing
non-empty ``--out`` is refused unless ``--overwrite``. ``--json`` prints ``diagnosis.json`` to stdout.
``--progress json`` prints one line per progress event to stderr, e.g.
``ORTHODIFFUSION-PROGRESS {"stage": "coronal: backbone t=50", "fraction": 0.42}`` (stages name the plane and the
step, see :mod:`OrthoDiffusionLib.predictor`; then ``writing outputs`` and ``done`` at 1.0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from ..errors import InputError, MissingPathError, OrthoDiffusionError

__all__ = ["PROGRESS_PREFIX", "format_result_table", "progress_printer", "register"]

PROGRESS_PREFIX = "ORTHODIFFUSION-PROGRESS"


def format_result_table(data: Mapping[str, Any]) -> str:
    """Plain-text table of a ``diagnosis.json``: label, calibrated probability, uncertainty, plane weights."""
    lines = []
    if data.get("labels"):
        lines.append(f"{'Abnormality':<26} {'Prob.':>6} {'+/-':>6}   {'sag':>5} {'cor':>5} {'ax':>5}")
        for lb in data["labels"]:
            w = lb["plane_weights"]
            lines.append(f"{lb['name']:<26} {100 * lb['calibrated_probability']:>5.1f}% "
                         f"{100 * lb['uncertainty']:>5.1f}%   {w['sagittal']:>5.2f} {w['coronal']:>5.2f} "
                         f"{w['axial']:>5.2f}")
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


def progress_printer(mode: str) -> tuple[Callable[[str, float], None], Callable[[], None]]:
    """(callback, close) for ``--progress``: ``json`` lines on stderr, a tqdm ``bar`` on stderr, or ``none``."""
    if mode == "json":
        def emit(stage: str, fraction: float) -> None:
            print(f"{PROGRESS_PREFIX} {json.dumps({'stage': stage, 'fraction': round(float(fraction), 4)})}",
                  file=sys.stderr, flush=True)

        return emit, lambda: None
    if mode == "none":
        return (lambda stage, fraction: None), lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", desc="predict", file=sys.stderr, leave=False,
               bar_format="{desc:<22} {percentage:3.0f}%|{bar}| {elapsed}")

    def update(stage: str, fraction: float) -> None:
        bar.set_description_str(f"predict: {stage}")
        bar.n = min(100, int(round(100 * fraction)))
        bar.refresh()

    return update, bar.close


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError("the output folder exists and is not empty (choose another or pass --overwrite)", out)


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


def _run_and_write(predictor, exam, args, ehr=None) -> Dict[str, Any]:
    from ..inference.predictor import predict_and_write

    progress, close = progress_printer(args.progress)
    try:
        result = predict_and_write(predictor, exam, args.out, ehr, progress=progress, overwrite=args.overwrite,
                                   diagnosis=not getattr(args, "no_diagnosis", False),
                                   segmentation=not args.no_segmentation, noise_draws=args.noise_draws,
                                   fuse_segmentations=args.fuse_segmentations)
    finally:
        close()
    return result.to_json()


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.predictor import Predictor, load_exam

    out = Path(args.out)
    _check_out(out, args.overwrite)
    if args.study is None and not any((args.sagittal, args.coronal, args.axial)):
        raise InputError("give --study DIR or at least one of --sagittal/--coronal/--axial")
    ehr = _read_ehr(args.ehr)
    # the model first: its anatomy decides which series the exam loader accepts
    predictor = Predictor(args.model, device=args.device, seed=args.seed, precision=args.precision)
    exam = load_exam(args.sagittal, args.coronal, args.axial, study=args.study, anatomy=predictor.anatomy,
                     allow_anatomy_mismatch=args.allow_anatomy_mismatch)
    data = _run_and_write(predictor, exam, args, ehr)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_result_table(data))
        print(f"outputs in {out} (report: {out / 'report.html'})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..inference.demo import DEFAULT_ABNORMALITY, exam_from_simulation
    from ..inference.predictor import Predictor
    from ..simulate import LABEL_KEYS, simulate_exam

    out = Path(args.out)
    _check_out(out, args.overwrite or (args.out == _DEMO_OUT and (out / "diagnosis.json").is_file()))
    abnormality = args.abnormality or DEFAULT_ABNORMALITY
    if abnormality != "none" and abnormality not in LABEL_KEYS:
        raise InputError(f"unknown abnormality {abnormality!r}; choose one of none, {', '.join(LABEL_KEYS)}")
    start = time.perf_counter()
    try:
        predictor = Predictor(args.model, device=args.device, seed=args.seed, precision=args.precision)
    except OrthoDiffusionError as e:
        if args.model is not None:
            raise
        raise type(e)(f"the demo needs the shipped demo model, which is not available here ({e.problem}); "
                      "pass --model BUNDLE to use another model", e.path) from None
    print(f"model: {predictor.bundle.name} ({predictor.bundle.sha256[:12]}, loaded in {predictor.load_seconds:.1f} s, "
          f"device {predictor.device})")
    t = time.perf_counter()
    truth = {} if abnormality == "none" else {abnormality: True}
    sim = simulate_exam(args.seed, truth, anatomy="procedural", matrix=args.matrix)
    exam = exam_from_simulation(sim)
    print(f"simulated a procedural knee exam (seed {args.seed}, abnormality: {abnormality}) in "
          f"{time.perf_counter() - t:.1f} s")
    args.overwrite = True  # checked above
    data = _run_and_write(predictor, exam, args)
    print(format_result_table(data))
    print(f"total {time.perf_counter() - start:.1f} s; outputs in {out}")
    print(f"report: {(out / 'report.html').resolve()}")
    return 0


_DEMO_OUT = "orthodiffusion-demo"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model bundle file or registered name (default: the registry's "
                                                 "default model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 (default) or bf16 autocast (faster on GPUs and CPUs with AVX512-BF16/AMX; "
                        "probabilities differ by ~1e-2)")
    p.add_argument("--no-segmentation", action="store_true", help="skip segmentation")
    p.add_argument("--fuse-segmentations", action="store_true",
                   help="also write segmentation_fused.seg.nrrd / labelmap_fused.nii.gz: the segmented planes' class "
                        "probabilities averaged on the sagittal series' grid (needs two segmented planes)")
    p.add_argument("--noise-draws", type=int, default=1, metavar="K",
                   help="noise draws averaged; their spread is the uncertainty (default 1)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="progress on stderr: a bar (default), JSON lines for GUIs, or none")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def register(subparsers) -> None:
    """``orthodiffusion predict`` and ``orthodiffusion demo``."""
    p = subparsers.add_parser("predict", help="segment and diagnose a knee MRI exam",
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
    _common(p)
    p.set_defaults(func=_cmd_predict)

    d = subparsers.add_parser("demo", help="simulate a knee exam and run the built-in demo model on it",
                              description="Simulate a procedural knee MRI exam with a stated abnormality, run the "
                                          "default (demo) model, print the results and write the report.")
    d.add_argument("--out", default=_DEMO_OUT, help=f"output folder (default ./{_DEMO_OUT})")
    d.add_argument("--abnormality", default=None,
                   help="abnormality to simulate (default joint_effusion; 'none' for a normal knee)")
    d.add_argument("--seed", type=int, default=1, help="simulation and noise seed (default 1)")
    d.add_argument("--matrix", type=int, default=128,
                   help="in-plane matrix of the simulated series (default 128, as the demo model's training cohort)")
    _common(d)
    d.set_defaults(func=_cmd_demo)
