"""Pooling of a diffusion feature tap into one vector per volume (the paper's GAP, GLP and SAP).

A tap is a feature map ``v`` of shape ``(B, C, D', H', W')`` (``256 x 1 x 16 x 16`` for ``mid_*`` at full size); its
``N = D'H'W'`` spatial positions are the tokens ``v_i`` (each ``C``-d). Any spatial size (and any number of spatial
axes >= 1) is accepted.

* ``gap``  -- global average pooling: ``mean_i v_i`` -> ``C``.
* ``glp``  -- global-local pooling: ``[mean_i v_i || sum_i softmax_i(g(v_i)) v_i]`` with
  ``g = Linear(C, C/8) - ReLU - Linear(C/8, 1)`` (hidden 32 for ``C = 256``) -> ``2C``.
* ``sap``  -- self-attention pooling (the default): multi-head self-attention over the tokens (Q, K, V ``Linear(C, C)``
  with bias, 16 heads, output projection ``Linear(C, C)``), mean over tokens, concatenated after the global mean:
  ``[mean_i v_i || mean_i MHA(X)_i]`` -> ``2C``. No positional encoding, no normalisation.

Every module has ``out_features`` (the pooled width) and maps ``(B, C, *spatial) -> (B, out_features)``.
"""
from __future__ import annotations

from typing import Dict, Type

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GlobalAveragePooling",
    "GlobalLocalPooling",
    "SelfAttentionPooling",
    "POOLINGS",
    "DEFAULT_POOLING",
    "build_pooling",
    "tokens_of",
]

DEFAULT_POOLING = "sap"


def tokens_of(x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """``(B, C, *spatial)`` -> token matrix ``(B, N, C)`` with ``N = prod(spatial)``.

    Raises ``ValueError`` for fewer than 3 dims or a channel count different from ``channels``.
    """
    if x.dim() < 3:
        raise ValueError(f"expected a feature map (B, C, *spatial), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x.flatten(2).transpose(1, 2)


class GlobalAveragePooling(nn.Module):
    """GAP: ``(B, C, *spatial) -> (B, C)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)
        self.out_features = self.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tokens_of(x, self.channels).mean(dim=1)


class GlobalLocalPooling(nn.Module):
    """GLP: ``(B, C, *spatial) -> (B, 2C)`` = ``[global mean || attention-weighted sum]``.

    The token scores come from ``g = Linear(C, hidden) - ReLU - Linear(hidden, 1)``, ``hidden = C // 8`` by default
    (32 for C = 256), softmax over the tokens of each volume.
    """

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        self.channels = int(channels)
        hidden = max(1, self.channels // 8) if hidden is None else int(hidden)
        self.score = nn.Sequential(nn.Linear(self.channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.out_features = 2 * self.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = tokens_of(x, self.channels)  # (B, N, C)
        weights = torch.softmax(self.score(tokens).squeeze(-1), dim=1)  # (B, N)
        local = torch.einsum("bn,bnc->bc", weights, tokens)
        return torch.cat([tokens.mean(dim=1), local], dim=1)


class SelfAttentionPooling(nn.Module):
    """SAP: ``(B, C, *spatial) -> (B, 2C)`` = ``[global mean || mean over tokens of MHA(X)]``.

    ``MHA(X) = concat_j softmax(Q_j K_j^T / sqrt(d)) V_j  W_O`` with ``Q = X W_Q + b`` etc., ``heads`` heads of size
    ``d = C / heads``; computed with :func:`torch.nn.functional.scaled_dot_product_attention`.
    """

    def __init__(self, channels: int, heads: int = 16):
        super().__init__()
        self.channels = int(channels)
        if self.channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = int(heads)
        self.q = nn.Linear(self.channels, self.channels)
        self.k = nn.Linear(self.channels, self.channels)
        self.v = nn.Linear(self.channels, self.channels)
        self.out = nn.Linear(self.channels, self.channels)
        self.out_features = 2 * self.channels

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention of ``(B, N, C)`` tokens -> ``(B, N, C)`` (after the output projection)."""
        b, n, c = tokens.shape
        h, d = self.heads, c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d).transpose(1, 2)  # (B, h, N, d)

        att = F.scaled_dot_product_attention(split(self.q(tokens)), split(self.k(tokens)), split(self.v(tokens)))
        return self.out(att.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = tokens_of(x, self.channels)
        return torch.cat([tokens.mean(dim=1), self.attend(tokens).mean(dim=1)], dim=1)


POOLINGS: Dict[str, Type[nn.Module]] = {
    "gap": GlobalAveragePooling,
    "glp": GlobalLocalPooling,
    "sap": SelfAttentionPooling,
}


def build_pooling(name: str, channels: int, **kwargs) -> nn.Module:
    """Pooling module by name (``gap``, ``glp``, ``sap``; case-insensitive) for ``channels``-channel taps.

    Extra keyword arguments go to the class (``hidden`` for GLP, ``heads`` for SAP).
    """
    key = str(name).strip().lower()
    if key not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; known: {', '.join(POOLINGS)}")
    return POOLINGS[key](channels, **kwargs)
