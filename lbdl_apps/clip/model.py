"""The CLIP model (book 6.6): a ViT image encoder (CLS token, linear projection) and a
GPT-style causal text transformer read at its end-of-text token (linear projection), both
mapped into one embedding space where matching images and captions point the same way."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.backbones.transformer import TransformerDecoder
from lbdl_apps.core.backbones.vit import VisionTransformer

MAX_LOGIT_SCALE = 100.0  # the temperature is clamped to >= 1/100, as in CLIP


def eos_positions(tokens: Tensor, eot_id: int) -> Tensor:
    """(B,) index of the first end-of-text token of each row (the rest is padding)."""
    return (tokens == eot_id).int().argmax(dim=1)


class TextTransformer(nn.Module):
    """Causal transformer over BPE tokens (book 5.3, GPT); the state at the end-of-text
    token, which has attended to the whole caption, is projected to the embedding size.
    The causal mask means padding after that token never changes it."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        dim: int,
        depth: int,
        heads: int,
        embed_dim: int,
        eot_id: int,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.eot_id = eot_id
        self.transformer = TransformerDecoder(
            vocab_size, dim, depth, heads, context_length, cross_attention=False, act=act
        )
        self.proj = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, embed_dim), not normalized."""
        states = self.transformer.forward_features(tokens)
        pooled = states[torch.arange(len(tokens), device=tokens.device),
                        eos_positions(tokens, self.eot_id)]  # fmt: skip
        return self.proj(pooled)


class CLIP(nn.Module):
    """Image and text encoders into a shared space, and the learned temperature."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        c = config
        self.visual = VisionTransformer(
            image_size=c["image_size"],
            patch_size=c["patch_size"],
            dim=c["vision_width"],
            depth=c["vision_depth"],
            heads=c["vision_heads"],
            num_classes=None,
            act=c["act"],
            pre_norm=True,
            eps=1e-5,
            patch_bias=False,
            proj_dim=c["embed_dim"],
        )
        self.text = TextTransformer(
            c["vocab_size"],
            c["context_length"],
            c["text_width"],
            c["text_depth"],
            c["text_heads"],
            c["embed_dim"],
            c["eot_id"],
            c["act"],
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.get("init_temperature", 0.07))))

    def encode_image(self, images: Tensor) -> Tensor:
        """Preprocessed images (B, 3, H, W) -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids (B, context_length) -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.text(tokens), dim=-1)

    def scale(self) -> Tensor:
        """exp(logit_scale) = 1 / temperature, clamped to [1, 100]."""
        return self.logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.scale()


def default_config(
    size: str, image_size: int, vocab_size: int, context_length: int, eot_id: int
) -> dict[str, Any]:
    """The config of a model size ("tiny", "small", "base") for images of `image_size`."""
    widths = {"tiny": (64, 2, 2), "small": (128, 4, 4), "base": (256, 6, 8)}
    if size not in widths:
        raise ValueError(f"unknown model size {size!r}; choose {', '.join(widths)}")
    width, depth, heads = widths[size]
    patch = 4 if image_size <= 32 else 8 if image_size <= 96 else 16
    return {
        "image_size": image_size,
        "patch_size": patch,
        "vision_width": width,
        "vision_depth": depth,
        "vision_heads": heads,
        "text_width": width,
        "text_depth": max(1, depth - 1),
        "text_heads": heads,
        "embed_dim": width,
        "vocab_size": vocab_size,
        "context_length": context_length,
        "eot_id": eot_id,
        "act": "gelu",
    }


MODEL_SIZES = ("tiny", "small", "base")


def build_model(config: dict[str, Any]) -> CLIP:
    """Instantiate a CLIP model from its config (as stored in a checkpoint)."""
    return CLIP(config)
