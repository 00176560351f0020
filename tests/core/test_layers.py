"""Layers of book chapter 4 against PyTorch's references and the book's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lbdl_apps.core.layers import (
    MLP,
    BasicBlock,
    Bottleneck,
    ConvNormAct,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    sinusoidal_embedding,
)

DIM, HEADS = 16, 4


def paired_attention(kdim: int | None = None) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Ours and nn.MultiheadAttention with the same weights."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(DIM, HEADS, batch_first=True, kdim=kdim, vdim=kdim).eval()
    nn.init.normal_(ref.in_proj_bias)
    ours = MultiHeadAttention(DIM, HEADS, kdim=kdim).eval()
    if kdim is None:
        q_w, k_w, v_w = ref.in_proj_weight.chunk(3)
    else:
        q_w, k_w, v_w = ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight
    q_b, k_b, v_b = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for proj, w, b in (
            (ours.q_proj, q_w, q_b),
            (ours.k_proj, k_w, k_b),
            (ours.v_proj, v_w, v_b),
        ):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    return ours, ref


def test_self_attention_matches_torch() -> None:
    ours, ref = paired_attention()
    x = torch.randn(2, 7, DIM)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)


def test_cross_attention_with_padding_matches_torch() -> None:
    ours, ref = paired_attention(kdim=10)
    x, context = torch.randn(2, 5, DIM), torch.randn(2, 9, 10)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    padding[1, 3:] = True
    expected, _ = ref(x, context, context, key_padding_mask=padding, need_weights=False)
    got = ours(x, context, key_padding_mask=padding)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the padded keys really are ignored
    changed = context.clone()
    changed[1, 3:] += 5.0
    torch.testing.assert_close(ours(x, changed, key_padding_mask=padding), got, atol=1e-5, rtol=0)


def test_causal_attention_matches_torch() -> None:
    ours, ref = paired_attention()
    x = torch.randn(2, 6, DIM)
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1)  # True = not attended
    expected, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
    torch.testing.assert_close(ours(x, causal=True), expected, atol=1e-5, rtol=0)
    # causal and padding together go through the explicit-mask path
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    expected, _ = ref(x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False)
    got = ours(x, causal=True, key_padding_mask=padding)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # attn_mask follows nn.MultiheadAttention: boolean True = not attended, float = added
    torch.testing.assert_close(ours(x, attn_mask=mask), ours(x, causal=True), atol=1e-6, rtol=0)
    float_mask = nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(
        ours(x, attn_mask=float_mask, key_padding_mask=padding), got, atol=1e-6, rtol=0
    )


def test_causal_future_does_not_change_past() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(1, 8, DIM)
    changed = x.clone()
    changed[:, 5] += 3.0
    before, after = attn(x, causal=True), attn(changed, causal=True)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    assert not torch.allclose(attn(x)[:, :5], attn(changed)[:, :5])  # without the mask it does


def test_causal_short_query_sees_last_positions() -> None:
    """A query shorter than the keys holds the LAST positions (incremental decoding)."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(2, 7, DIM)
    full = attn(x, causal=True)
    cache: dict[str, torch.Tensor] = {}
    first = attn(x[:, :4], causal=True, cache=cache)
    rest = attn(x[:, 4:], causal=True, cache=cache)  # 3 queries, 7 keys
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=0)
    assert cache["k"].shape == (2, HEADS, 7, DIM // HEADS)


def test_cross_attention_cache_reuses_context() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS).eval()
    x, context = torch.randn(1, 3, DIM), torch.randn(1, 5, DIM)
    cache: dict[str, torch.Tensor] = {}
    attn(x, context, cache=cache)
    keys = cache["k"]
    out = attn(x, context, cache=cache)
    assert cache["k"] is keys
    torch.testing.assert_close(out, attn(x, context))


def test_sinusoidal_matches_book_formula() -> None:
    dim, t_base = 6, 10_000
    pe = SinusoidalPositionalEncoding(dim, max_len=50)
    for t, d, expected in [
        (0, 0, 0.0),
        (0, 1, 1.0),
        (3, 0, math.sin(3)),
        (3, 1, math.cos(3)),
        (7, 2, math.sin(7 / t_base ** (2 / 6))),
        (7, 3, math.cos(7 / t_base ** (2 / 6))),
        (42, 4, math.sin(42 / t_base ** (4 / 6))),
        (42, 5, math.cos(42 / t_base ** (4 / 6))),
    ]:
        assert pe.pe[t, d].item() == pytest.approx(expected, abs=1e-6)
    x = torch.zeros(2, 4, dim)
    torch.testing.assert_close(pe(x, offset=3)[1], pe.pe[3:7])
    torch.testing.assert_close(sinusoidal_embedding(torch.tensor([42.0]), dim)[0], pe.pe[42])
    assert "pe" not in pe.state_dict()
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 51, dim))


def test_learned_positions_offset() -> None:
    torch.manual_seed(0)
    pos = LearnedPositionalEncoding(8, 10)
    x = torch.zeros(1, 3, 8)
    torch.testing.assert_close(pos(x, offset=2)[0], pos.weight[2:5])
    with pytest.raises(ValueError, match="max_len"):
        pos(x, offset=8)


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({}, (2, 8, 16, 16)),
        ({"stride": 2, "norm": "group", "act": "gelu"}, (2, 8, 8, 8)),
        ({"kernel": 1, "norm": "none", "act": "none"}, (2, 8, 16, 16)),
        ({"dilation": 2, "act": "silu"}, (2, 8, 16, 16)),
        ({"groups": 4}, (2, 8, 16, 16)),
    ],
)
def test_conv_norm_act_shapes(kw: dict, shape: tuple[int, ...]) -> None:
    layer = ConvNormAct(4, 8, **kw)
    assert layer(torch.randn(2, 4, 16, 16)).shape == shape
    assert (layer.conv.bias is not None) == (kw.get("norm") == "none")


def test_bad_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="normalization"):
        ConvNormAct(3, 8, norm="layer")
    with pytest.raises(ValueError, match="activation"):
        MLP(8, 16, act="tanhh")


def test_residual_blocks() -> None:
    x = torch.randn(2, 16, 8, 8)
    assert BasicBlock(16, 16)(x).shape == (2, 16, 8, 8)
    assert BasicBlock(16, 32, stride=2)(x).shape == (2, 32, 4, 4)
    assert BasicBlock(16, 16).downsample is None
    block = Bottleneck(16, 8, stride=2)
    assert block(x).shape == (2, 32, 4, 4)
    assert isinstance(block.downsample, nn.Sequential) and len(block.downsample) == 2
    assert Bottleneck(16, 8, dilation=2)(x).shape == (2, 32, 8, 8)
    assert Bottleneck(16, 8, groups=2, base_width=32).conv2.weight.shape == (8, 4, 3, 3)


def test_transformer_block() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, cross_attention=True, act="quick_gelu").eval()
    x, context = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[:, 4:] = True
    y = block(x, context, causal=True, context_padding_mask=padding)
    assert y.shape == x.shape
    changed = context.clone()
    changed[:, 4:] = 0
    torch.testing.assert_close(block(x, changed, causal=True, context_padding_mask=padding), y)
    with pytest.raises(ValueError, match="context"):
        block(x)
    assert TransformerBlock(DIM, HEADS)(x).shape == x.shape
