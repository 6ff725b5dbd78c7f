"""The network parts: diffusion backbone, noise schedule, feature taps, pooling, plane fusion, diagnosis and
segmentation heads, EHR fusion, calibration, uncertainty, and backbone weight files.
"""
