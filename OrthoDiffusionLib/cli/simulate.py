"""``orthodiffusion simulate {exam,cohort,pictures}``: simulated knee MRI with ground truth.

    orthodiffusion simulate exam --out DIR [--seed N] [--abnormality acl_injury ...] [--anatomy procedural|atlas]
    orthodiffusion simulate cohort --out DIR --n 300 [--seed N] [--workers 2] [--matrix 256] [--no-dicom]
    orthodiffusion simulate pool --out DIR [--n 2400] [--seed 2026] [--workers 2]
    orthodiffusion simulate pool-cohort --pool DIR --out DIR [--splits 2000,200,200]
    orthodiffusion simulate pictures --out DIR [--seed N] [--anatomy ...]

``exam`` writes one exam: ``DIR/dicom/<plane>_1/`` (DICOM series; ``--study DIR/dicom`` for predict),
``DIR/nifti/<plane>_1.nii.gz``, ``DIR/labels/<plane>_1_seg.nii.gz`` (11-structure labelmaps on the same grids) and
``DIR/exam.json`` (labels, EHR, per-series metadata); it prints the simulation time (the speed measurement).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import InputError
from .common import add_command, fraction_bar

_EPILOG = "Labels: acl_injury pcl_injury medial_meniscus_tear lateral_meniscus_tear mcl_injury lcl_injury " \
          "patellar_dislocation joint_effusion"


def _matrix(v: str) -> int:
    n = int(v)
    if n < 16 or n > 1024:
        raise argparse.ArgumentTypeError("matrix must be 16..1024")
    return n


def register(subparsers) -> None:
    p = subparsers.add_parser("simulate", help="simulate knee MRI exams / cohorts with ground truth",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="simulate_command", metavar="WHAT")
    p.set_defaults(func=lambda a: (p.print_help() or 1))

    e = add_command(sub, "exam", _exam, help="one multi-plane exam (DICOM + NIfTI + labelmaps + exam.json)",
                    epilog=_EPILOG)
    e.add_argument("--out", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--abnormality", action="append", default=[], metavar="KEY")
    e.add_argument("--anatomy", default="procedural", choices=["procedural", "atlas", "atlas_spl", "atlas_oai"])
    e.add_argument("--atlas-path", default=None)
    e.add_argument("--matrix", type=_matrix, default=256)
    e.add_argument("--center", default=None)
    e.add_argument("--field-strength", type=float, default=None, choices=[1.5, 3.0])
    e.add_argument("--no-dicom", action="store_true")

    c = add_command(sub, "cohort", _cohort, help="a cohort with manifest.csv (patient-level splits, labels, EHR)")
    c.add_argument("--out", required=True)
    c.add_argument("--n", type=int, default=300)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--matrix", type=_matrix, default=256)
    c.add_argument("--slices", type=int, default=None, help="slices per series (default: cover ~95 mm)")
    c.add_argument("--planes", default="sagittal,coronal,axial")
    c.add_argument("--prevalence", action="append", default=[], metavar="KEY=P")
    c.add_argument("--splits", default="0.7,0.1,0.2")
    c.add_argument("--anatomy-mix", default="procedural=1", help="e.g. procedural=0.7,atlas=0.3")
    c.add_argument("--atlas-path", default=None)
    c.add_argument("--multi-series-fraction", type=float, default=0.1)
    c.add_argument("--missing-rate", type=float, default=0.05)
    c.add_argument("--no-dicom", action="store_true")
    c.add_argument("--no-nifti", action="store_true")
    c.add_argument("--workers", type=int, default=1)

    o = add_command(sub, "pool", _pool, help="a large pool of exams on the model grid (images + tissue maps) for "
                                             "pretraining and domain-randomised training")
    o.add_argument("--out", required=True)
    o.add_argument("--n", type=int, default=2400, help="exams (default 2400)")
    o.add_argument("--seed", type=int, default=2026)
    o.add_argument("--prevalence", type=float, default=0.35, help="probability of each abnormality (default 0.35)")
    o.add_argument("--anatomy-mix", default="procedural=0.6,atlas_spl=0.2,atlas_oai=0.2",
                   help="anatomy sources and weights (the atlas sources need the real label maps)")
    o.add_argument("--atlas-path", default=None)
    o.add_argument("--workers", type=int, default=1)

    pc = add_command(sub, "pool-cohort", _pool_cohort,
                     help="write a pool's exams as a training cohort (NIfTI + manifest.csv)")
    pc.add_argument("--pool", required=True, help="the pool folder (or its pool.csv)")
    pc.add_argument("--out", required=True)
    pc.add_argument("--splits", default="2000,200,200", help="train,val,test exam counts (default 2000,200,200)")

    q = add_command(sub, "pictures", _pictures, help="PNG check pictures: normal knee and each abnormality")
    q.add_argument("--out", required=True)
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--anatomy", default="procedural", choices=["procedural", "atlas", "atlas_spl", "atlas_oai"])
    q.add_argument("--atlas-path", default=None)
    q.add_argument("--matrix", type=_matrix, default=256)

    v = add_command(sub, "atlas-preview", _atlas_preview,
                    help="mid-slice tissue pictures of the SPL and OAI atlas sources (plain, "
                         "deformed, deformed + mirrored)")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--spl", type=Path, default=None, help="SPL label map (default: shared data)")
    v.add_argument("--oai", type=Path, default=None, help="OAI label map (default: shared data)")


def _kv(items, what: str) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise InputError(f"{what} must look like KEY=VALUE, got {it!r}", it)
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise InputError(f"{what} value is not a number: {it!r}", it) from None
    return out


def _exam(a) -> int:
    from ..simulate.cohort import LABEL_KEYS, simulate_exam, write_exam_folder

    bad = [k for k in a.abnormality if k not in LABEL_KEYS]
    if bad:
        raise InputError(f"unknown abnormality {bad[0]!r} (known: {', '.join(LABEL_KEYS)})", bad[0])
    t0 = time.perf_counter()
    exam = simulate_exam(a.seed, {k: True for k in a.abnormality}, anatomy=a.anatomy, center=a.center,
                         field_strength=a.field_strength, matrix=a.matrix, atlas_path=a.atlas_path)
    t_sim = time.perf_counter() - t0
    out = Path(a.out)
    write_exam_folder(exam, out, a.seed, write_dicom=not a.no_dicom)
    print(f"simulated {len(exam.series)} series in {t_sim:.2f} s ({a.matrix}x{a.matrix}, anatomy {a.anatomy}); "
          f"wrote {out}")
    return 0


def _cohort(a) -> int:
    from ..simulate.cohort import LABEL_KEYS, write_cohort

    prev = _kv(a.prevalence, "--prevalence")
    for k, v in prev.items():
        if k not in LABEL_KEYS or not 0 <= v <= 1:
            raise InputError(f"bad --prevalence {k}={v} (keys: {', '.join(LABEL_KEYS)}; value 0..1)", k)
    try:
        splits = tuple(float(x) for x in a.splits.split(","))
    except ValueError:
        raise InputError(f"--splits must be three numbers, got {a.splits!r}", a.splits) from None
    if len(splits) != 3:
        raise InputError(f"--splits must be three numbers, got {a.splits!r}", a.splits)
    if a.n < 1:
        raise InputError("--n must be at least 1", str(a.n))
    mix = _kv(a.anatomy_mix.split(","), "--anatomy-mix")
    planes = tuple(p.strip() for p in a.planes.split(",") if p.strip())
    progress, close = fraction_bar(a.n, "patient", "simulate cohort")
    t0 = time.perf_counter()
    try:
        manifest = write_cohort(a.out, a.n, a.seed, prevalences=prev, splits=splits, anatomy_mix=mix,
                                write_dicom=not a.no_dicom, write_nifti=not a.no_nifti,
                                multi_series_fraction=a.multi_series_fraction, matrix=a.matrix, planes=planes,
                                n_slices=a.slices, ehr_missing_rate=a.missing_rate, atlas_path=a.atlas_path,
                                progress=progress, workers=a.workers)
    finally:
        close()
    print(f"wrote {manifest} ({a.n} patients in {time.perf_counter() - t0:.1f} s)")
    return 0


def _pool(a) -> int:
    from ..simulate.pool import write_pool

    if a.n < 1:
        raise InputError("--n must be at least 1", str(a.n))
    if not 0 <= a.prevalence <= 1:
        raise InputError(f"--prevalence must be 0..1, got {a.prevalence}", str(a.prevalence))
    mix = _kv(a.anatomy_mix.split(","), "--anatomy-mix")
    progress, close = fraction_bar(a.n, "exam", "simulate pool")
    t0 = time.perf_counter()
    try:
        manifest = write_pool(a.out, a.n, a.seed, prevalence=a.prevalence, anatomy_mix=mix, atlas_path=a.atlas_path,
                              workers=a.workers, progress=progress)
    finally:
        close()
    print(f"wrote {manifest} ({a.n} exams in {time.perf_counter() - t0:.1f} s)")
    return 0


def _pool_cohort(a) -> int:
    from ..simulate.pool import write_pool_cohort

    try:
        splits = tuple(int(x) for x in a.splits.split(","))
    except ValueError:
        raise InputError(f"--splits must be three exam counts, got {a.splits!r}", a.splits) from None
    if len(splits) != 3 or min(splits) < 0:
        raise InputError(f"--splits must be three exam counts, got {a.splits!r}", a.splits)
    progress, close = fraction_bar(sum(splits), "exam", "write cohort")
    try:
        manifest = write_pool_cohort(a.pool, a.out, splits, progress=progress)
    except ValueError as e:
        raise InputError(str(e), a.pool) from None
    finally:
        close()
    print(f"wrote {manifest}")
    return 0


def _pictures(a) -> int:
    from ..simulate.pictures import write_pictures

    progress, close = fraction_bar(9, "exam", "simulate pictures")
    try:
        paths = write_pictures(a.out, seed=a.seed, anatomy=a.anatomy, matrix=a.matrix, atlas_path=a.atlas_path,
                               progress=progress)
    finally:
        close()
    for p in paths:
        print(p)
    return 0


def _atlas_preview(a) -> int:
    from ..simulate.anatomy_preview import render_atlas_previews

    for entry in render_atlas_previews(a.out, seed=a.seed, spl=a.spl, oai=a.oai):
        print(f"{entry['kind']}: loaded in {entry['load_seconds']:.1f} s (atlas side {entry['atlas_side']})")
        for path in entry["pictures"]:
            print(path)
    return 0
