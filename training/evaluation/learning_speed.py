"""How fast does a network learn one label from few exams? A small, fixed experiment for choosing a recipe.

One label (e.g. ``joint_effusion``) of a simulated pool (:mod:`OrthoDiffusionLib.simulate.pool`), the 16 central
slices of one plane on the model grid (min-max to [-1, 1]), ``n_train`` training exams from the start of the pool and
the test exams given; the network's tap is averaged over space and a linear layer gives the logit; BCE, Adam, batch
8, one pass over the training exams per epoch; the test AUROC after every epoch.

``network``: ``"pretrained"`` (a backbone file, fine-tuned at ``backbone_lr``, noised at ``timestep`` as in
fine-tuning), ``"random"`` (the same architecture from its constructor's initialisation) or ``"cnn"`` (a plain
five-block 3D CNN with instance norm, 16-128 channels, all at ``backbone_lr``: a from-scratch reference).

Returns rows ``(epoch, train_loss, test_auroc, seconds)``.
"""
from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["plain_cnn", "learning_curve"]


def plain_cnn() -> nn.Module:
    """Five strided conv blocks (16, 32, 64, 128, 128 channels), global average pooling: (B, 1, D, H, W) -> (B, 128)."""
    def block(i: int, o: int, stride) -> nn.Module:
        return nn.Sequential(nn.Conv3d(i, o, 3, stride=stride, padding=1), nn.InstanceNorm3d(o, affine=True),
                             nn.LeakyReLU())

    return nn.Sequential(block(1, 16, (1, 2, 2)), block(16, 32, (1, 2, 2)), block(32, 64, 2), block(64, 128, 2),
                         block(128, 128, 2), nn.AdaptiveAvgPool3d(1), nn.Flatten())


def _features(network: str, backbone: Optional[str], tap: str, timestep: int):
    """(trunk module, feature function x -> (B, C), C)."""
    if network == "cnn":
        trunk = plain_cnn()
        return trunk, (lambda x, grad: trunk(x)), 128
    from OrthoDiffusionLib.model.backbone import CPU_SCALE_CONFIG, DiffusionUNet
    from OrthoDiffusionLib.model.checkpoints import load_backbone
    from OrthoDiffusionLib.model.features import extract_taps
    from OrthoDiffusionLib.model.schedule import CosineSchedule

    trunk = load_backbone(backbone)[0].float() if network == "pretrained" else DiffusionUNet(**CPU_SCALE_CONFIG)
    schedule = CosineSchedule()

    def feats(x, grad):
        return extract_taps(trunk, schedule, x, timestep, (tap,), grad=grad)[tap].mean(dim=(2, 3, 4))

    with torch.no_grad():
        channels = feats(torch.zeros(1, 1, 16, 128, 128), False).shape[1]
    return trunk, feats, channels


def learning_curve(pool: str, label: str, train_exams: Sequence[int], test_exams: Sequence[int], *,
                   network: str = "pretrained", backbone: Optional[str] = None, tap: str = "mid_0",
                   plane: str = "sagittal", backbone_lr: float = 1e-4, head_lr: float = 1e-3, epochs: int = 4,
                   timestep: int = 50, seed: int = 0) -> List[Tuple[int, float, float, float]]:
    """Train and test as in the module docstring; returns ``(epoch, train_loss, test_auroc, seconds)`` rows."""
    from sklearn.metrics import roc_auc_score

    from OrthoDiffusionLib.simulate.pool import read_pool

    from .probe_curve import central_windows

    torch.manual_seed(seed)
    rows = read_pool(pool)
    x = central_windows([rows[i] for i in train_exams], planes=(plane,))[plane]
    y = torch.tensor([float(rows[i][label]) for i in train_exams])
    xt = central_windows([rows[i] for i in test_exams], planes=(plane,))[plane]
    yt = np.array([rows[i][label] for i in test_exams])
    trunk, feats, channels = _features(network, backbone, tap, timestep)
    head = nn.Linear(channels, 1)
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": head_lr},
                            {"params": trunk.parameters(), "lr": backbone_lr}])
    curve = []
    for epoch in range(1, epochs + 1):
        t0, total = time.perf_counter(), 0.0
        trunk.train()
        for idx in torch.randperm(len(x)).split(8):
            loss = nn.functional.binary_cross_entropy_with_logits(head(feats(x[idx], True)).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        trunk.eval()
        with torch.no_grad():
            scores = torch.cat([head(feats(b, False)).squeeze(1) for b in xt.split(16)]).numpy()
        curve.append((epoch, total / len(x), float(roc_auc_score(yt, scores)), time.perf_counter() - t0))
    return curve
