"""Segmentation loss: 0.2 CE + soft Dice, ignore index, per-plane class mask from the label table."""
import pytest
import torch

from OrthoDiffusionLib import labels
from OrthoDiffusionLib.training.segmentation.losses import (DEFAULT_IGNORE_INDEX, SegmentationLoss,
                                                            class_mask_for_plane, num_seg_classes)


def _target(seed=0, shape=(2, 4, 8, 8), classes=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, shape, generator=g)


def _onehot_logits(target, classes=12, scale=30.0):
    return torch.nn.functional.one_hot(target, classes).movedim(-1, 1).float() * scale


def test_num_classes_and_plane_masks_from_label_table():
    assert num_seg_classes() == 12
    sag = class_mask_for_plane("sagittal")
    cor = class_mask_for_plane("coronal")
    assert sag.all() and sag.numel() == 12
    excluded = {s.value for s in labels.knee_structures()} - {s.value for s in labels.knee_structures("coronal")}
    keys = {s.key for s in labels.knee_structures() if s.value in excluded}
    assert keys == {"patella", "patellar_cartilage"}
    assert sorted((~cor).nonzero().flatten().tolist()) == sorted(excluded)
    assert cor[0]


def test_perfect_prediction_has_near_zero_loss():
    loss = SegmentationLoss(12)
    target = _target()
    terms = loss.terms(_onehot_logits(target), target)
    assert terms["dice_loss"] < 1e-4 and terms["ce"] < 1e-4 and terms["loss"] < 1e-4
    wrong = loss.terms(_onehot_logits((target + 1) % 12), target)
    assert wrong["dice_loss"] > 0.99 and wrong["loss"] > 1.0


def test_weighting_is_point_two_ce_plus_dice():
    loss = SegmentationLoss(12)
    target = _target(1)
    logits = torch.randn(2, 12, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = loss.terms(logits, target)
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(t["ce"], ce, atol=1e-5)
    assert torch.allclose(t["loss"], 0.2 * ce + t["dice_loss"], atol=1e-6)
    # Dice over the foreground only: a wrong background channel alone does not change the Dice term
    probs = torch.softmax(logits, 1)
    oh = torch.nn.functional.one_hot(target, 12).movedim(-1, 1).float()
    dims = (0, 2, 3, 4)
    dice = (2 * (probs * oh).sum(dims) + 1e-5) / (probs.sum(dims) + oh.sum(dims) + 1e-5)
    assert torch.allclose(t["dice_loss"], 1 - dice[1:].mean(), atol=1e-6)


def test_ignored_voxels_have_no_effect_and_no_gradient():
    loss = SegmentationLoss(12)
    target = _target(2)
    ignore = torch.zeros_like(target, dtype=torch.bool)
    ignore[:, :, :3] = True
    target_ign = target.masked_fill(ignore, DEFAULT_IGNORE_INDEX)
    logits = torch.randn(2, 12, 4, 8, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    value = loss(logits, target_ign)
    value.backward()
    grad = logits.grad.movedim(1, -1)
    assert grad[ignore].abs().max() == 0
    assert grad[~ignore].abs().max() > 0
    # changing the logits of ignored voxels does not change the loss
    other = logits.detach().clone()
    other.movedim(1, -1)[ignore] = torch.randn(int(ignore.sum()), 12) * 10
    assert torch.allclose(loss(other, target_ign), value.detach(), atol=1e-6)
    # all ignored -> zero loss, still differentiable
    all_ign = torch.full_like(target, DEFAULT_IGNORE_INDEX)
    z = loss(logits, all_ign)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_coronal_loss_excludes_patella_by_table():
    cor = SegmentationLoss.for_plane("coronal")
    sag = SegmentationLoss.for_plane("sagittal")
    target = _target(5)
    excluded = [v for v in range(12) if not bool(class_mask_for_plane("coronal")[v])]
    # a target holding patella voxels: on coronal they count as background
    prepared = cor.prepare_target(target)
    assert not torch.isin(prepared, torch.tensor(excluded)).any()
    assert torch.equal(prepared[torch.isin(target, torch.tensor(excluded))],
                       torch.zeros(int(torch.isin(target, torch.tensor(excluded)).sum()), dtype=torch.long))
    # the logits of excluded classes have no influence on the coronal loss (masked out of the softmax)
    logits = torch.randn(2, 12, 4, 8, 8, generator=torch.Generator().manual_seed(6), requires_grad=True)
    cor(logits, target).backward()
    assert logits.grad[:, excluded].abs().max() == 0
    assert logits.grad[:, [0, 1, 2]].abs().max() > 0
    # a perfect coronal prediction (patella predicted as background) has near-zero loss on coronal
    assert cor(_onehot_logits(prepared), target) < 1e-4
    assert sag(_onehot_logits(prepared), target) > 0.05
    ign = SegmentationLoss.for_plane("coronal", excluded_as="ignore")
    assert (ign.prepare_target(target) == DEFAULT_IGNORE_INDEX).sum() == torch.isin(target, torch.tensor(excluded)).sum()


def test_bad_inputs():
    loss = SegmentationLoss(12)
    target = _target()
    with pytest.raises(ValueError, match="do not match"):
        loss(torch.zeros(2, 11, 4, 8, 8), target)
    with pytest.raises(ValueError, match="outside"):
        loss(torch.zeros(2, 12, 4, 8, 8), target.masked_fill(target == 3, 40))
    with pytest.raises(ValueError, match="background"):
        SegmentationLoss(3, torch.tensor([False, True, True]))


def test_class_balanced_ce_weights_and_gradient_on_a_rare_class():
    torch.manual_seed(0)
    target = torch.zeros(1, 4, 8, 8, dtype=torch.long)
    target[0, 1, 2, 2] = 10                        # one voxel of a rare class (the ACL at low resolution)
    target[0, 2:, :, :4] = 1                       # 64 voxels of a large one
    target[0, 0, 0, 0] = 255                       # unlabeled: neither counted nor weighted
    loss = SegmentationLoss(12, ce_class_balance=True)
    labels = target[target != 255]
    w = loss._balance_weights(labels)
    counts = torch.bincount(labels, minlength=12).float()
    assert torch.isclose(w[labels].mean(), torch.tensor(1.0))
    assert torch.isclose(w[10] / w[1], (counts[1] / counts[10]).sqrt())
    assert float(w[2]) == 0.0                      # absent class
    # the rare voxel's CE gradient is much larger with balancing than without
    logits = torch.randn(1, 12, 4, 8, 8, requires_grad=True)
    plain = SegmentationLoss(12, ce_weight=1.0)
    g_plain = torch.autograd.grad(plain.terms(logits, target)["ce"], logits)[0][0, 10, 1, 2, 2].abs()
    balanced = SegmentationLoss(12, ce_weight=1.0, ce_class_balance=True)
    g_bal = torch.autograd.grad(balanced.terms(logits, target)["ce"], logits)[0][0, 10, 1, 2, 2].abs()
    assert float(g_bal) > 5 * float(g_plain)
    # without balancing the result is the paper's loss, unchanged
    paper = SegmentationLoss(12)(logits, target)
    assert torch.isclose(paper, SegmentationLoss(12, ce_class_balance=False)(logits, target))
