"""Segmentation networks behind one interface: the diffusion backbone + seg head, and the from-scratch baselines.

Both are ``nn.Module``s with ``forward(x0, generator=None) -> logits``: x0 (B, 1, D, H, W) preprocessed volumes in
[-1, 1], logits (B, C, D, H, W) (C = 12: background + the 11 knee structures). ``generator`` is the source of the
diffusion noise (ignored by the baselines). :func:`predict_probabilities` gives class probabilities with the plane's
excluded classes (label table) at zero.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from OrthoDiffusionLib.model.backbone import DiffusionUNet
from OrthoDiffusionLib.model.features import extract_taps
from OrthoDiffusionLib.model.schedule import CosineSchedule

from .losses import class_mask_for_plane, mask_logits


class DiffusionSegmenter(nn.Module):
    """Backbone encoder (+ middle block) at timestep ``timestep`` -> taps -> segmentation head.

    Every forward draws fresh noise for ``q_sample`` (during fine-tuning this acts as augmentation, as in the
    paper); with ``draws > 1`` the taps are averaged over independent draws. Only the encoder runs (never the
    decoder), so the decoder's parameters are frozen and left out of :meth:`param_groups`.

    ``frozen_input_blocks`` = k also freezes ``input_blocks[:k]`` (0 = the paper: the whole encoder + middle block
    is fine-tuned). Freezing the full-resolution blocks (k = 3 for the default layout: conv, ResBlock, Downsample)
    makes a CPU training step about 3x faster, because no gradient is propagated through full-resolution
    activations.
    """

    def __init__(self, backbone: DiffusionUNet, head: nn.Module, timestep: int, schedule_steps: int = 1000,
                 frozen_input_blocks: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.timestep = int(timestep)
        self.schedule = CosineSchedule(T=schedule_steps)
        if not 0 <= frozen_input_blocks <= len(backbone.input_blocks):
            raise ValueError(f"frozen_input_blocks must be in 0..{len(backbone.input_blocks)}, "
                             f"got {frozen_input_blocks}")
        frozen = {id(p) for p in backbone.input_blocks[:frozen_input_blocks].parameters()}
        encoder = {id(p) for p in backbone.encoder_parameters()} - frozen
        for p in backbone.parameters():
            p.requires_grad_(id(p) in encoder)

    def forward(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None, draws: int = 1) -> torch.Tensor:
        taps = extract_taps(self.backbone, self.schedule, x0, self.timestep, self.head.required_taps,
                            generator=generator, draws=draws, grad=torch.is_grad_enabled())
        return self.head(taps, output_size=x0.shape[-3:])

    def param_groups(self, lr: float, backbone_lr_scale: float) -> List[Dict[str, object]]:
        """Optimizer groups: head at ``lr``, encoder + middle block at ``backbone_lr_scale * lr`` (none if 0)."""
        groups: List[Dict[str, object]] = [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        if backbone_lr_scale > 0:
            groups.append({"params": [p for p in self.backbone.encoder_parameters() if p.requires_grad],
                           "lr": lr * backbone_lr_scale, "name": "backbone"})
        else:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        return groups


class BaselineSegmenter(nn.Module):
    """A from-scratch network (``baselines.build_seg_baseline``): logits = net(x0); no noise."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None, draws: int = 1) -> torch.Tensor:
        return self.net(x0)

    def param_groups(self, lr: float, backbone_lr_scale: float = 1.0) -> List[Dict[str, object]]:
        return [{"params": list(self.net.parameters()), "lr": lr, "name": "net"}]


@torch.no_grad()
def predict_probabilities(model: nn.Module, x0: torch.Tensor, plane: str,
                          generator: Optional[torch.Generator] = None, draws: int = 1) -> torch.Tensor:
    """Softmax probabilities (B, C, D, H, W) of ``model`` for x0 (B, 1, D, H, W); classes the label table does not
    segment on ``plane`` get probability 0. With ``draws > 1`` the probabilities of independent noise draws are
    averaged (one draw for a baseline)."""
    was_training = model.training
    model.eval()
    try:
        n = draws if isinstance(model, DiffusionSegmenter) else 1
        total = None
        for _ in range(max(1, n)):
            logits = model(x0, generator=generator)
            mask = class_mask_for_plane(plane, logits.shape[1])
            probs = torch.softmax(mask_logits(logits.float(), mask), dim=1)
            total = probs if total is None else total + probs
        return total / max(1, n)
    finally:
        model.train(was_training)
