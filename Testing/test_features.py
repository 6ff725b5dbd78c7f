"""Tap extraction: controlled noise, averaging over draws, one pass per timestep, gradients on request."""
from __future__ import annotations

import pytest
import torch

from OrthoDiffusionLib.model.backbone import DiffusionUNet, reference_init_
from OrthoDiffusionLib.model.features import extract_tap_grid, extract_taps
from OrthoDiffusionLib.model.schedule import CosineSchedule


@pytest.fixture(scope="module")
def model():
    return reference_init_(DiffusionUNet(model_channels=32, channel_mult=(1, 1, 2, 2, 4))).eval()


@pytest.fixture(scope="module")
def x0():
    return torch.rand(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_taps_equal_encode_of_the_noised_volume(model, x0):
    s = CosineSchedule()
    taps = extract_taps(model, s, x0, 150, ("mid_0", "mid_2"), generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model.encode(s.q_sample(x0, 150, noise), torch.tensor([150, 150]), ("mid_0", "mid_2"))
    assert list(taps) == ["mid_0", "mid_2"]
    for name in taps:
        assert taps[name].shape == (2, 128, 1, 2, 2) and not taps[name].requires_grad
        torch.testing.assert_close(taps[name], expected[name], rtol=0, atol=0)


def test_generator_controls_the_noise_and_draws_average(model, x0):
    s = CosineSchedule()
    a = extract_taps(model, s, x0, 300, ("mid_0",), generator=torch.Generator().manual_seed(1))["mid_0"]
    b = extract_taps(model, s, x0, 300, ("mid_0",), generator=torch.Generator().manual_seed(1))["mid_0"]
    c = extract_taps(model, s, x0, 300, ("mid_0",), generator=torch.Generator().manual_seed(2))["mid_0"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(5)
    singles = [extract_taps(model, s, x0, 300, ("mid_0",), generator=gen)["mid_0"] for _ in range(3)]
    mean = extract_taps(model, s, x0, 300, ("mid_0",), generator=torch.Generator().manual_seed(5), draws=3)["mid_0"]
    torch.testing.assert_close(mean, sum(singles) / 3, rtol=1e-6, atol=1e-6)


def test_one_encoder_pass_per_draw_serves_all_taps(model, x0):
    calls = []
    handle = model.input_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        extract_taps(model, CosineSchedule(), x0, 50, ("in_3", "mid_0", "mid_2"), draws=2)
        assert len(calls) == 2
        calls.clear()
        grid = extract_tap_grid(model, CosineSchedule(), x0, (10, 50, 100), ("mid_0", "mid_2"),
                                generator=torch.Generator().manual_seed(0))
        assert len(calls) == 3
    finally:
        handle.remove()
    assert list(grid) == [(t, n) for t in (10, 50, 100) for n in ("mid_0", "mid_2")]


def test_grad_option_keeps_the_graph(model, x0):
    taps = extract_taps(model, CosineSchedule(), x0, 50, ("mid_2",), generator=torch.Generator().manual_seed(0),
                        grad=True)
    taps["mid_2"].mean().backward()
    assert model.middle_block[2].in_layers[2].weight.grad is not None
    assert all(p.grad is None for p in model.output_blocks.parameters())
    model.zero_grad(set_to_none=True)
