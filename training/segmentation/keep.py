"""A finished segmentation run kept small enough to commit: its backbone and head as float16, ``run.json`` and
``log.csv``. The kept folder is itself a run folder: ``train-segmentation --init-from`` continues from it and
``orthodiffusion export`` packs it (loading casts the weights back to float32), so a long training spread over
sessions on different machines needs nothing outside the repository."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

import torch

from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.model.checkpoints import load_backbone, save_backbone

from .train import HEAD_FORMAT, RUN_FORMAT, read_segmentation_run

PathLike = Union[str, os.PathLike]


def keep_segmentation_run(run_dir: PathLike, out_dir: PathLike) -> Path:
    """Write ``run_dir`` (a finished ``train-segmentation`` run) to ``out_dir`` (new or empty) with float16 weights;
    returns ``out_dir``. Nothing is left behind on failure. Raises the errors of :func:`read_segmentation_run`, and
    InputError for another kind of run."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_segmentation_run(run_dir)
    if run["format"] != RUN_FORMAT:
        raise InputError("only train-segmentation runs are kept this way", run_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("the output exists and is not an empty folder; choose a new folder", out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")  # everything is written here, then renamed
    if partial.exists():
        raise InputError("this folder is in the way of the copy (left by an interrupted keep-segmentation-run?); "
                         "remove it", partial)
    partial.mkdir(parents=True)
    try:
        net, meta = load_backbone(run_dir / run["backbone"], device="cpu")
        save_backbone(net, partial / run["backbone"], meta.get("plane", run["plane"]),
                      provenance=meta.get("provenance"), half=True, preprocessing=run["preprocessing"])
        with safe_open(str(run_dir / run["head_weights"]), "pt") as f:
            state = {k: f.get_tensor(k).to(torch.float16).contiguous() for k in f.keys()}
            metadata = f.metadata() or {"format": HEAD_FORMAT}
        save_file(state, str(partial / run["head_weights"]), metadata=metadata)
        for name in ("run.json", "log.csv"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, partial / name)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir
