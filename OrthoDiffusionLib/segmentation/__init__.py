"""Segmentation outputs and their numbers: ``.seg.nrrd``/NIfTI I/O, structure measures, Dice/HD95 metrics."""
