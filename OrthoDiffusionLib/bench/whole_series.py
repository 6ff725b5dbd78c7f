"""``orthodiffusion bench whole-series``: a whole exam built from one thin-slice 3D series, with whole-series
segmentation.

The exam is the series in its own plane plus its reformats onto the two other planes
(:func:`OrthoDiffusionLib.io.reformat.reformat_series` on a clinical 2D grid, 0.6 x 0.6 x 3 mm), as a console
shows a 3D DESS. Rows (median seconds after a warm-up, all in this process):

* the bundle (``model``) as ``predict`` runs it: diagnosis on three planes, segmentation of the planes it segments
  (the whole series for models with a physical grid, the central slices for older ones), structure measures;
* with ``authors_layout``, the paper's full-size layout (width 64, 16 x 256 x 256, random weights, measures off: a
  random model's labels are no knee) segmenting its 16 central slices, and the same network segmenting the whole
  series in 16-slice windows on a 4 mm x 0.6 mm grid; the ratio of the two is reported.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

from ..labels import PLANES
from .timing import device_facts, device_sync, setup_device, time_callable

__all__ = ["bench_whole_series", "exam_with_reformats"]

#: Model grid of the authors' layout when it segments whole series (256 x 0.6 mm = a 154 mm field of view).
AUTHORS_GRID = {"slice_mm": 4.0, "inplane_mm": 0.6}


def exam_with_reformats(path: Union[str, os.PathLike]):
    """An :class:`~OrthoDiffusionLib.io.Exam` of the series at ``path`` and its reformats onto the other planes."""
    from ..io import Exam, read_series
    from ..io.reformat import CLINICAL_2D_SPACING, reformat_series

    series = read_series(path)
    planes = {p: series if p == series.plane else reformat_series(series, p, CLINICAL_2D_SPACING) for p in PLANES}
    return Exam(**planes, source=os.fspath(path))


def _row(name: str, predict, repeats: int, warmup: int, dev) -> Dict[str, object]:
    last: Dict[str, object] = {}

    def run() -> None:
        last["result"] = predict()

    row: Dict[str, object] = {"run": name, **time_callable(run, repeats, warmup, device_sync(dev))}
    timings = last["result"].timings
    row["stage_s"] = {k: round(v, 2) for k, v in timings.items() if k not in ("load_model", "total")}
    return row


def bench_whole_series(series: Union[str, os.PathLike], model: Optional[str] = None, *, repeats: int = 2,
                       warmup: int = 1, device: str = "cpu", threads: Optional[int] = None,
                       authors_layout: bool = True, width: int = 64, size: int = 256) -> Dict[str, object]:
    """The rows of the module docstring: ``{"rows": [...], "exam": {plane: slices}, "ratio_whole_over_16": ...}``.
    ``width`` and ``size`` shape the authors'-layout network (the paper's 64 and 256 by default)."""
    from ..bundle.registry import resolve_model
    from ..inference.predictor import Predictor
    from ..inference.preprocess import model_grid
    from .model import synthetic_bundle

    dev = setup_device(threads, device)
    exam = exam_with_reformats(series)
    rows: List[Dict[str, object]] = []
    predictor = Predictor(resolve_model(model), device=str(dev))
    whole = all(model_grid(m["preprocessing"]) for m in predictor.seg_meta.values())
    seg = "whole-series segmentation" if whole else "segmentation of the central slices"
    rows.append(_row(f"{predictor.bundle.meta.get('name')}: diagnosis + {seg} + measures",
                     lambda: predictor.predict(exam), repeats, warmup, dev))
    out: Dict[str, object] = {"exam": {p: exam.get(p).image.GetSize()[2] for p in PLANES}, **device_facts(dev)}
    if authors_layout:
        for name, grid in (("authors' layout: 16 central slices", None),
                           ("authors' layout: whole-series windows", AUTHORS_GRID)):
            full = Predictor(synthetic_bundle(width, size, full_backbones=False, seg_grid=grid), device=str(dev))
            rows.append(_row(name, lambda p=full: p.predict(exam, measures=False), repeats, warmup, dev))
        out["ratio_whole_over_16"] = float(rows[2]["median_s"]) / float(rows[1]["median_s"])
    out["rows"] = rows
    return out
