"""Packaged resources of OrthoDiffusion (installed as ``OrthoDiffusionLib.resources``): label tables, model registry,
demo model."""
