"""Segmentation baselines (MONAI 3D U-Net, UNETR): configuration and forward shapes at a small size."""
import pytest
import torch

from OrthoDiffusionLib.training.segmentation.baselines import UNET_CHANNELS, build_seg_baseline, unet_strides

pytest.importorskip("monai")


def test_unet_strides_keep_the_slice_axis():
    assert unet_strides((16, 256, 256)) == ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert unet_strides((32, 256, 256)) == ((2, 2, 2),) * 4
    assert unet_strides((8, 64, 64)) == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    # the bottleneck of a 16 x 256 x 256 volume is 2 x 16 x 16
    size = [16, 256, 256]
    for s in unet_strides(size):
        size = [a // b for a, b in zip(size, s)]
    assert size == [2, 16, 16]


def test_unet3d_forward_small():
    net = build_seg_baseline("unet3d", num_classes=12, img_size=(16, 32, 32))
    assert tuple(net.channels) == UNET_CHANNELS == (64, 64, 128, 128, 256)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 32, 32))
    assert out.shape == (1, 12, 16, 32, 32)


def test_unetr_forward_small():
    net = build_seg_baseline("unetr", num_classes=12, img_size=(16, 32, 32))
    assert net.hidden_size == 768 and net.vit.blocks[0].attn.num_heads == 12
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 32, 32))
    assert out.shape == (1, 12, 16, 32, 32)


def test_bad_baseline_arguments():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_seg_baseline("unetr", 12, (16, 40, 40))
    with pytest.raises(ValueError, match="unknown segmentation baseline"):
        build_seg_baseline("resnet", 12, (16, 32, 32))
