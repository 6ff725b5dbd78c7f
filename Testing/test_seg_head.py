"""Segmentation heads: output shapes at full and reduced size, tap handling, gradients."""
import pytest
import torch

from OrthoDiffusionLib.model.seg_head import (DEFAULT_SKIP_TAPS, BottleneckSegHead, SkipSegHead, build_seg_head,
                                        encoder_tap_channels)

# (D, H, W) of the taps for a 16 x 32 x 32 input (the 16 x 256 x 256 sizes divided by 8 in H and W)
SMALL_SIZES = {"mid_2": (1, 2, 2), "in_9": (1, 2, 2), "in_8": (1, 2, 2), "in_6": (2, 4, 4), "in_4": (4, 8, 8),
               "in_2": (8, 16, 16), "in_1": (16, 32, 32)}


def _taps(width, batch=2, names=SMALL_SIZES):
    ch = encoder_tap_channels(width)
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(batch, ch[k], *names[k], generator=g) for k in names}


def test_tap_channels_of_default_network():
    ch = encoder_tap_channels(64)
    assert [ch[f"in_{i}"] for i in range(10)] == [64, 64, 64, 64, 64, 128, 128, 128, 128, 256]
    assert ch["mid_0"] == ch["mid_2"] == 256
    assert encoder_tap_channels(16)["in_5"] == 32


def test_bottleneck_head_full_size():
    head = build_seg_head("bottleneck", num_classes=12)
    assert isinstance(head, BottleneckSegHead) and head.required_taps == ("mid_2",)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 128), (128, 64), (64, 32), (32, 16)]
    assert all(c.kernel_size == (4, 4, 4) and c.stride == (2, 2, 2) and c.padding == (1, 1, 1) for c in convs)
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 4 and all(n.num_groups == 8 for n in norms)
    with torch.no_grad():
        out = head({"mid_2": torch.randn(1, 256, 1, 16, 16)})
    assert out.shape == (1, 12, 16, 256, 256)


@pytest.mark.parametrize("name", ["bottleneck", "skip"])
def test_heads_small_size_and_gradients(name):
    head = build_seg_head(name, num_classes=12, model_channels=8, decoder_channels=(32, 16, 16, 8))
    taps = _taps(8)
    for t in taps.values():
        t.requires_grad_(True)
    out = head(taps)
    assert out.shape == (2, 12, 16, 32, 32)
    out.square().mean().backward()
    for tap in head.required_taps:          # every required tap influences the output
        assert taps[tap].grad is not None and taps[tap].grad.abs().sum() > 0
    unused = set(taps) - set(head.required_taps)
    assert all(taps[t].grad is None for t in unused)


def test_skip_head_taps_and_custom_set():
    head = build_seg_head("skip", 12, model_channels=8, decoder_channels=(32, 16, 16, 8))
    assert isinstance(head, SkipSegHead)
    assert head.required_taps == ("mid_2", *[n for n, _ in DEFAULT_SKIP_TAPS]) == \
        ("mid_2", "in_8", "in_6", "in_4", "in_2")
    custom = build_seg_head("skip", 5, model_channels=8, bottleneck_tap="mid_0",
                            skip_taps=(("in_9", 0), ("in_1", 4)), decoder_channels=(32, 16, 16, 8))
    taps = _taps(8, batch=1)
    taps["mid_0"] = taps.pop("mid_2")
    assert custom.required_taps == ("mid_0", "in_9", "in_1")
    assert custom(taps).shape == (1, 5, 16, 32, 32)


def test_output_size_resampling_and_errors():
    head = build_seg_head("bottleneck", 3, model_channels=8, decoder_channels=(16, 16, 8, 8))
    taps = _taps(8, batch=1)
    assert head(taps, output_size=(16, 30, 30)).shape == (1, 3, 16, 30, 30)
    with pytest.raises(KeyError, match="mid_2"):
        head({"in_8": taps["in_8"]})
    skip = build_seg_head("skip", 3, model_channels=8, decoder_channels=(16, 16, 8, 8))
    bad = dict(taps)
    bad["in_6"] = torch.randn(1, 16, 3, 4, 4)
    with pytest.raises(ValueError, match="in_6"):
        skip(bad)
    with pytest.raises(ValueError, match="unknown segmentation head"):
        build_seg_head("transformer", 3)
    with pytest.raises(ValueError, match="distinct stages"):
        build_seg_head("skip", 3, skip_taps=(("in_8", 0), ("in_9", 0)))
