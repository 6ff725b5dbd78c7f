"""Anatomy-respecting augmentation: in-plane affine, intensity, left-right mirror keeping labels."""
import pytest
import torch

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.training.segmentation.augment import LR_AXIS, SegAugment

NO_INTENSITY = dict(gamma=(1.0, 1.0), contrast=0.0, brightness=0.0, noise_std=0.0)


def _sample(seed=0, shape=(16, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(shape, dtype=torch.long)
    for v in (1, 4, 8, 9):      # femur, femoral cartilage, medial and lateral meniscus as blocks
        z, y, x = (int(torch.randint(0, n - 6, (1,), generator=g)) for n in shape)
        lab[z:z + 6, y:y + 10, x:x + 10] = v
    img = (lab.float() / 6.0 - 1.0).unsqueeze(0)      # intensity encodes the label
    return img, lab


def test_mirror_flips_the_left_right_axis_and_keeps_labels():
    img, lab = _sample()
    for plane in ("sagittal", "coronal", "axial"):
        aug = SegAugment(plane, p_mirror=1.0, p_affine=0.0, **NO_INTENSITY)
        out_img, out_lab = aug(img, lab)
        ax = LR_AXIS[plane]
        assert torch.equal(out_lab, lab.flip(ax))
        assert torch.allclose(out_img, img.flip(ax + 1), atol=1e-6)
        medial = labels.structure_by_key()["medial_meniscus"].value
        assert (out_lab == medial).sum() == (lab == medial).sum()     # medial stays medial (no relabeling)
    assert LR_AXIS == {"sagittal": 0, "coronal": 2, "axial": 2}


def test_identity_affine_is_exact_and_slices_are_independent():
    img, lab = _sample(1)
    aug = SegAugment("coronal", p_mirror=0.0, p_affine=1.0, rotate_deg=0.0, scale=(1.0, 1.0), translate=0.0,
                     **NO_INTENSITY)
    out_img, out_lab = aug(img, lab)
    assert torch.equal(out_lab, lab) and torch.allclose(out_img, img, atol=1e-5)
    one_slice = torch.zeros_like(lab)
    one_slice[5, 8:20, 8:20] = 2
    rot = SegAugment("coronal", p_mirror=0.0, p_affine=1.0, rotate_deg=30.0, **NO_INTENSITY,
                     generator=torch.Generator().manual_seed(0))
    _, moved = rot((one_slice.float() / 6 - 1).unsqueeze(0), one_slice)
    assert moved[5].sum() > 0 and moved[torch.arange(16) != 5].sum() == 0


def test_random_affine_moves_image_and_labels_together():
    img, lab = _sample(2)
    aug = SegAugment("sagittal", p_mirror=0.5, p_affine=1.0, rotate_deg=25.0, **NO_INTENSITY,
                     generator=torch.Generator().manual_seed(3))
    out_img, out_lab = aug(img.unsqueeze(0).repeat(2, 1, 1, 1, 1), lab.unsqueeze(0).repeat(2, 1, 1, 1))
    assert out_img.shape == (2, 1, 16, 32, 32) and out_lab.shape == (2, 16, 32, 32)
    assert not torch.equal(out_lab[0], lab)
    assert set(out_lab.unique().tolist()) <= {0, 1, 4, 8, 9}
    # away from label boundaries the image still encodes the label under it
    padded = torch.nn.functional.pad(out_lab.float().unsqueeze(1), (1, 1, 1, 1, 0, 0), mode="replicate")
    mx = torch.nn.functional.max_pool3d(padded, (1, 3, 3), stride=1).squeeze(1)
    mn = -torch.nn.functional.max_pool3d(-padded, (1, 3, 3), stride=1).squeeze(1)
    interior = (mx == mn)
    decoded = torch.round((out_img[:, 0] + 1.0) * 6.0).long()
    assert interior.float().mean() > 0.5
    assert (decoded[interior] == out_lab[interior]).float().mean() > 0.99


def test_intensity_stays_in_range_and_padding_options():
    img, lab = _sample(4)
    aug = SegAugment("axial", generator=torch.Generator().manual_seed(5), ignore_index=255, rotate_deg=45.0,
                     p_affine=1.0)
    out_img, out_lab = aug(img, lab)
    assert out_img.shape == img.shape and out_lab.shape == lab.shape
    assert out_img.min() >= -1.0 and out_img.max() <= 1.0
    assert (out_lab == 255).any()                 # the corners rotated in from outside are unlabeled
    with pytest.raises(ValueError, match="unknown plane"):
        SegAugment("oblique")
    with pytest.raises(ValueError, match="expected"):
        aug(img, lab[:8])
