"""A model's segmentation of real knee series, checked against anatomy (``orthodiffusion check-anatomy``).

Real scans have no ground truth. Each series goes through the prediction flow of ``predict`` (whole-series
segmentation on the model's grid, resampled back onto the series) and its labelmap through the anatomical checks of
:mod:`OrthoDiffusionLib.segmentation.plausibility`. A thin-slice 3D series can also be read as its reformats (as a
console shows a 3D DESS as coronal and axial images), so one series tests every plane the model segments.

Output folder: ``<name>_<plane>.png`` (slices across the series, above without and below with the labels),
``checks.csv`` (series, plane, check, passed, detail) and ``measures.csv`` (series, plane, structure, volume in mL).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.atomic import atomic_path
from OrthoDiffusionLib.inference.overlays import encode_png, slices_montage
from OrthoDiffusionLib.io import Exam, Series, read_series
from OrthoDiffusionLib.io.reformat import CLINICAL_2D_SPACING, reformat_series
from OrthoDiffusionLib.progress import ProgressFn
from OrthoDiffusionLib.segmentation.plausibility import Check

PathLike = Union[str, os.PathLike]

def series_to_check(paths: Sequence[PathLike], reformat_planes: Sequence[str] = (), echo: Optional[int] = None
                    ) -> List[Tuple[str, Series]]:
    """``(name, series)`` for each path (read with ``read_series``; ``echo`` picks one echo of a multi-echo series)
    and each of its reformats onto ``reformat_planes`` (other than its own plane); names are the file or folder
    names, with ``_<plane>`` for reformats."""
    out = []
    for path in paths:
        series = read_series(path, echo=echo)
        name = Path(path).name.split(".")[0]
        out.append((name, series))
        out += [(f"{name}_{plane}", reformat_series(series, plane, CLINICAL_2D_SPACING))
                for plane in reformat_planes if plane != series.plane]
    return out


def check_anatomy(model: str, cases: Sequence[Tuple[str, Series]], out: PathLike, *, device: str = "cpu",
                  progress: Optional[ProgressFn] = None) -> Dict[str, Dict[str, object]]:
    """Segment each series with ``model`` (a bundle file or registered name) and check it; writes the folder of the
    module docstring and returns ``{name: {"plane", "checks": [Check], "volumes_ml": {key: mL}}}``. Series of a
    plane the model does not segment are skipped (listed with an empty check list)."""
    from OrthoDiffusionLib.inference.predictor import Predictor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, device=device)
    colors = {s.value: s.color for s in labels.knee_structures()}
    results: Dict[str, Dict[str, object]] = {}
    for i, (name, series) in enumerate(cases):
        if progress is not None:
            progress(f"{name}: segmenting", i / max(1, len(cases)))
        plane = series.plane
        if plane not in predictor.seg_meta:
            results[name] = {"plane": plane, "checks": [], "volumes_ml": {}}
            continue
        result = predictor.predict(Exam(**{plane: series}), diagnosis=False, noise_draws=1)
        labelmap = result.segmentations[plane]
        with atomic_path(out / f"{name}_{plane}.png") as tmp:
            Path(tmp).write_bytes(encode_png(slices_montage(series.image, labelmap, plane, colors)))
        results[name] = {"plane": plane, "checks": result.segmentation_checks.get(plane, []),
                         "volumes_ml": {r["key"]: r["volume_ml"] for r in result.measures if r["plane"] == plane}}
    _write_tables(results, out)
    if progress is not None:
        progress("done", 1.0)
    return results


def _write_tables(results: Dict[str, Dict[str, object]], out: Path) -> None:
    with atomic_path(out / "checks.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "plane", "check", "passed", "detail"])
        for name, r in results.items():
            checks: List[Check] = r["checks"]  # type: ignore[assignment]
            w.writerows([name, r["plane"], c.name, int(c.passed), c.detail] for c in checks)
    with atomic_path(out / "measures.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "plane", "structure", "volume_ml"])
        for name, r in results.items():
            w.writerows([name, r["plane"], k, f"{v:.2f}"] for k, v in r["volumes_ml"].items())  # type: ignore
