"""The contrastive loss of CLIP (book 6.6), and the Trainer's loss function built on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def clip_loss(image_emb: Tensor, text_emb: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric cross-entropy over the N x N cosine similarities of a batch, scaled by
    1 / temperature: image i must pick text i among the batch's texts, and text i image i.
    Embeddings are unit-norm (B, D)."""
    logits = scale * image_emb @ text_emb.t()  # (B, B)
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def contrastive_step(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
    """The Trainer's loss function: the symmetric contrastive loss of a batch of pairs, the
    in-batch image-to-text accuracy and the current 1 / temperature."""
    images, tokens = batch
    image_emb, text_emb, scale = model(images, tokens)
    loss = clip_loss(image_emb, text_emb, scale)
    with torch.no_grad():
        best = (image_emb @ text_emb.t()).argmax(dim=1)  # (B,) the best text of each image
        hits = best == torch.arange(len(images), device=images.device)
    return loss, {"acc": hits.float().mean(), "scale": scale.detach()}
