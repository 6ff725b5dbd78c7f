"""Anatomy-respecting augmentation for segmentation training on preprocessed volumes.

Works on one sample or a batch: image (B, 1, D, H, W) in [-1, 1] and labels (B, D, H, W) int (a missing batch
axis is added and removed again). D is the 16-slice axis of the series, H x W the in-plane 256 x 256 grid.

* In-plane affine (rotation, isotropic scale, translation) applied identically to every slice; the thick slice
  axis is never resampled. Image: trilinear (= bilinear within slices), padding -1 (the preprocessed minimum);
  labels: nearest neighbour, padding 0 (background; ``ignore_index`` if given).
* Intensity: gamma on the [0, 1]-mapped image, contrast/brightness jitter, Gaussian noise; clamped to [-1, 1].
* Left-right mirror (probability ``p_mirror``) along the array axis that is left-right for the plane
  (:data:`LR_AXIS`: the slice axis D for sagittal series, the in-plane column axis W for coronal and axial series,
  the orientation the preprocessing produces). Labels are KEPT: a mirrored right knee is an anatomically valid left
  knee whose medial structures are still medial, and the model sees only pixels (no laterality), so it must tell
  medial from lateral by anatomy. Swapping medial/lateral labels after a mirror would teach it wrong anatomy.
  Mirrors along the other axes (anterior-posterior, superior-inferior) give impossible anatomy and are never used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from OrthoDiffusionLib import labels

#: Array axis (0 = D, 1 = H, 2 = W of a (D, H, W) volume) that runs left-right, per plane.
LR_AXIS = {"sagittal": 0, "coronal": 2, "axial": 2}


@dataclass
class SegAugment:
    """Random augmentation of (image, labels); see the module docstring. ``generator`` makes it reproducible."""

    plane: str
    p_mirror: float = 0.5
    p_affine: float = 0.8
    rotate_deg: float = 10.0
    scale: Tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    gamma: Tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.1
    brightness: float = 0.05
    noise_std: float = 0.02
    ignore_index: Optional[int] = None
    generator: Optional[torch.Generator] = None

    def __post_init__(self) -> None:
        if self.plane not in labels.PLANES:
            raise ValueError(f"unknown plane {self.plane!r}; known: {', '.join(labels.PLANES)}")

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def _affine(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b = image.shape[0]
        angle = self._uniform(b, -self.rotate_deg, self.rotate_deg) * math.pi / 180.0
        s = self._uniform(b, *self.scale)
        ty, tx = (self._uniform(b, -2 * self.translate, 2 * self.translate) for _ in range(2))
        apply = torch.rand(b, generator=self.generator) < self.p_affine
        angle, s = torch.where(apply, angle, 0.0), torch.where(apply, s, 1.0)
        ty, tx = torch.where(apply, ty, 0.0), torch.where(apply, tx, 0.0)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.zeros(b, 3, 4)
        # affine_grid's coordinates are (x=W, y=H, z=D); z stays the identity
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 3] = cos, -sin, tx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 3] = sin, cos, ty
        theta[:, 2, 2] = 1.0
        theta = theta.to(image)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        img = F.grid_sample(image + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
        pad = 0 if self.ignore_index is None else int(self.ignore_index)
        lab = F.grid_sample((target + 1).unsqueeze(1).to(grid.dtype), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False).squeeze(1).round().long()
        lab = torch.where(lab == 0, torch.full_like(lab, pad), lab - 1)
        return img, lab

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        view = (b,) + (1,) * (image.dim() - 1)
        g = torch.exp(self._uniform(b, math.log(self.gamma[0]), math.log(self.gamma[1]))).view(view)
        x = ((image + 1.0) / 2.0).clamp(0.0, 1.0) ** g.to(image)
        x = x * (1.0 + self._uniform(b, -self.contrast, self.contrast).view(view).to(image))
        x = x + self._uniform(b, -self.brightness, self.brightness).view(view).to(image)
        x = x + self.noise_std * torch.randn(x.shape, generator=self.generator).to(image)
        return (x * 2.0 - 1.0).clamp(-1.0, 1.0)

    def _mirror(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        flip = torch.rand(image.shape[0], generator=self.generator) < self.p_mirror
        if not bool(flip.any()):
            return image, target
        ax = LR_AXIS[self.plane]
        image, target = image.clone(), target.clone()
        image[flip] = image[flip].flip(2 + ax)
        target[flip] = target[flip].flip(1 + ax)
        return image, target

    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Augmented copies of image (B, 1, D, H, W) float and labels (B, D, H, W) int (batch axis optional)."""
        single = image.dim() == 4
        if single:
            image, target = image.unsqueeze(0), target.unsqueeze(0)
        if image.dim() != 5 or image.shape[1] != 1 or target.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(f"image (B, 1, D, H, W) and labels (B, D, H, W) expected, got {tuple(image.shape)} "
                             f"and {tuple(target.shape)}")
        image, target = self._mirror(image.float(), target.long())
        image, target = self._affine(image, target)
        image = self._intensity(image)
        if single:
            return image[0], target[0]
        return image, target


def random_inplane_crop(image: torch.Tensor, target: torch.Tensor, size: int,
                        generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` x ``size`` in-plane crop of each sample (every slice kept, pixels not resampled).

    image (B, 1, D, H, W), target (B, D, H, W) -> (B, 1, D, size, size), (B, D, size, size). Volumes no larger
    than ``size`` are returned as they are. The network is convolutional, so it trains on crops at a fraction of
    the cost and still segments whole series at inference.
    """
    h, w = image.shape[-2:]
    if size >= h and size >= w:
        return image, target
    size_h, size_w = min(size, h), min(size, w)
    ys = torch.randint(0, h - size_h + 1, (image.shape[0],), generator=generator).tolist()
    xs = torch.randint(0, w - size_w + 1, (image.shape[0],), generator=generator).tolist()
    images = [image[i, :, :, y:y + size_h, x:x + size_w] for i, (y, x) in enumerate(zip(ys, xs))]
    targets = [target[i, :, y:y + size_h, x:x + size_w] for i, (y, x) in enumerate(zip(ys, xs))]
    return torch.stack(images), torch.stack(targets)
