"""Transformer encoder and decoder stacks (book 5.3): the ASR, CLIP and GPT-style models."""

from __future__ import annotations

from torch import Tensor, nn

from lbdl_apps.core.layers import LearnedPositionalEncoding, TransformerBlock


class TransformerEncoder(nn.Module):
    """A stack of pre-norm transformer blocks and a final LayerNorm (book 5.3).

    The caller embeds the tokens and adds the positional encoding.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        act: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, norm_eps=norm_eps, act=act)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """(B, L, dim) -> (B, L, dim); key_padding_mask (B, L) is True at padding."""
        for block in self.blocks:
            x = block(x, causal=causal, key_padding_mask=key_padding_mask)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """Autoregressive decoder (book 5.3, 7.1): token embedding, learned positions, causal
    blocks (with cross-attention to `context` when `cross_attention`), final LayerNorm, and
    logits through the transposed token embedding (tied weights, as GPT and Whisper).

    Decoding with a cache: `cache = {}`, then call with the prompt (offset 0) and with each
    new token at its position `offset`; every call appends to the cache.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        max_len: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cross_attention: bool = True,
        act: str = "gelu",
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = LearnedPositionalEncoding(dim, max_len)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, cross_attention,
                             act=act, context_dim=context_dim)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(
        self,
        tokens: Tensor,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: dict[int, dict] | None = None,
        offset: int = 0,
    ) -> Tensor:
        """(B, L) token ids -> (B, L, dim) normalized hidden states."""
        x = self.drop(self.pos_embed(self.token_embed(tokens), offset))
        for i, block in enumerate(self.blocks):
            block_cache = None if cache is None else cache.setdefault(i, {})
            x = block(x, context, causal=True, context_padding_mask=context_padding_mask,
                      cache=block_cache)
        return self.norm(x)

    def forward(
        self,
        tokens: Tensor,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: dict[int, dict] | None = None,
        offset: int = 0,
    ) -> Tensor:
        """(B, L) token ids -> (B, L, vocab_size) next-token logits."""
        x = self.forward_features(tokens, context, context_padding_mask, cache, offset)
        return x @ self.token_embed.weight.t()
