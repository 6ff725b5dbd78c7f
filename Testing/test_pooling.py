"""Pooling modules: output widths on several tap sizes, equations checked against direct computation."""
import pytest
import torch

from OrthoDiffusionLib.model.pooling import (GlobalAveragePooling, GlobalLocalPooling, SelfAttentionPooling,
                                       build_pooling, tokens_of)


@pytest.mark.parametrize("spatial", [(1, 16, 16), (1, 2, 2), (2, 3, 5), (1, 1, 1)])
@pytest.mark.parametrize("name,width", [("gap", 256), ("glp", 512), ("sap", 512)])
def test_output_sizes_c256(name, width, spatial):
    pool = build_pooling(name, 256)
    assert pool.out_features == width
    out = pool(torch.randn(2, 256, *spatial))
    assert out.shape == (2, width)
    assert torch.isfinite(out).all()


def test_gap_is_mean_and_first_half_of_glp_sap():
    x = torch.randn(3, 32, 1, 4, 4)
    mean = x.mean(dim=(2, 3, 4))
    torch.testing.assert_close(GlobalAveragePooling(32)(x), mean)
    torch.testing.assert_close(GlobalLocalPooling(32)(x)[:, :32], mean)
    torch.testing.assert_close(SelfAttentionPooling(32, heads=4)(x)[:, :32], mean)


def test_glp_local_part_is_softmax_weighted_sum():
    torch.manual_seed(0)
    pool = GlobalLocalPooling(16)
    assert pool.score[0].out_features == 2  # C / 8
    x = torch.randn(2, 16, 1, 3, 3)
    tokens = x.flatten(2).transpose(1, 2)
    w = torch.softmax(pool.score(tokens).squeeze(-1), dim=1)
    expected = (w.unsqueeze(-1) * tokens).sum(1)
    torch.testing.assert_close(pool(x)[:, 16:], expected)


def test_sap_matches_manual_multihead_attention():
    torch.manual_seed(1)
    c, h = 32, 4
    pool = SelfAttentionPooling(c, heads=h)
    x = torch.randn(2, c, 2, 2, 3)
    X = x.flatten(2).transpose(1, 2)  # (B, N, C)
    q, k, v = pool.q(X), pool.k(X), pool.v(X)
    d = c // h
    heads = []
    for j in range(h):
        sl = slice(j * d, (j + 1) * d)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / d ** 0.5, dim=-1)
        heads.append(a @ v[..., sl])
    mha = pool.out(torch.cat(heads, dim=-1))
    torch.testing.assert_close(pool(x)[:, c:], mha.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_sap_default_16_heads_and_torch_mha_equivalence():
    pool = SelfAttentionPooling(256)
    assert pool.heads == 16
    # same weights in torch's MultiheadAttention give the same result
    mha = torch.nn.MultiheadAttention(256, 16, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([pool.q.weight, pool.k.weight, pool.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([pool.q.bias, pool.k.bias, pool.v.bias]))
        mha.out_proj.weight.copy_(pool.out.weight)
        mha.out_proj.bias.copy_(pool.out.bias)
    x = torch.randn(2, 256, 1, 4, 4)
    X = tokens_of(x)
    ref, _ = mha(X, X, X, need_weights=False)
    torch.testing.assert_close(pool(x)[:, 256:], ref.mean(1), atol=1e-5, rtol=1e-4)


def test_gradients_flow_and_errors():
    pool = build_pooling("SAP", 16, heads=4)
    x = torch.randn(2, 16, 1, 2, 2, requires_grad=True)
    pool(x).sum().backward()
    assert x.grad is not None and pool.q.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown pooling"):
        build_pooling("max", 16)
    with pytest.raises(ValueError, match="channels"):
        pool(torch.randn(2, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        SelfAttentionPooling(20, heads=16)
