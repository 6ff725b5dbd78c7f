"""The diffusion backbone: a guided-diffusion-style 3D U-Net (one per MRI plane).

Written for OrthoDiffusion from the paper's description of the network; the default constructor is the paper's network and its
``state_dict()`` has exactly the keys and shapes of the authors' checkpoints, so their published weights load with no
remapping (see :mod:`OrthoDiffusionLib.model.checkpoints`).

Shapes (default network, one 1x16x256x256 volume per sample)::

    x_t   B x 1 x 16 x 256 x 256   noised volume in [-1, 1]-ish
    t     B                        integer timesteps in [0, T)
    eps   B x 1 x 16 x 256 x 256   predicted noise
    in_0  B x 64 x 16 x 256 x 256  ... in_9  B x 256 x 1 x 16 x 16
    mid_0, mid_1, mid_2            B x 256 x 1 x 16 x 16

Layout (guided-diffusion naming, ``level`` = index into ``channel_mult``, downsample factor ``ds = 2**level``)::

    time_embed     Linear(C, 4C) - SiLU - Linear(4C, 4C) on [cos, sin] sinusoids of dim C (max_period 1000)
    input_blocks   [conv3] + per level: num_res_blocks x (ResBlock [+ AttentionBlock if ds in attention_resolutions])
                   + Downsample (3x3x3 conv, stride 2 on all axes) except after the last level
    middle_block   ResBlock - AttentionBlock - ResBlock
    output_blocks  mirror of the encoder, each block consuming a skip (channel concat) from input_blocks;
                   Upsample (trilinear x2 on all axes + 3x3x3 conv) closes every level but the first
    out            GroupNorm - SiLU - conv3 (zero-initialised)

Options that do not change the numbers: ``use_checkpoint`` (gradient checkpointing of every res/attention block
while training), :meth:`DiffusionUNet.to_channels_last_3d`, autocast (GroupNorm and the softmax of attention stay in
float32).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "DiffusionUNet",
    "CPU_SCALE_CONFIG",
    "timestep_embedding",
    "reference_init_",
    "GroupNorm32",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
]

GROUPS = 32
GROUPNORM_EPS = 1e-5


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal timestep features ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period**(-k/half)``.

    Args:
        t: (B,) timesteps (int or float).
        dim: output width (even widths give exactly half cos, half sin; an odd width gets a zero column).
        max_period: lowest frequency period (the authors use 1000).

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups by default, eps 1e-5) computed in float32 whatever the input dtype; returns the input
    dtype."""

    def __init__(self, channels: int, groups: int = GROUPS):
        if channels % groups:
            raise ValueError(f"GroupNorm({groups}) needs a channel count divisible by {groups}, got {channels}")
        super().__init__(groups, channels, eps=GROUPNORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _Block(nn.Module):
    """A block that may take the timestep embedding; runs under gradient checkpointing when asked."""

    takes_emb = False

    def __init__(self) -> None:
        super().__init__()
        self.use_checkpoint = False

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            if self.takes_emb:
                return _checkpoint(self._forward, x, emb, use_reentrant=False)
            return _checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x, emb) if self.takes_emb else self._forward(x)


class ResBlock(_Block):
    """Residual block with timestep conditioning.

    ``in_layers`` = GroupNorm - SiLU - conv3(C_in -> C_out); ``emb_layers`` = SiLU - Linear(E -> C_out) added per
    channel; ``out_layers`` = GroupNorm - SiLU - Dropout - conv3 (zero-init); skip = identity or 1x1x1 conv.

    Shapes: x (B, C_in, D, H, W), emb (B, E) -> (B, C_out, D, H, W).
    """

    takes_emb = True

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 groups: int = GROUPS):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels, groups), nn.SiLU(),
                                       nn.Conv3d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv3d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)
        h = h + e.reshape(*e.shape, *([1] * (h.dim() - 2)))
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class AttentionBlock(_Block):
    """Spatial self-attention over all D*H*W positions, legacy QKV order.

    ``qkv`` (1-D 1x1 conv) yields, per head, q, k, v as consecutive ``ch``-channel chunks (``ch = C / heads``);
    attention uses scaled dot-product with scale 1/sqrt(ch) (= 1/sqrt(sqrt(ch)) on q and on k) and a float32
    softmax; ``proj_out`` is zero-initialised; residual.

    Shapes: x (B, C, D, H, W) -> (B, C, D, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, groups: int = GROUPS):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels, groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (B, 3C, L)
        length = qkv.shape[-1]
        ch = c // self.num_heads
        # legacy order: (B, heads, 3, ch, L) -> q, k, v each (B, heads, L, ch)
        q, k, v = qkv.reshape(b, self.num_heads, 3, ch, length).transpose(-1, -2).unbind(dim=2)
        # SDPA's default scale 1/sqrt(ch) equals the reference's 1/sqrt(sqrt(ch)) applied to q and to k; its
        # kernels take the softmax in float32 under autocast too
        a = F.scaled_dot_product_attention(q, k, v)
        h = a.transpose(-1, -2).reshape(b, c, length)
        h = self.proj_out(h)
        return (x + h).reshape(b, c, *spatial)


class Downsample(_Block):
    """3x3x3 conv, stride 2 on every axis (depth halves too). (B, C, D, H, W) -> (B, C, D/2, H/2, W/2)."""

    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.op = nn.Conv3d(channels, out_channels or channels, 3, stride=2, padding=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(_Block):
    """Trilinear x2 on every axis, then a 3x3x3 conv. (B, C, D, H, W) -> (B, C, 2D, 2H, 2W)."""

    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.conv = nn.Conv3d(channels, out_channels or channels, 3, padding=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="trilinear"))


class EmbedSequential(nn.Sequential):
    """Sequential whose blocks may take the timestep embedding (plain layers, like the stem conv, do not)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _Block) else layer(x)
        return x




#: Pseudo-tap name for the network input ``x_t`` itself in :meth:`DiffusionUNet.encode` (not in ``tap_names()``).
INPUT_TAP = "input"

#: The CPU-scale member of the family (docs/cpu-scale-model.md): in-plane space-to-depth x4, width 16, channel
#: multipliers 1,2,4,8, attention at the bottleneck, GroupNorm(8); 16 x 128 x 128 volumes on the model grid.
CPU_SCALE_CONFIG: Dict[str, object] = {"patch_size": 4, "model_channels": 16, "channel_mult": (1, 2, 4, 8),
                                       "attention_resolutions": (8,), "norm_groups": 8}


class DiffusionUNet(nn.Module):
    """The diffusion U-Net of OrthoDiffusion (guided-diffusion layout, 3D, stride-2 on depth too).

    Args:
        in_channels, out_channels: image channels (1 for MRI).
        model_channels: base width C (64 in the paper); every width must be a multiple of 32 (GroupNorm(32)).
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings, so D, H and W must be
            divisible by ``2**(len(channel_mult) - 1)`` (16 by default).
        num_res_blocks: residual blocks per encoder level (decoder levels have one more).
        attention_resolutions: downsample factors ``ds`` with self-attention (16 -> the last level by default).
        num_heads, num_head_channels: attention heads (``num_head_channels`` != -1 overrides ``num_heads``).
        dropout: dropout inside residual blocks (0 in the paper).
        max_period: of the timestep sinusoids (1000 for the authors' network).
        use_checkpoint: gradient checkpointing of every block while training (same numbers, less memory).
        patch_size: in-plane space-to-depth factor p (CPU-scale configurations). With p > 1 the input
            (B, C_in, D, H, W) is rearranged to (B, C_in*p*p, D, H/p, W/p) before the stem convolution and the
            output back from (B, C_out*p*p, D, H/p, W/p), so the network runs at 1/p of the in-plane size while the
            image keeps its full detail. Taps are then (B, C, D/ds, H/(p*ds), W/(p*ds)). 1 = the authors' layout.
        norm_groups: GroupNorm groups of every block (32 in the authors' network; narrower CPU configurations may
            use fewer so that each group keeps several channels).

    ``forward(x_t, t)`` -> predicted noise; ``encode(x_t, t, taps)`` -> dict of encoder/middle taps.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 1,
        attention_resolutions: Iterable[int] = (16,),
        num_heads: int = 1,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        max_period: float = 1000.0,
        use_checkpoint: bool = False,
        patch_size: int = 1,
        norm_groups: int = GROUPS,
    ):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = int(patch_size)
        self.norm_groups = int(norm_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.channel_mult = tuple(int(m) for m in channel_mult)
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(int(a) for a in attention_resolutions)
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.dropout = dropout
        self.max_period = max_period
        emb_dim = model_channels * 4

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch, ds, skip_chans = self._build_encoder(emb_dim)
        g = self.norm_groups
        self.middle_block = EmbedSequential(
            ResBlock(ch, emb_dim, ch, dropout, g),
            self._attention(ch),
            ResBlock(ch, emb_dim, ch, dropout, g),
        )
        for j in range(3):
            self._tap_channels[f"mid_{j}"] = ch
            self._tap_ds[f"mid_{j}"] = ds
        ch = self._build_decoder(ch, ds, skip_chans, emb_dim)
        self.out = nn.Sequential(GroupNorm32(ch, g), nn.SiLU(),
                                 _zero(nn.Conv3d(ch, out_channels * self.patch_size ** 2, 3, padding=1)))
        self._channels_last = False
        self.use_checkpoint = use_checkpoint

    def _attention(self, ch: int) -> AttentionBlock:
        """A self-attention block over ``ch`` channels with the network's head settings."""
        return AttentionBlock(ch, num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                              groups=self.norm_groups)

    def _build_encoder(self, emb_dim: int) -> Tuple[int, int, List[int]]:
        """The stem convolution and the encoder levels (``input_blocks``, with the ``in_*`` taps' channels and
        downsample factors); returns (channels, downsample factor, skip channels) at the encoder's end."""
        g, mc = self.norm_groups, self.model_channels
        ch = mc * self.channel_mult[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv3d(self.in_channels * self.patch_size ** 2, ch, 3,
                                                                     padding=1))])
        skip_chans: List[int] = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                layers: List[nn.Module] = [ResBlock(ch, emb_dim, mc * mult, self.dropout, g)]
                ch = mc * mult
                if ds in self.attention_resolutions:
                    layers.append(self._attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2
        self._tap_channels: Dict[str, int] = {f"in_{i}": c for i, c in enumerate(skip_chans)}
        self._tap_ds: Dict[str, int] = {}
        d = 1
        for i, blk in enumerate(self.input_blocks):
            if isinstance(blk[0], Downsample):
                d *= 2
            self._tap_ds[f"in_{i}"] = d
        return ch, ds, skip_chans

    def _build_decoder(self, ch: int, ds: int, skip_chans: List[int], emb_dim: int) -> int:
        """The decoder levels (``output_blocks``, each block fed the matching encoder skip); returns its channels."""
        g, mc = self.norm_groups, self.model_channels
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(self.num_res_blocks + 1):
                skip = skip_chans.pop()
                layers = [ResBlock(ch + skip, emb_dim, mc * mult, self.dropout, g)]
                ch = mc * mult
                if ds in self.attention_resolutions:
                    layers.append(self._attention(ch))
                if level and i == self.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        return ch

    # ----------------------------------------------------------------------------------------------------- options
    @property
    def use_checkpoint(self) -> bool:
        return self._use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        self._use_checkpoint = bool(value)
        for m in self.modules():
            if isinstance(m, _Block):
                m.use_checkpoint = self._use_checkpoint

    def to_channels_last_3d(self) -> "DiffusionUNet":
        """Store conv weights channels-last (NDHWC) and feed inputs that way (faster convs on some GPUs/CPUs)."""
        self.to(memory_format=torch.channels_last_3d)
        self._channels_last = True
        return self

    @property
    def downsample_factor(self) -> int:
        """D of inputs must be a multiple of this (H and W of this times ``patch_size``)."""
        return 2 ** (len(self.channel_mult) - 1)

    def input_multiple(self) -> Tuple[int, int, int]:
        """(D, H, W) of an input must be multiples of these."""
        f = self.downsample_factor
        return (f, f * self.patch_size, f * self.patch_size)

    def tap_shape(self, name: str, size: Sequence[int]) -> Tuple[int, int, int]:
        """Spatial size (D, H, W) of tap ``name`` for an input of spatial size ``size`` = (D, H, W)."""
        ds = self.tap_downsample(name)
        d, h, w = (int(v) for v in size)
        return (d // ds, h // (ds * self.patch_size), w // (ds * self.patch_size))

    def _space_to_depth(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C*p*p, D, H/p, W/p) (pixel-unshuffle of each slice)."""
        p = self.patch_size
        if p == 1:
            return x
        b, c, d, h, w = x.shape
        x = x.reshape(b, c, d, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
        return x.reshape(b, c * p * p, d, h // p, w // p)

    def _depth_to_space(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C*p*p, D, h, w) -> (B, C, D, h*p, w*p); the inverse of :meth:`_space_to_depth`."""
        p = self.patch_size
        if p == 1:
            return x
        b, cpp, d, h, w = x.shape
        c = cpp // (p * p)
        x = x.reshape(b, c, p, p, d, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(b, c, d, h * p, w * p)

    # -------------------------------------------------------------------------------------------------------- taps
    def tap_names(self) -> Tuple[str, ...]:
        """All tap names, shallow to deep: ``in_0 .. in_{N-1}, mid_0, mid_1, mid_2``."""
        return tuple(self._tap_channels)

    def tap_channels(self, name: str) -> int:
        """Channel count of a tap (256 for ``mid_*`` in the default network)."""
        self._tap_index(name)
        return self._tap_channels[name]

    def tap_downsample(self, name: str) -> int:
        """Spatial downsample factor of a tap on every axis (16 for ``mid_*`` by default)."""
        self._tap_index(name)
        return self._tap_ds[name]

    def _tap_index(self, name: str) -> int:
        names = self.tap_names()
        if name not in self._tap_channels:
            raise KeyError(f"unknown tap {name!r}; known taps: {', '.join(names)}")
        return names.index(name)

    # ----------------------------------------------------------------------------------------------------- running
    def _prepare(self, x: torch.Tensor, t: Union[torch.Tensor, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        mult = self.input_multiple()
        if any(s % m for s, m in zip(x.shape[2:], mult)):
            what = mult[0] if len(set(mult)) == 1 else mult
            raise ValueError(f"D, H, W must be multiples of {what}, got {tuple(x.shape[2:])}")
        x = self._space_to_depth(x)
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape ({x.shape[0]},) or a scalar, got {tuple(t.shape)}")
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        emb = self.time_embed(timestep_embedding(t, self.model_channels, self.max_period))
        return x, emb

    def forward(self, x_t: torch.Tensor, t: Union[torch.Tensor, int]) -> torch.Tensor:
        """Predicted noise. x_t (B, C_in, D, H, W), t (B,) or scalar -> (B, C_out, D, H, W)."""
        h, emb = self._prepare(x_t, t)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self._depth_to_space(self.out(h))

    def encode(
        self, x_t: torch.Tensor, t: Union[torch.Tensor, int], taps: Sequence[str] = ("mid_0", "mid_1", "mid_2")
    ) -> Dict[str, torch.Tensor]:
        """Encoder/middle-block taps from ONE pass that stops after the deepest requested tap (never the decoder).

        Args:
            x_t: (B, C_in, D, H, W) noised volume.
            t: (B,) or scalar timestep(s).
            taps: names from :meth:`tap_names` (``in_i`` = output of ``input_blocks[i]``; ``mid_0/1/2`` = outputs
                of ``middle_block[0]`` (ResBlock), ``[1]`` (attention), ``[2]`` (ResBlock)), or :data:`INPUT_TAP`
                for ``x_t`` itself (B, C_in, D, H, W), which segmentation heads use for full-resolution detail.

        Returns:
            {name: (B, tap_channels(name), D/ds, H/ds, W/ds)} for exactly the requested names.
        """
        if isinstance(taps, str):
            taps = (taps,)
        if not taps:
            raise ValueError("encode() needs at least one tap")
        wanted = {name: self._tap_index(name) for name in taps if name != INPUT_TAP}
        deepest = max(wanted.values(), default=-1)
        n_in = len(self.input_blocks)
        h, emb = self._prepare(x_t, t)
        out: Dict[str, torch.Tensor] = {INPUT_TAP: x_t} if INPUT_TAP in taps else {}
        for i, block in enumerate(self.input_blocks):
            if i > deepest:
                break
            h = block(h, emb)
            if f"in_{i}" in wanted:
                out[f"in_{i}"] = h
        for j, layer in enumerate(self.middle_block):
            if n_in + j > deepest:
                break
            h = layer(h, emb) if isinstance(layer, _Block) else layer(h)
            if f"mid_{j}" in wanted:
                out[f"mid_{j}"] = h
        return {name: out[name] for name in taps}

    def encoder_parameters(self) -> List[nn.Parameter]:
        """Parameters used by :meth:`encode` (time embedding, input blocks, middle block), e.g. for fine-tuning."""
        return [*self.time_embed.parameters(), *self.input_blocks.parameters(), *self.middle_block.parameters()]

    def config(self) -> Dict[str, object]:
        """Constructor arguments (JSON-serialisable) that rebuild this network."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "model_channels": self.model_channels,
            "channel_mult": list(self.channel_mult),
            "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": list(self.attention_resolutions),
            "num_heads": self.num_heads,
            "num_head_channels": self.num_head_channels,
            "dropout": self.dropout,
            "max_period": self.max_period,
            "patch_size": self.patch_size,
            "norm_groups": self.norm_groups,
        }


@torch.no_grad()
def reference_init_(model: nn.Module) -> nn.Module:
    """Fill every state-dict tensor by a fixed deterministic rule (in place): the weights under which the authors'
    network produced the reference vectors in ``Testing/reference``.

    Keys are sorted alphabetically (index i); element j (row-major) gets ``base = sin(0.37 j + i)``; 1-D ``*.weight``
    -> ``1 + 0.1 base``; other 1-D -> ``0.1 base``; >= 2-D -> ``base / sqrt(n / shape[0])``. Computed in float64.
    Used by the parity test against the authors' network and by any test needing non-trivial deterministic weights.
    """
    state = model.state_dict()
    for i, key in enumerate(sorted(state)):
        tensor = state[key]
        if not tensor.is_floating_point():
            continue
        n = tensor.numel()
        base = torch.sin(0.37 * torch.arange(n, dtype=torch.float64) + i)
        if tensor.dim() == 1:
            values = 1.0 + 0.1 * base if key.endswith(".weight") else 0.1 * base
        else:
            values = base / math.sqrt(n / tensor.shape[0])
        tensor.copy_(values.reshape(tensor.shape).to(tensor.dtype))
    return model
