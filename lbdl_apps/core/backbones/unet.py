"""U-Net (book 6.1, 6.4, 7.2): an encoder-decoder of residual convolution blocks whose
decoder also reads the encoder's maps at each resolution, with optional self-attention and,
for diffusion, a time (and condition) embedding added into every block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lbdl_apps.core.layers import MultiHeadAttention, sinusoidal_embedding


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip connection (book 4.6, 4.7); the embedding,
    when there is one, is projected and added per channel between the two convolutions."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int | None, dropout: float, groups: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.act = nn.SiLU()
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.emb_proj is not None:
            h = h + self.emb_proj(self.act(emb))[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map, with a skip connection (book 4.8)."""

    def __init__(self, ch: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.attn = MultiHeadAttention(ch, heads)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)


class Level(nn.Module):
    """The residual blocks (and attention) of one resolution of the U-Net."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        blocks: int,
        attention: bool,
        emb_dim: int | None,
        dropout: float,
        groups: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, dropout, groups)
            for i in range(blocks)
        )
        self.attn = AttentionBlock(out_ch, heads, groups) if attention else None

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return x if self.attn is None else self.attn(x)


class UNet(nn.Module):
    """U-Net: levels of width base * multipliers[i], halving the resolution between levels
    (strided convolution) and doubling it back (nearest upsampling + convolution), with the
    encoder's output at each level concatenated to the decoder's input at that level.

    `attention_levels` lists the levels with self-attention; the middle always has it.
    With `time_dim`, forward(x, t, cond=None) embeds the time step t (B,) sinusoidally, passes
    it through an MLP and adds it into every residual block (diffusion, book 7.2); with
    `cond_dim`, a condition vector cond (B, cond_dim) is projected and added to it (cond None:
    unconditional). Without `time_dim`, forward(x).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base: int = 32,
        multipliers: Sequence[int] = (1, 2, 4),
        blocks_per_level: int = 2,
        attention_levels: Sequence[int] = (2,),
        time_dim: int | None = None,
        cond_dim: int | None = None,
        dropout: float = 0.0,
        norm_groups: int = 8,
        heads: int = 4,
    ) -> None:
        super().__init__()
        widths = [base * m for m in multipliers]
        if any(w % norm_groups or w % heads for w in widths):
            raise ValueError(
                f"level widths {widths} must be multiples of norm_groups "
                f"{norm_groups} and heads {heads}"
            )
        if cond_dim and not time_dim:
            raise ValueError(
                "cond_dim needs time_dim: the condition is added to the time embedding"
            )
        self.factor = 2 ** (len(widths) - 1)
        self.time_dim = time_dim
        emb_dim = None
        if time_dim:
            emb_dim = 4 * time_dim
            self.time_mlp = nn.Sequential(
                nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None

        def level(i: int, in_ch: int) -> Level:
            return Level(
                in_ch,
                widths[i],
                blocks_per_level,
                i in attention_levels,
                emb_dim,
                dropout,
                norm_groups,
                heads,
            )

        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(level(i, widths[max(i - 1, 0)]) for i in range(len(widths)))
        self.downsample = nn.ModuleList(
            nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1]
        )
        self.mid1 = ResBlock(widths[-1], widths[-1], emb_dim, dropout, norm_groups)
        self.mid_attn = AttentionBlock(widths[-1], heads, norm_groups)
        self.mid2 = ResBlock(widths[-1], widths[-1], emb_dim, dropout, norm_groups)
        self.upsample = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1)
            )
            for w in widths[1:]
        )
        self.up = nn.ModuleList(
            level(i, widths[min(i + 1, len(widths) - 1)] + widths[i]) for i in range(len(widths))
        )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, widths[0]),
            nn.SiLU(),
            nn.Conv2d(widths[0], out_channels, 3, padding=1),
        )

    def _embedding(self, x: Tensor, t: Tensor | float | None, cond: Tensor | None) -> Tensor:
        if t is None:
            raise ValueError("this U-Net is time-conditioned: pass the time step t")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))
        if cond is not None:
            if self.cond_proj is None:
                raise ValueError("this U-Net takes no condition (cond_dim is None)")
            emb = emb + self.cond_proj(cond)
        return emb

    def forward(
        self, x: Tensor, t: Tensor | float | None = None, cond: Tensor | None = None
    ) -> Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be divisible by "
                f"{self.factor} (2 ** (levels - 1))"
            )
        emb = self._embedding(x, t, cond) if self.time_dim else None
        x = self.stem(x)
        skips = []
        for i, level in enumerate(self.down):
            x = level(x, emb)
            skips.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        x = self.mid2(self.mid_attn(self.mid1(x, emb)), emb)
        for i in reversed(range(len(self.up))):
            if i < len(self.upsample):
                x = self.upsample[i](x)
            x = self.up[i](torch.cat([x, skips[i]], dim=1), emb)
        return self.out(x)
