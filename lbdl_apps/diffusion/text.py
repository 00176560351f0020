"""Text conditioning (book 7.2): captions become the text embeddings of a `lbdl clip` model,
whose text encoder is stored inside the diffusion checkpoint so that sampling from a prompt
needs nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.clip.model import TextTransformer
from lbdl_apps.clip.tokenizer import TextTokenizer


class ClipText(nn.Module):
    """The text encoder of a CLIP model with its tokenizer: texts -> unit-norm embeddings."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__()
        c = stored["config"]
        self.tokenizer = TextTokenizer.from_meta(stored["tokenizer"])
        self.embed_dim: int = c["embed_dim"]
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

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts)).to(next(self.parameters()).device)
        return F.normalize(self.text(tokens), dim=-1)


def build_clip(stored: dict[str, Any]) -> ClipText:
    """The text encoder described by a checkpoint's config["clip"]."""
    return ClipText(stored).eval()


def load_clip_text(checkpoint: str | Path) -> tuple[ClipText, dict[str, Any]]:
    """The text encoder of a `lbdl clip` checkpoint (or OpenAI CLIP weights) with its trained
    weights, and what the diffusion config stores to rebuild it."""
    from lbdl_apps.clip.api import load

    clip = load(checkpoint)
    stored = {
        "config": clip.meta["config"],
        "tokenizer": clip.tokenizer.to_meta(),
        "source": str(checkpoint),
    }
    encoder = build_clip(stored)
    encoder.text.load_state_dict(clip.model.text.state_dict())
    return encoder, stored


def embed_captions(
    encoder: ClipText, captions: Sequence[str], batch_size: int = 256
) -> tuple[Tensor, dict[str, int]]:
    """Each distinct caption's embedding (K, D) and its row, computed once before training."""
    unique = sorted(set(captions))
    rows = [
        encoder.encode_text(unique[i : i + batch_size]).float().cpu()
        for i in range(0, len(unique), batch_size)
    ]
    return torch.cat(rows), {caption: i for i, caption in enumerate(unique)}
