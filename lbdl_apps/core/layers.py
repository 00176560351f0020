"""The building blocks of book chapter 4, assembled into the architectures of chapter 5.

Convolutions with normalization and activation (book 4.2, 4.3, 4.6), residual blocks
(book 4.7, 5.2), multi-head attention (book 4.8), positional encodings (book 4.10) and the
pre-normalization transformer block (book 5.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation of OpenAI's CLIP (book 4.3)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "none": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """The activation function called `name` (book 4.3)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ConvNormAct(nn.Sequential):
    """Conv2d, then batch/group normalization, then an activation (book 4.2, 4.6).

    'same' padding for odd kernels; the convolution has a bias only without normalization.
    Group normalization uses gcd(32, out_ch) groups.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm: str = "batch",
        act: str = "relu",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=norm == "none"
        )
        if norm == "batch":
            self.norm = nn.BatchNorm2d(out_ch)
        elif norm == "group":
            self.norm = nn.GroupNorm(math.gcd(32, out_ch), out_ch)
        elif norm != "none":
            raise ValueError(f"unknown normalization {norm!r}; choose batch, group or none")
        if act != "none":
            self.act = activation(act)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """The 1x1 projection of the skip connection when the shape changes (book 5.2)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a skip connection: the block of ResNet-18/34 (book 5.2).

    Parameter names are torchvision's, so its weights load as they are.
    """

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand, plus skip: ResNet-50's block (book 5.2).

    `width = planes * base_width / 64 * groups` as in torchvision (ResNeXt / wide ResNets).
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation, groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _attention_mask(
    batch: int,
    q_len: int,
    k_len: int,
    causal: bool,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    device: torch.device,
) -> Tensor | None:
    """One mask for F.scaled_dot_product_attention, broadcastable to (B, H, L, S).

    Boolean result: True = may attend. With a float `attn_mask`, an additive float mask.
    Causal masking aligns the queries with the LAST keys, so that a query of one token
    following a cache of S - 1 keys sees all of them.
    """
    keep = None
    if causal and q_len > 1:
        keep = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, k_len):
            raise ValueError(
                f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                f"expected {(batch, k_len)}"
            )
        not_padded = ~key_padding_mask[:, None, None, :]
        keep = not_padded if keep is None else keep & not_padded
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return ~attn_mask if keep is None else keep & ~attn_mask
    return attn_mask if keep is None else attn_mask.masked_fill(~keep, float("-inf"))


class KVCache:
    """What a decoder's attention layers keep between decoding steps (book 5.3): each layer's
    keys and values (self-attention: of every token so far; cross-attention: of the context,
    computed once). Make one with `KVCache()` before the first step and pass it to every
    step; `length` is the number of tokens it holds (the next token's position);
    `reorder(rows)` keeps, in that order, rows of the batch (the beams that survive a step,
    or each input repeated once per beam). Decoding never reads its layout."""

    def __init__(self) -> None:
        self._layers: dict[str, dict[str, Tensor]] = {}
        self._of_context: set[str] = set()  # the entries computed from the context alone
        self.length = 0

    def layer(self, name: str, context: bool = False) -> dict[str, Tensor]:
        """The entry of one attention layer (its own to fill); `context`: of a
        cross-attention, computed from the context alone."""
        if context:
            self._of_context.add(name)
        return self._layers.setdefault(name, {})

    def advance(self, tokens: int) -> None:
        """Count the `tokens` a decoding step added."""
        self.length += tokens

    def reorder(self, rows: Tensor, same_context: bool = False) -> None:
        """Keep the batch rows `rows` (B',) of every cached tensor, in place. `same_context`:
        each row takes the place of a row with the same context (a beam of the same input),
        so the cross-attention entries, all alike there, stay as they are (openai-whisper's
        beam search copies only the self-attention cache too)."""
        for name, entry in self._layers.items():
            if same_context and name in self._of_context:
                continue
            for key, value in entry.items():
                entry[key] = value.index_select(0, rows)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (book 4.8) on F.scaled_dot_product_attention.

    Self-attention when `context` is None, cross-attention over `context` otherwise.
    Masks follow nn.MultiheadAttention: `key_padding_mask` (B, S) and boolean `attn_mask` are
    True where a key is ignored; a float `attn_mask` is added to the attention scores.

    `cache` (this layer's entry of a KVCache, updated in place) speeds up autoregressive
    decoding: in self-attention the new keys and values are appended to the cached ones; in
    cross-attention those of `context` are computed on the first call and reused afterwards.

    `key_bias=False` leaves the key projection without a bias (Whisper's layout: a bias on
    the keys adds the same score to every key of a query, which the softmax cancels).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        kdim = kdim or dim
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(kdim, dim, bias=bias and key_bias)
        self.v_proj = nn.Linear(kdim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, heads, L, D / heads)."""
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor:
        q = self._split(self.q_proj(x))
        if context is not None and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            source = x if context is None else context
            k, v = self._split(self.k_proj(source)), self._split(self.v_proj(source))
            if cache is not None:
                if context is None and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        b, _, q_len, _ = q.shape
        k_len = k.shape[2]
        dropout = self.dropout if self.training else 0.0
        if causal and q_len == k_len and key_padding_mask is None and attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = _attention_mask(b, q_len, k_len, causal, key_padding_mask, attn_mask, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(b, q_len, -1))


SINUSOID_LAYOUTS = ("interleaved", "halves")


def sinusoidal_embedding(
    positions: Tensor, dim: int, base: float = 10_000, layout: str = "interleaved"
) -> Tensor:
    """The book's positional encoding of `positions` (any shape, int or float) -> (..., dim).

    pos[t, d] = sin(t / T^(d / D)) for even d, cos(t / T^((d - 1) / D)) for odd d, with
    T = `base` (book 4.10). Also the time embedding of diffusion models (book 7.2).
    `layout="halves"` is the variant of Whisper (and tensor2tensor): the sines of all D / 2
    frequencies, then their cosines, the periods spread geometrically from 2 pi to 2 pi T:
    pos[t, i] = sin(t / T^(i / (D / 2 - 1))), pos[t, D / 2 + i] = cos(same), i < D / 2.
    """
    if layout == "halves":
        i = torch.arange(dim // 2, device=positions.device).double()
        # positions (...) -> (..., 1) times the D / 2 frequencies -> (..., D / 2)
        angles = positions.double()[..., None] * base ** (-i / (dim // 2 - 1))
        return torch.cat([angles.sin(), angles.cos()], dim=-1).float()
    if layout != "interleaved":
        raise ValueError(f"unknown layout {layout!r}; choose {' or '.join(SINUSOID_LAYOUTS)}")
    d = torch.arange(dim, device=positions.device)
    frequencies = base ** (-(d - d % 2).double() / dim)
    angles = positions.double()[..., None] * frequencies
    return torch.where(d % 2 == 0, angles.sin(), angles.cos()).float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding of book 4.10 to a (B, L, dim) sequence.

    `layout` as in `sinusoidal_embedding`; `persistent=True` keeps the table in the state
    dict, as Whisper's checkpoints do (they hold it, rounded to their precision)."""

    def __init__(
        self,
        dim: int,
        max_len: int,
        base: float = 10_000,
        layout: str = "interleaved",
        persistent: bool = False,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        table = sinusoidal_embedding(torch.arange(max_len), dim, base, layout)
        self.register_buffer("pe", table, persistent=persistent)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """`offset` is the position of x's first token (decoding one token at a time)."""
        end = offset + x.shape[1]
        if end > self.max_len:
            raise ValueError(f"sequence reaches position {end}, beyond max_len {self.max_len}")
        return x + self.pe[offset:end].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Adds a trained vector per position to a (B, L, dim) sequence (book 4.10, 5.3)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.shape[1]
        if end > self.max_len:
            raise ValueError(f"sequence reaches position {end}, beyond max_len {self.max_len}")
        return x + self.weight[offset:end]


class MLP(nn.Module):
    """Two fully connected layers with an activation between them (book 5.1, 5.3)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-normalization transformer block (book 5.3).

    x = x + attn(ln1(x)); [x = x + cross_attn(ln_cross(x), context)]; x = x + mlp(ln2(x)).
    With a KVCache, the block keeps its attention layers' keys and values under `name`.
    `key_bias=False`: key projections without bias (Whisper).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cross_attention: bool = False,
        norm_eps: float = 1e-5,
        act: str = "gelu",
        context_dim: int | None = None,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, heads, dropout, key_bias=key_bias)
        self.cross_attn = None
        if cross_attention:
            self.ln_cross = nn.LayerNorm(dim, eps=norm_eps)
            self.cross_attn = MultiHeadAttention(
                dim, heads, dropout, kdim=context_dim, key_bias=key_bias
            )
        self.ln2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        name: str = "",
    ) -> Tensor:
        self_cache = None if cache is None else cache.layer(f"{name}.self")
        x = x + self.drop(
            self.attn(
                self.ln1(x), causal=causal, key_padding_mask=key_padding_mask, cache=self_cache
            )
        )
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass a context")
            cross_cache = None if cache is None else cache.layer(f"{name}.cross", context=True)
            x = x + self.drop(
                self.cross_attn(
                    self.ln_cross(x),
                    context,
                    key_padding_mask=context_padding_mask,
                    cache=cross_cache,
                )
            )
        return x + self.mlp(self.ln2(x))
