"""Transformer encoder and decoder stacks (book 5.3): the ASR, CLIP and GPT-style models."""

from __future__ import annotations

from torch import Tensor, nn

from lbdl_apps.core.layers import KVCache, LearnedPositionalEncoding, TransformerBlock


class TransformerEncoder(nn.Module):
    """A stack of pre-norm transformer blocks and a final LayerNorm (book 5.3).

    The caller embeds the tokens and adds the positional encoding. `key_bias=False`: key
    projections without bias (Whisper's encoder).
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
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, heads, mlp_ratio, dropout, norm_eps=norm_eps, act=act, key_bias=key_bias
            )
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

    Decoding with a cache: `cache = KVCache()`, then call with the prompt and with each new
    token; every call appends to the cache, whose length is the position of the next token.
    `key_bias=False`: key projections without bias (Whisper's decoder).
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
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = LearnedPositionalEncoding(dim, max_len)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                heads,
                mlp_ratio,
                dropout,
                cross_attention,
                act=act,
                context_dim=context_dim,
                key_bias=key_bias,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(
        self,
        tokens: Tensor,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        logits: bool = True,
        at: Tensor | None = None,
    ) -> Tensor:
        """(B, L) token ids -> (B, L, vocab_size) next-token logits, or with `logits=False`
        the (B, L, dim) normalized hidden states (what CLIP's text encoder reads). `at` (K,):
        the logits at those positions alone (B, K, vocab_size): a prompt's next tokens are
        needed at one or two of its positions, and the output layer is the largest."""
        offset = cache.length if cache is not None else 0
        x = self.drop(self.pos_embed(self.token_embed(tokens), offset))
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                context,
                causal=True,
                context_padding_mask=context_padding_mask,
                cache=cache,
                name=str(i),
            )
        if cache is not None:
            cache.advance(tokens.shape[1])
        x = self.norm(x)
        if not logits:
            return x
        if at is not None:
            x = x[:, at]  # (B, L, dim) -> (B, K, dim)
        return x @ self.token_embed.weight.t()  # tied output embedding
