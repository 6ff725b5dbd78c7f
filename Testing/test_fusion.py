"""Cross-plane fusions: shapes, gradients, MPAE weights, missing planes."""
import pytest
import torch

from OrthoDiffusionLib.errors import MissingPlaneError
from OrthoDiffusionLib.model.fusion import (FUSIONS, CrossAttentionFusion, MPAEFusion, PlaneClassifier, build_fusion,
                                      plane_weights_for)
from OrthoDiffusionLib.labels import PLANES

F, K, B = 24, 8, 5


def feats(b=B, f=F, requires_grad=False):
    torch.manual_seed(0)
    return {p: torch.randn(b, f, requires_grad=requires_grad) for p in PLANES}


@pytest.mark.parametrize("name", list(FUSIONS))
def test_shapes_and_gradients(name):
    fusion = build_fusion(name, F, K, embed_dim=32) if name not in ("concat", "mpae") else build_fusion(name, F, K)
    x = feats(requires_grad=True)
    out = fusion(x)
    assert out.logits.shape == (B, K)
    if name == "mpae":
        assert out.plane_weights.shape == (B, K, 3)
    else:
        assert out.plane_weights is None
    out.logits.sum().backward()
    for p in PLANES:
        assert x[p].grad is not None and x[p].grad.abs().sum() > 0, (name, p)
    assert all(prm.grad is not None for prm in fusion.parameters() if prm.requires_grad)


def test_full_size_widths():
    x = {p: torch.randn(2, 512) for p in PLANES}
    concat = build_fusion("concat", 512, 8)
    assert concat.head.in_features == 1536
    assert concat.fuse(x).shape == (2, 1536)
    assert build_fusion("linear_concat", 512, 8).head.in_features == 1536
    assert build_fusion("linear-add", 512, 8).head.in_features == 512
    ca = build_fusion("cross_attention", 512, 8)
    assert ca.head.in_features == 1536 and ca.attention["sagittal"].num_heads == 4
    assert ca(x).logits.shape == (2, 8)


def test_cross_attention_directions():
    ca = CrossAttentionFusion(F, K, embed_dim=16, heads=4)
    assert [ca.source_of(p) for p in PLANES] == ["coronal", "axial", "sagittal"]
    x = feats()
    base = ca.refine(x)
    changed = ca.refine(dict(x, axial=x["axial"] + 1.0))
    # sagittal attends to coronal only, so changing axial leaves it alone; coronal (<- axial) and axial change
    torch.testing.assert_close(changed["sagittal"], base["sagittal"])
    assert not torch.allclose(changed["coronal"], base["coronal"])
    assert not torch.allclose(changed["axial"], base["axial"])
    # residual + LayerNorm: each refined embedding is normalised (default affine init: mean 0, var 1)
    torch.testing.assert_close(base["sagittal"].mean(-1), torch.zeros(B), atol=1e-5, rtol=0)


def test_mpae_weights_sum_to_one_and_fused_logit_is_weighted_sum():
    torch.manual_seed(3)
    m = MPAEFusion(F, K)
    x = feats()
    out = m(x)
    torch.testing.assert_close(out.plane_weights.sum(-1), torch.ones(B, K))
    assert (out.plane_weights > 0).all()
    z = torch.stack([m.heads[p](x[p]) for p in PLANES], dim=-1)
    torch.testing.assert_close(out.logits, (out.plane_weights * z).sum(-1))
    # the gate is shared over labels: weights depend only on (z_sag, z_cor, z_ax) of that label
    s = m.gate(z[0, 0])
    torch.testing.assert_close(out.plane_weights[0, 0], torch.softmax(s, -1))


def test_mpae_configurations():
    code = MPAEFusion(F, K)
    paper = MPAEFusion(F, K, gate_hidden=16, gate_dropout=0.1)
    assert code.gate[0].out_features == 32 and not any(isinstance(l, torch.nn.Dropout) for l in code.gate)
    assert paper.gate[0].out_features == 16 and any(isinstance(l, torch.nn.Dropout) for l in paper.gate)


def test_mpae_missing_planes_renormalised():
    m = MPAEFusion(F, K).eval()
    x = feats()
    two = {"sagittal": x["sagittal"], "axial": x["axial"], "coronal": None}
    out = m(two)
    w = out.plane_weights
    assert torch.all(w[..., 1] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, K))
    z = torch.stack([m.heads["sagittal"](x["sagittal"]), m.heads["axial"](x["axial"])], -1)
    torch.testing.assert_close(out.logits, (w[..., [0, 2]] * z).sum(-1))
    # one plane only: weight 1 and logits equal that plane's head
    only = m({"axial": x["axial"]})
    torch.testing.assert_close(only.logits, m.heads["axial"](x["axial"]))
    torch.testing.assert_close(only.plane_weights[..., 2], torch.ones(B, K))
    # per-sample mask
    avail = torch.ones(B, 3, dtype=torch.bool)
    avail[0, 0] = False
    w2 = m(x, available=avail).plane_weights
    assert torch.all(w2[0, :, 0] == 0) and torch.all(w2[1:, :, 0] > 0)
    torch.testing.assert_close(w2.sum(-1), torch.ones(B, K))
    with pytest.raises(MissingPlaneError):
        m({})


@pytest.mark.parametrize("name", ["concat", "linear_concat", "cross_attention"])
def test_fusions_needing_all_planes_raise(name):
    f = build_fusion(name, F, K)
    assert f.requires_all_planes
    x = feats()
    del x["coronal"]
    with pytest.raises(MissingPlaneError, match="coronal"):
        f(x)


def test_linear_add_missing_plane_rescaled():
    f = build_fusion("linear_add", F, K, embed_dim=16)
    assert not f.requires_all_planes
    x = feats()
    out = f({"sagittal": x["sagittal"]}).logits
    expected = f.head(3 * f.project["sagittal"](x["sagittal"]))
    torch.testing.assert_close(out, expected)


def test_plane_weights_for_concat_prediction():
    m = MPAEFusion(F, K).eval()
    x = feats()
    w = plane_weights_for(m, x)
    assert w.shape == (B, K, 3) and not w.requires_grad
    torch.testing.assert_close(w, m(x).plane_weights.detach())
    logits = {p: m.heads[p](x[p]) for p in PLANES}
    torch.testing.assert_close(plane_weights_for(m, plane_logits=logits), w)
    with pytest.raises(ValueError):
        plane_weights_for(m)


def test_plane_classifier_and_unknown_names():
    head = PlaneClassifier(512, 8)
    assert head(torch.randn(3, 512)).shape == (3, 8)
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion("attention_soup", F, K)
    with pytest.raises(ValueError, match="unknown plane"):
        build_fusion("concat", F, K)({"oblique": torch.randn(2, F)})
