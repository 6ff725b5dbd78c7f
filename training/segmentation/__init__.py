"""Segmentation training: data, augmentation, losses, models, the training loop."""
