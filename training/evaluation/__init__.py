"""Evaluation: diagnosis and segmentation metrics tables and figures."""
