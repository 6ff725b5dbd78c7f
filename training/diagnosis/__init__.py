"""Diagnosis training: data, probing / fine-tuning, fusion, baselines, timestep search."""
