"""The classification loss (book 3.1, 5.2): cross-entropy with optional label smoothing, on
class indices or on the soft targets of MixUp / CutMix."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def classification_loss(
    model: nn.Module, batch: tuple[Tensor, Tensor], label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the logits (B, C) against targets (B,) or soft targets (B, C); the
    batch accuracy as a metric."""
    images, targets = batch
    logits = model(images)
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
    accuracy = (logits.argmax(dim=1) == hard).float().mean()
    return loss, {"acc": accuracy}
