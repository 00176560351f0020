"""The CLIP model (book 6.6): a ViT image encoder (CLS token, linear projection) and a
GPT-style causal text transformer read at its end-of-text token (linear projection), both
mapped into one embedding space where matching images and captions point the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.backbones.transformer import TransformerDecoder
from lbdl_apps.core.backbones.vit import VisionTransformer
from lbdl_apps.core.errors import LbdlError

MAX_LOGIT_SCALE = 100.0  # the temperature is clamped to >= 1/100, as in CLIP
MODEL_SIZES = {"tiny": (64, 2, 2), "small": (128, 4, 4), "base": (256, 6, 8)}  # width, depth, heads


@dataclass
class ClipConfig:
    """Everything `build_model` needs, stored in the checkpoint (the field names are the keys
    of the checkpoints written before the config was typed)."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    text_width: int
    text_depth: int
    text_heads: int
    embed_dim: int
    vocab_size: int
    context_length: int
    eot_id: int  # the end-of-text token, whose state the text encoder reads
    act: str = "gelu"  # "quick_gelu" for OpenAI's weights
    init_temperature: float = 0.07


def eos_positions(tokens: Tensor, eot_id: int) -> Tensor:
    """(B,) index of the first end-of-text token of each row (the rest is padding)."""
    return (tokens == eot_id).int().argmax(dim=1)


class TextTransformer(nn.Module):
    """Causal transformer over BPE tokens (book 5.3, GPT); the state at the end-of-text
    token, which has attended to the whole caption, is projected to the embedding size.
    The causal mask means padding after that token never changes it."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        c = config
        self.eot_id = c.eot_id
        self.transformer = TransformerDecoder(
            c.vocab_size, c.text_width, c.text_depth, c.text_heads, c.context_length,
            cross_attention=False, act=c.act,
        )  # fmt: skip
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, embed_dim), not normalized."""
        states = self.transformer(tokens, logits=False)  # (B, L, text_width)
        rows = torch.arange(tokens.shape[0], device=tokens.device)  # traceable: not len()
        pooled = states[rows, eos_positions(tokens, self.eot_id)]  # (B, text_width)
        return self.proj(pooled)


class Normalized(nn.Module):
    """An encoder's embeddings scaled to unit norm: one tower of CLIP as inference runs it
    (`CLIP.encode_image` / `encode_text`), a module of its own that can be exported or
    replaced (book 8.2)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: Tensor) -> Tensor:
        """(B, ...) images or token ids -> (B, embed_dim), unit norm."""
        return F.normalize(self.encoder(inputs), dim=-1)


class CLIP(nn.Module):
    """Image and text encoders into a shared space, and the learned temperature."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        c = config
        self.visual = VisionTransformer(
            image_size=c.image_size,
            patch_size=c.patch_size,
            dim=c.vision_width,
            depth=c.vision_depth,
            heads=c.vision_heads,
            num_classes=None,
            act=c.act,
            pre_norm=True,
            eps=1e-5,
            patch_bias=False,
            proj_dim=c.embed_dim,
        )
        self.text = TextTransformer(c)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))

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
) -> ClipConfig:
    """The config of a model size ("tiny", "small", "base") for images of `image_size`."""
    if size not in MODEL_SIZES:
        raise LbdlError(f"--model {size}: unknown size; choose {', '.join(MODEL_SIZES)}")
    width, depth, heads = MODEL_SIZES[size]
    patch = 4 if image_size <= 32 else 8 if image_size <= 96 else 16
    return ClipConfig(
        image_size=image_size,
        patch_size=patch,
        vision_width=width,
        vision_depth=depth,
        vision_heads=heads,
        text_width=width,
        text_depth=max(1, depth - 1),
        text_heads=heads,
        embed_dim=width,
        vocab_size=vocab_size,
        context_length=context_length,
        eot_id=eot_id,
    )


def resized(
    config: ClipConfig, width: int | None, depth: int | None, patch_size: int | None
) -> ClipConfig:
    """`config` with --width (both encoders and the embedding), --depth (both encoders) and
    --patch-size applied; an LbdlError when they do not fit the image size or the heads."""
    if width is not None:
        config = replace(config, vision_width=width, text_width=width, embed_dim=width)
    if depth is not None:
        config = replace(config, vision_depth=depth, text_depth=depth)
    if patch_size is not None:
        config = replace(config, patch_size=patch_size)
    if config.image_size % config.patch_size:
        raise LbdlError(
            f"--patch-size {config.patch_size}: does not divide the image size {config.image_size}"
        )
    if config.vision_width % config.vision_heads:
        raise LbdlError(f"--width {width}: must be a multiple of {config.vision_heads}")
    return config


def build_model(config: ClipConfig) -> CLIP:
    """Instantiate a CLIP model from its config (as stored in a checkpoint)."""
    return CLIP(config)
