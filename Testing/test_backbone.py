"""The diffusion U-Net: parity with the authors' network, state-dict layout, taps, options."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from OrthoDiffusionLib.model.backbone import AttentionBlock, DiffusionUNet, reference_init_, timestep_embedding

REFERENCE = Path(__file__).parent / "reference"
TINY = dict(model_channels=32, channel_mult=(1, 1, 2, 2, 4))


def reference_weights_rule(key_index: int, key: str, shape: tuple) -> torch.Tensor:
    """The reference weights rule written out independently of ``reference_init_`` (test helper)."""
    n = int(np.prod(shape))
    j = np.arange(n, dtype=np.float64)
    base = np.sin(0.37 * j + key_index)
    if len(shape) == 1:
        values = 1 + 0.1 * base if key.endswith(".weight") else 0.1 * base
    else:
        values = base / math.sqrt(n / shape[0])
    return torch.from_numpy(values.reshape(shape).astype(np.float32))


@pytest.fixture(scope="module")
def vectors():
    return np.load(REFERENCE / "authors_unet_vectors.npz")


@pytest.fixture(scope="module")
def reference_model():
    model = DiffusionUNet()
    reference_init_(model)
    return model.eval()


def read_tsv():
    lines = (REFERENCE / "authors_unet_state_dict.tsv").read_text().splitlines()[1:]
    return [(k, tuple(int(s) for s in shape.split("x"))) for k, shape in (line.split("\t") for line in lines)]


def test_state_dict_keys_and_shapes_match_authors():
    model = DiffusionUNet()
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(ours) == 244
    assert ours == read_tsv()
    assert sum(p.numel() for p in model.parameters()) == 34_524_545


def test_reference_init_follows_the_written_rule():
    model = reference_init_(DiffusionUNet(model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,)))
    state = model.state_dict()
    for i, key in enumerate(sorted(state)):
        expected = reference_weights_rule(i, key, tuple(state[key].shape))
        torch.testing.assert_close(state[key], expected, rtol=0, atol=1e-7)


def test_parity_with_authors_network(vectors, reference_model):
    x_t = torch.from_numpy(vectors["x_t"])
    t = torch.from_numpy(vectors["t"])
    with torch.no_grad():
        eps = reference_model(x_t, t)
        taps = reference_model.encode(x_t, t, reference_model.tap_names())
    assert eps.shape == vectors["eps_pred"].shape
    np.testing.assert_allclose(eps.numpy(), vectors["eps_pred"], rtol=0, atol=1e-4)
    for j in range(3):
        assert taps[f"mid_{j}"].shape == (2, 256, 1, 2, 2)
        np.testing.assert_allclose(taps[f"mid_{j}"].numpy(), vectors[f"mid_{j}"], rtol=0, atol=1e-4)
    n_in = sum(1 for k in vectors.files if k.endswith("_shape"))
    assert n_in == 10
    for i in range(n_in):
        tap = taps[f"in_{i}"]
        assert tuple(tap.shape) == tuple(vectors[f"in_{i}_shape"])
        flat = tap.reshape(tap.shape[0], -1)
        np.testing.assert_allclose(flat.mean(1).numpy(), vectors[f"in_{i}_mean"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(flat.std(1).numpy(), vectors[f"in_{i}_std"], rtol=0, atol=1e-4)


def test_parity_detects_a_wrong_timestep_embedding(vectors):
    """The parity check is sharp: max_period 10000 (guided-diffusion's default) gives a different network."""
    model = reference_init_(DiffusionUNet(max_period=10000.0)).eval()
    with torch.no_grad():
        mid = model.encode(torch.from_numpy(vectors["x_t"]), torch.from_numpy(vectors["t"]), ("mid_0",))["mid_0"]
    assert np.abs(mid.numpy() - vectors["mid_0"]).max() > 1e-3


@pytest.mark.parametrize("heads", [1, 2])
def test_sdpa_attention_equals_legacy_qkv_formula(heads):
    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=heads)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 64, 2, 3, 4)
    with torch.no_grad():
        got = block(x)
        # legacy guided-diffusion formula, written with einsum
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        qkv = block.qkv(block.norm(flat))
        ch = c // heads
        q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        expected = (flat + block.proj_out(a)).reshape(x.shape)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_is_cos_then_sin_with_period_1000():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    freqs = 1000.0 ** (-np.arange(4) / 4)
    expected = np.concatenate([np.cos(7 * freqs), np.sin(7 * freqs)])
    np.testing.assert_allclose(emb[1].numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(emb[0].numpy(), [1, 1, 1, 1, 0, 0, 0, 0])


def test_encode_returns_only_requested_taps_and_never_runs_the_decoder():
    model = reference_init_(DiffusionUNet(**TINY)).eval()
    ran = []
    for name in ("input_blocks", "middle_block", "output_blocks"):
        for idx, child in enumerate(getattr(model, name)):
            child.register_forward_hook(lambda m, i, o, tag=f"{name}.{idx}": ran.append(tag))
    model.out.register_forward_hook(lambda m, i, o: ran.append("out"))
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        taps = model.encode(x, torch.tensor([3, 50]), taps=("in_3",))
    assert list(taps) == ["in_3"]
    assert taps["in_3"].shape == (2, 32, 8, 16, 16)
    assert ran == ["input_blocks.0", "input_blocks.1", "input_blocks.2", "input_blocks.3"]

    ran.clear()
    with torch.no_grad():
        taps = model.encode(x, torch.tensor([3, 50]), taps=("mid_0", "in_5"))
    assert list(taps) == ["mid_0", "in_5"]
    assert not any(tag.startswith(("output_blocks", "out")) for tag in ran)
    assert "middle_block.0" in ran and "middle_block.1" not in ran
    assert taps["mid_0"].shape == (2, 128, 1, 2, 2)

    ran.clear()
    with torch.no_grad():
        full = model(x, torch.tensor([3, 50]))
    assert any(tag.startswith("output_blocks") for tag in ran) and full.shape == x.shape


def test_encode_taps_equal_the_full_forward_intermediates():
    model = reference_init_(DiffusionUNet(**TINY)).eval()
    x, t = torch.randn(1, 1, 16, 32, 32), torch.tensor([10])
    seen = {}
    model.middle_block[2].register_forward_hook(lambda m, i, o: seen.setdefault("mid_2", o))
    model.input_blocks[4].register_forward_hook(lambda m, i, o: seen.setdefault("in_4", o))
    with torch.no_grad():
        model(x, t)
        taps = model.encode(x, t, ("in_4", "mid_2"))
    torch.testing.assert_close(taps["mid_2"], seen["mid_2"], rtol=0, atol=0)
    torch.testing.assert_close(taps["in_4"], seen["in_4"], rtol=0, atol=0)


def test_tap_metadata_and_errors():
    model = DiffusionUNet()
    assert model.tap_names()[-3:] == ("mid_0", "mid_1", "mid_2")
    assert model.tap_channels("mid_1") == 256 and model.tap_channels("in_0") == 64
    assert model.tap_downsample("mid_0") == 16 and model.tap_downsample("in_2") == 2
    with pytest.raises(KeyError, match="unknown tap 'mid_3'"):
        model.tap_channels("mid_3")
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode(torch.zeros(1, 1, 12, 32, 32), 0, ("mid_0",))


def test_full_size_mid_taps_are_256x1x16x16():
    model = DiffusionUNet().eval()
    with torch.no_grad():
        taps = model.encode(torch.zeros(1, 1, 16, 256, 256), torch.tensor([150]), ("mid_0", "mid_1", "mid_2"))
    assert {k: tuple(v.shape) for k, v in taps.items()} == {f"mid_{j}": (1, 256, 1, 16, 16) for j in range(3)}


def test_numerically_neutral_options():
    torch.manual_seed(0)
    model = reference_init_(DiffusionUNet(**TINY))
    x, t = torch.randn(2, 1, 16, 16, 16), torch.tensor([5, 900])
    with torch.no_grad():
        base = model(x, t)
    # gradient checkpointing: same output and same gradients
    model.zero_grad()
    model(x, t).square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.use_checkpoint = True
    model.zero_grad()
    out = model(x, t)
    out.square().mean().backward()
    torch.testing.assert_close(out.detach(), base, rtol=0, atol=0)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    model.use_checkpoint = False
    # channels-last-3d storage
    with torch.no_grad():
        cl = model.to_channels_last_3d()(x, t)
    torch.testing.assert_close(cl, base, rtol=1e-4, atol=1e-4)
    # bf16 autocast runs, keeps GroupNorm in float32 and stays close
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t)
    assert low.dtype == torch.bfloat16
    assert (low.float() - base).abs().max() < 0.1 * base.abs().max()
