"""Inference: preprocessing, the predictor, the result folder, the report and its overlay pictures, the demo exam."""
