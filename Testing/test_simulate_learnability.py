"""Learnability: labels must be visible in the simulated images, not only in the CSV.

A small 3D CNN is trained on a small simulated cohort (single sagittal series, 64 x 64 matrix, 16 slices, upper
48 x 48 crop, preprocessing-like normalisation to [-1, 1]) and evaluated on held-out exams: joint effusion AUROC > 0.8, ACL tear above chance.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
metrics = pytest.importorskip("sklearn.metrics")

from OrthoDiffusionLib.simulate.cohort import plan_cohort, simulate_exam  # noqa: E402

N_TRAIN, N_TEST = 140, 60


def _volume(seed: int, labels: dict) -> np.ndarray:
    exam = simulate_exam(seed, labels, planes=("sagittal",), matrix=64, n_slices=16, inplane_subsamples=1)
    a = sitk.GetArrayFromImage(exam.series[0].image).astype(np.float32)[:, :48, 8:56]  # (16, 48, 48): drop the lower leg
    hi = np.percentile(a, 99.5)
    return np.clip(a / max(hi, 1.0) * 2.0 - 1.0, -1.0, 1.0)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        c = [1, 6, 16, 32]
        layers = []
        for i in range(3):
            layers += [torch.nn.Conv3d(c[i], c[i + 1], 3, padding=1), torch.nn.BatchNorm3d(c[i + 1]),
                       torch.nn.ReLU(), torch.nn.MaxPool3d((1, 2, 2) if i == 0 else 2)]
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(2 * c[-1], 2)

    def forward(self, x):
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))], dim=1))


@pytest.mark.slow
def test_cnn_detects_effusion_and_acl_tear():
    n = N_TRAIN + N_TEST
    plan = plan_cohort(n, seed=123, prevalences={"joint_effusion": 0.5, "acl_injury": 0.5}, splits=(1, 0, 0))
    x = np.stack([_volume(plan.seeds[i], plan.labels[i]) for i in range(n)])[:, None]
    y = np.array([[lab["joint_effusion"], lab["acl_injury"]] for lab in plan.labels], dtype=np.float32)
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN])
    net = _Net()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    for epoch in range(20):
        net.train()
        for idx in torch.randperm(N_TRAIN, generator=g).split(16):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(x[N_TRAIN:]))).numpy()
    auc_eff = metrics.roc_auc_score(y[N_TRAIN:, 0], p[:, 0])
    auc_acl = metrics.roc_auc_score(y[N_TRAIN:, 1], p[:, 1])
    print(f"held-out AUROC: effusion {auc_eff:.3f}, ACL tear {auc_acl:.3f}")
    assert auc_eff > 0.8
    assert auc_acl > 0.6
