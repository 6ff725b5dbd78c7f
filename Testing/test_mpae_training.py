"""MPAE gate training on fixed logits, out-of-fold predictions, weighted BCE, Sankey rows."""
import numpy as np
import pytest
import torch

from OrthoDiffusionLib.model.fusion import MPAEFusion, plane_weights_for
from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.training.diagnosis.losses import positive_class_weights, weighted_bce
from OrthoDiffusionLib.training.diagnosis.mpae import mean_plane_weights, out_of_fold_predictions, train_mpae_gate


def synthetic_logits(n=800, seed=0):
    """Label 0 is seen on sagittal, label 1 on axial; the other planes give uninformative logits."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 2, generator=g) < 0.5).float()
    noise = lambda: torch.randn(n, 2, generator=g)
    signal = 3 * (2 * y - 1) + 0.3 * noise()
    z = {p: noise() for p in PLANES}
    z["sagittal"][:, 0] = signal[:, 0]
    z["axial"][:, 1] = signal[:, 1]
    return z, y


def test_gate_learns_the_informative_plane_per_label():
    torch.manual_seed(0)
    z, y = synthetic_logits()
    mpae = MPAEFusion(16, 2)
    history = train_mpae_gate(mpae, z, y, epochs=40, seed=0)
    assert history[-1] < 0.6 * history[0]
    mpae.eval()
    w = plane_weights_for(mpae, plane_logits=z)
    rows = mean_plane_weights(w, ["first", "second"])
    assert rows[0]["sagittal"] > 0.6 and rows[1]["axial"] > 0.6
    assert sum(rows[0][p] for p in PLANES) == pytest.approx(1.0)
    # heads untouched by gate training
    assert all(p.grad is None for p in mpae.heads.parameters())


def test_out_of_fold_predictions_never_see_their_patient():
    pids = np.repeat(np.arange(20), 2)
    y = np.tile([[1.0], [0.0]], (20, 1))

    def fit_predict(train, held):
        assert not set(pids[train]) & set(pids[held])
        return np.full((len(held), 1), y[train].mean())

    seen = []
    oof = out_of_fold_predictions(pids, fit_predict, 5, progress=lambda stage, f: seen.append(f))
    assert oof.shape == (40, 1) and np.isfinite(oof).all() and seen == [0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(ValueError, match="shape"):
        out_of_fold_predictions(pids, lambda tr, he: np.zeros((1, 1)), 5)


def test_weighted_bce_and_pos_weight():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    torch.testing.assert_close(weighted_bce(logits, targets), per.mean())
    torch.testing.assert_close(weighted_bce(logits, targets, torch.tensor([0.25, 0.75])),
                               0.25 * per[0] + 0.75 * per[1])
    labels = torch.tensor([[1, 0], [0, 0], [0, 0], [0, 0]])
    torch.testing.assert_close(positive_class_weights(labels, max_weight=10), torch.tensor([3.0, 10.0]))
    pw = torch.tensor([3.0, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none",
                                                                    pos_weight=pw).mean(1).mean()
    torch.testing.assert_close(weighted_bce(logits, targets, pos_weight=pw), expected)


def test_mean_plane_weights_shape_check():
    with pytest.raises(ValueError, match="do not match"):
        mean_plane_weights(np.ones((4, 3)) / 3, ["a", "b"])
    rows = mean_plane_weights(np.array([[0.2, 0.3, 0.5]]), ["a"])
    assert rows == [{"label": "a", "sagittal": 0.2, "coronal": 0.3, "axial": 0.5}]
