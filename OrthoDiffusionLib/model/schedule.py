"""Noise schedule of the diffusion backbone: cosine betas, forward noising, the epsilon loss and two samplers.

The network (:class:`~OrthoDiffusionLib.model.backbone.DiffusionUNet`) and this schedule are separate objects; samplers take
the model as an argument. All schedule arithmetic is done in float64 and cast to the data dtype at the point of use.

Conventions: ``t`` is an integer in ``[0, T)`` indexing ``alphas_cumprod`` (abar); ``x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import ProgressFn

__all__ = ["CosineSchedule"]

def _cosine_betas(T: int, s: float, max_beta: float) -> torch.Tensor:
    """betas_i = min(1 - f((i+1)/T) / f(i/T), max_beta), f(u) = cos((u + s) / (1 + s) * pi / 2)**2. (T,) float64."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


class CosineSchedule:
    """Cosine noise schedule (Nichol & Dhariwal) with T steps, offset ``s`` and betas clipped at ``max_beta``.

    Attributes (float64, shape (T,)): ``betas``, ``alphas_cumprod``, ``alphas_cumprod_prev``,
    ``posterior_variance`` (beta-tilde).
    """

    def __init__(self, T: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        self.T = int(T)
        self.s = float(s)
        self.max_beta = float(max_beta)
        self.betas = _cosine_betas(self.T, self.s, self.max_beta)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"CosineSchedule(T={self.T}, s={self.s}, max_beta={self.max_beta})"

    # ---------------------------------------------------------------------------------------------------- helpers
    def _gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, ...) to broadcast against ``like`` (B, ...), in like's dtype/device."""
        out = values.to(t.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def as_timesteps(self, t: Union[int, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """A scalar or (batch,) timestep(s) as a checked (batch,) long tensor on ``device``."""
        t = torch.as_tensor(t, device=device, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"expected t of shape ({batch},) or a scalar, got {tuple(t.shape)}")
        if (t < 0).any() or (t >= self.T).any():
            raise ValueError(f"timesteps must lie in [0, {self.T}), got min {int(t.min())} max {int(t.max())}")
        return t

    def sample_timesteps(self, batch: int, generator: Optional[torch.Generator] = None,
                         device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Uniform integer timesteps in [0, T). (batch,) long."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return torch.randint(0, self.T, (batch,), generator=generator, device=gen_device).to(device)

    @staticmethod
    def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Standard normal noise shaped like x, drawn on the generator's device (so results do not depend on where
        the model runs), then moved to x's device/dtype."""
        gen_device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(x.device, x.dtype)

    # -------------------------------------------------------------------------------------------------- forward
    def q_sample(self, x0: torch.Tensor, t: Union[int, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise (B, ...); t (B,) or scalar -> (B, ...)."""
        t = self.as_timesteps(t, x0.shape[0], x0.device)
        abar = self.alphas_cumprod
        return self._gather(abar.sqrt(), t, x0) * x0 + self._gather((1 - abar).sqrt(), t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        abar = self.alphas_cumprod
        return (x_t - self._gather((1 - abar).sqrt(), t, x_t) * eps) / self._gather(abar.sqrt(), t, x_t)

    def training_loss(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        t: Optional[Union[int, torch.Tensor]] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Epsilon-prediction MSE (the paper's L2 objective), averaged over all elements; a scalar tensor.

        Args:
            model: called as ``model(x_t, t)`` -> predicted noise shaped like x0.
            x0: (B, C, D, H, W) clean volumes in [-1, 1].
            t: (B,) timesteps; uniform in [0, T) from ``generator`` when None.
            noise: (B, C, D, H, W); standard normal from ``generator`` when None.
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, x0.device)
        t = self.as_timesteps(t, x0.shape[0], x0.device)
        if noise is None:
            noise = self.randn_like(x0, generator)
        x_t = self.q_sample(x0, t, noise)
        eps = model(x_t, t)
        return F.mse_loss(eps.float(), noise.float())

    # ------------------------------------------------------------------------------------------------- samplers
    @torch.no_grad()
    def ddpm_sample(
        self,
        model: nn.Module,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        progress: Optional[ProgressFn] = None,
        device: Optional[Union[str, torch.device]] = None,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """Ancestral sampling through all T steps (posterior mean with beta-tilde variance, x0 clipped to [-1, 1]).

        Args:
            model: the denoiser, ``model(x_t, t)`` -> eps.
            shape: (B, C, D, H, W) of the volumes to draw.
            generator: controls every random draw (a CPU generator gives the same volumes on any device).
            progress: ``progress("sampling", fraction of the steps done)`` after every step.
            device: where the model runs (default: the model's parameters' device).
        Returns:
            (B, C, D, H, W) float32 volumes.
        """
        device = torch.device(device) if device is not None else next(model.parameters()).device
        x = self._randn(shape, generator, device)
        abar, abar_prev, betas = self.alphas_cumprod, self.alphas_cumprod_prev, self.betas
        coef0 = betas * abar_prev.sqrt() / (1 - abar)
        coeft = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
        log_var = torch.log(torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        for n, i in enumerate(reversed(range(self.T))):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            eps = model(x, t).float()
            x0 = self.predict_x0(x, t, eps)
            if clip_denoised:
                x0 = x0.clamp(-1, 1)
            mean = self._gather(coef0, t, x) * x0 + self._gather(coeft, t, x) * x
            if i > 0:
                x = mean + (0.5 * self._gather(log_var, t, x)).exp() * self._randn(shape, generator, device)
            else:
                x = mean
            if progress is not None:
                progress("sampling", (n + 1) / self.T)
        return x

    @torch.no_grad()
    def ddim_sample(
        self,
        model: nn.Module,
        shape: Sequence[int],
        steps: int = 50,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        progress: Optional[ProgressFn] = None,
        device: Optional[Union[str, torch.device]] = None,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """DDIM sampling on ``steps`` evenly spaced timesteps (eta = 0: deterministic given the initial noise).

        Returns (B, C, D, H, W) float32 volumes; arguments as :meth:`ddpm_sample`.
        """
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must lie in [1, {self.T}], got {steps}")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        seq = self.ddim_timesteps(steps)
        x = self._randn(shape, generator, device)
        abar = self.alphas_cumprod
        for n, (i, i_prev) in enumerate(zip(seq[::-1], [*seq[::-1][1:], -1])):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            eps = model(x, t).float()
            x0 = self.predict_x0(x, t, eps)
            if clip_denoised:
                x0 = x0.clamp(-1, 1)
                eps = (x - abar[i].sqrt().item() * x0) / (1 - abar[i]).sqrt().item()
            a_t = abar[i].item()
            a_prev = abar[i_prev].item() if i_prev >= 0 else 1.0
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * self._randn(shape, generator, device)
            if progress is not None:
                progress("sampling", (n + 1) / len(seq))
        return x

    def ddim_timesteps(self, steps: int) -> Tuple[int, ...]:
        """``steps`` evenly spaced timesteps from 0 to T-1 (ascending; a single step uses T-1)."""
        if steps == 1:
            return (self.T - 1,)
        return tuple(sorted({int(round(i * (self.T - 1) / (steps - 1))) for i in range(steps)}))

    @staticmethod
    def _randn(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=gen_device).to(device)
