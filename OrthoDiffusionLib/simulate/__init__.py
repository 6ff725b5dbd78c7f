"""Simulated multi-plane knee MRI with exact ground truth (``orthodiffusion simulate``).

Anatomy sources (procedural knee, deformed real label maps) produce tissue labels at arbitrary physical points; the
acquisition renders sagittal/coronal/axial 2D multi-slice series from them; lesions modify the anatomy; the cohort
writer emits DICOM + NIfTI series, labelmaps and a manifest CSV.
"""
