"""DiagnosisHead: taps -> calibrated probabilities with plane weights; missing-plane fallback; config round trip."""
import json

import pytest
import torch

from OrthoDiffusionLib.errors import MissingPlaneError
from OrthoDiffusionLib.model.heads import DiagnosisHead
from OrthoDiffusionLib.labels import PLANES


def taps(b=2, c=32):
    torch.manual_seed(0)
    return {p: torch.randn(b, c, 1, 4, 4) for p in PLANES}


def test_forward_concat_with_mpae_weights():
    head = DiagnosisHead(8, channels=32, pooling_options={"heads": 4}).eval()
    out = head(taps())
    assert out.logits.shape == (2, 8) and out.fused_by == "concat" and out.planes == tuple(PLANES)
    torch.testing.assert_close(out.probabilities, torch.sigmoid(out.logits))
    torch.testing.assert_close(out.plane_weights.sum(-1), torch.ones(2, 8))
    assert head.fusion.head.in_features == 3 * 64


def test_full_size_default_head():
    head = DiagnosisHead(8).eval()
    with torch.no_grad():
        out = head({p: torch.randn(1, 256, 1, 16, 16) for p in PLANES})
    assert out.probabilities.shape == (1, 8) and out.plane_weights.shape == (1, 8, 3)
    assert head.pools["axial"].out_features == 512 and head.fusion.head.in_features == 1536


def test_missing_plane_falls_back_to_mpae_or_raises():
    head = DiagnosisHead(4, channels=32, pooling="gap").eval()
    x = taps()
    x["coronal"] = None
    out = head(x)
    assert out.fused_by == "mpae" and out.planes == ("sagittal", "axial")
    assert torch.all(out.plane_weights[..., 1] == 0)
    feats = head.pooled(x)
    torch.testing.assert_close(out.logits, head.mpae(feats).logits)
    no_mpae = DiagnosisHead(4, channels=32, pooling="gap", with_mpae=False).eval()
    assert no_mpae(taps()).plane_weights is None
    with pytest.raises(MissingPlaneError, match="coronal"):
        no_mpae(x)
    with pytest.raises(MissingPlaneError):
        head({})


def test_mpae_as_main_fusion_and_temperature():
    head = DiagnosisHead(3, channels=32, pooling="glp", fusion="mpae").eval()
    assert head.mpae is None and head.weights_module is head.fusion
    out = head(taps())
    assert out.fused_by == "mpae" and out.plane_weights is not None
    head.calibration.temperature.fill_(2.0)
    torch.testing.assert_close(head(taps()).logits, out.logits / 2)


def test_config_round_trip_and_state_dict():
    head = DiagnosisHead(7, channels=32, pooling="sap", fusion="linear_add", pooling_options={"heads": 4},
                         fusion_options={"embed_dim": 16}, mpae_options={"gate_hidden": 16, "gate_dropout": 0.1})
    cfg = json.loads(json.dumps(head.config()))
    again = DiagnosisHead(**cfg)
    again.load_state_dict(head.state_dict())
    head.eval(), again.eval()
    torch.testing.assert_close(again(taps()).logits, head(taps()).logits)
    assert "calibration.temperature" in head.state_dict()
