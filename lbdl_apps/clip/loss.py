"""The contrastive loss of CLIP (book 6.6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_loss(image_emb: Tensor, text_emb: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric cross-entropy over the N x N cosine similarities of a batch, scaled by
    1 / temperature: image i must pick text i among the batch's texts, and text i image i.
    Embeddings are unit-norm (B, D)."""
    logits = scale * image_emb @ text_emb.t()
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
