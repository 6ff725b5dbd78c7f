"""Cosine noise schedule, forward noising, the epsilon loss and the samplers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.model.backbone import DiffusionUNet, reference_init_
from OrthoDiffusionLib.model.schedule import CosineSchedule

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = DiffusionUNet(model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,))
    return reference_init_(model).eval()


def test_alphas_cumprod_matches_authors_schedule():
    vectors = np.load(REFERENCE / "authors_unet_vectors.npz")
    schedule = CosineSchedule()
    assert schedule.alphas_cumprod.dtype == torch.float64 and schedule.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), vectors["alphas_cumprod"], rtol=0, atol=1e-6)
    assert schedule.betas.max() <= 0.999 and schedule.betas[-1] == pytest.approx(0.999)
    x_t = schedule.q_sample(torch.from_numpy(vectors["x0"]), torch.from_numpy(vectors["t"]),
                            torch.from_numpy(vectors["noise"]))
    np.testing.assert_allclose(x_t.numpy(), vectors["x_t"], rtol=0, atol=1e-6)


def test_q_sample_endpoints_and_validation():
    s = CosineSchedule()
    x0, noise = torch.ones(2, 1, 2, 2, 2), torch.zeros(2, 1, 2, 2, 2)
    x = s.q_sample(x0, torch.tensor([0, 999]), noise)
    assert x[0].mean().item() == pytest.approx(s.alphas_cumprod[0].sqrt().item(), abs=1e-7)
    assert x[1].abs().max().item() < 1e-3  # abar_999 ~ 0
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        s.q_sample(x0, 1000, noise)


def test_training_loss_is_mse_of_predicted_noise(tiny_model):
    s = CosineSchedule()
    x0 = torch.rand(2, 1, 4, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 700])
    loss = s.training_loss(tiny_model, x0, t=t, noise=noise)
    with torch.no_grad():
        expected = ((tiny_model(s.q_sample(x0, t, noise), t) - noise) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert s.training_loss(tiny_model, x0, generator=g1).item() == s.training_loss(tiny_model, x0, generator=g2).item()


def test_ddim_deterministic_and_finite(tiny_model):
    s = CosineSchedule()
    shape = (1, 1, 4, 8, 8)
    calls = []
    a = s.ddim_sample(tiny_model, shape, steps=5, generator=torch.Generator().manual_seed(1),
                      progress=lambda stage, f: calls.append((stage, f)))
    b = s.ddim_sample(tiny_model, shape, steps=5, generator=torch.Generator().manual_seed(1))
    c = s.ddim_sample(tiny_model, shape, steps=5, generator=torch.Generator().manual_seed(2))
    assert a.shape == shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls == [("sampling", i / 5) for i in range(1, 6)]
    assert s.ddim_timesteps(5) == (0, 250, 500, 749, 999)
    stochastic = s.ddim_sample(tiny_model, shape, steps=5, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(stochastic).all() and not torch.equal(stochastic, a)


def test_ddpm_ancestral_sampling_runs_all_steps(tiny_model):
    s = CosineSchedule(T=20)
    calls = []
    x = s.ddpm_sample(tiny_model, (2, 1, 4, 8, 8), generator=torch.Generator().manual_seed(0),
                      progress=lambda stage, f: calls.append(f))
    assert x.shape == (2, 1, 4, 8, 8) and torch.isfinite(x).all()
    assert calls == [i / 20 for i in range(1, 21)]
    # the last step returns the (clipped) posterior mean: stays within the data range
    assert x.abs().max() <= 1.0 + 1e-5


def test_ddim_with_a_perfect_denoiser_recovers_the_data():
    """A model that knows x0 predicts eps exactly; DDIM (eta 0) then lands on x0."""
    s = CosineSchedule()
    x0 = torch.linspace(-0.9, 0.9, 32).reshape(1, 1, 2, 4, 4)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x_t, t):
            abar = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1, 1)
            return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    out = s.ddim_sample(Oracle(), x0.shape, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
