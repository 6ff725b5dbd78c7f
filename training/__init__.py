"""Headless training and evaluation of OrthoDiffusion models (installed as ``OrthoDiffusionLib.training``).

Needs the ``training`` extra (``pip install orthodiffusion[training]``).
"""
