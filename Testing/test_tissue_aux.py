"""Stage I's auxiliary tissue supervision (``stage1.tissue_aux``): tissue shares per tap cell, the soft cross-entropy,
and a fine-tuning run that uses the manifest's tissue maps (and trains without them, saying so, on real data)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diag_helpers import TINY_SETTINGS, write_backbone, write_cohort
from OrthoDiffusionLib.errors import InputError
from OrthoDiffusionLib.training.diagnosis.tissue_aux import NUM_TISSUES, soft_cross_entropy, tissue_fractions
from OrthoDiffusionLib.training.diagnosis.train import resolve_config, train_diagnosis

AUX = ['stage1.tissue_aux={"weight": 0.5, "blocks": ["in_1", "mid_0"]}']


def test_tissue_fractions_are_the_share_of_each_tissue_per_cell():
    tissue = torch.full((4, 8, 8), 17, dtype=torch.int64)
    tissue[:2, :4, :4] = 16          # one whole cell of the 2 x 2 x 2 grid is fluid
    tissue[2:, 4:, 4:6] = 16         # half of another
    f = tissue_fractions(tissue, (2, 2, 2))
    assert f.shape == (NUM_TISSUES, 2, 2, 2)
    assert torch.allclose(f.sum(0), torch.ones(2, 2, 2))
    assert f[16, 0, 0, 0] == 1.0 and f[16, 1, 1, 1] == 0.5 and f[17, 1, 1, 1] == 0.5 and f[16, 0, 1, 1] == 0.0


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot_targets():
    logits = torch.randn(2, NUM_TISSUES, 3, 3, 3)
    labels = torch.randint(0, NUM_TISSUES, (2, 3, 3, 3))
    onehot = torch.nn.functional.one_hot(labels, NUM_TISSUES).permute(0, 4, 1, 2, 3).float()
    assert soft_cross_entropy(logits, onehot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


@pytest.mark.slow
def test_finetuning_uses_the_tissue_maps_and_reports_when_there_are_none(tmp_path):
    backbone = write_backbone(tmp_path / "backbone.safetensors")
    settings = TINY_SETTINGS + AUX + ["stage1.epochs=1", "stage1.lr=0.001"]
    with_maps = write_cohort(tmp_path / "sim", n_patients=10, tissue=True)
    run = train_diagnosis(with_maps, resolve_config("knee-ft-opt", settings), tmp_path / "a", backbone=backbone)
    assert not any("tissue_aux" in w for w in run["warnings"])
    # the auxiliary convolutions train the encoder but never reach the diagnosis head
    assert not any("tissue" in k for k in load_file(str(tmp_path / "a" / "diagnosis_head.safetensors")))
    assert len(list((tmp_path / "a" / "cache" / "tissue").glob("*.npy"))) == 6 * 3  # the training series
    plain = train_diagnosis(with_maps, resolve_config("knee-ft-opt", TINY_SETTINGS + ["stage1.epochs=1",
                                                                                         "stage1.lr=0.001"]),
                            tmp_path / "b", backbone=backbone)
    a = load_file(str(tmp_path / "a" / "backbone_sagittal.safetensors"))
    b = load_file(str(tmp_path / "b" / "backbone_sagittal.safetensors"))
    assert not torch.equal(a["input_blocks.1.0.in_layers.2.weight"], b["input_blocks.1.0.in_layers.2.weight"])
    assert plain["warnings"] == run["warnings"]

    real = write_cohort(tmp_path / "real", n_patients=10)
    run = train_diagnosis(real, resolve_config("knee-ft-opt", settings), tmp_path / "c", backbone=backbone)
    assert sum("stage1.tissue_aux skipped" in w for w in run["warnings"]) == 3

    with pytest.raises(InputError, match="in_99"):
        train_diagnosis(with_maps, resolve_config("knee-ft-opt", TINY_SETTINGS + [
            'stage1.tissue_aux={"weight": 0.5, "blocks": ["in_99"]}']), tmp_path / "d", backbone=backbone)
