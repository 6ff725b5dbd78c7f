"""Pretraining of the diffusion backbones (DDPM on unlabeled MRI)."""
