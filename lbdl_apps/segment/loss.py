"""The segmentation loss (book 6.4): per-pixel cross-entropy with an ignore index and
optional class weights, plus an optional soft Dice term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.segment.masks import IGNORE


def soft_dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = IGNORE, smooth: float = 1.0
) -> Tensor:
    """1 - the mean over classes of (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth),
    sums over the batch's non-ignored pixels, p the softmax and y the one-hot target."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (target != ignore_index).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target.clamp(0, num_classes - 1) * (target != ignore_index), num_classes)
    onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid  # (B, H, W, K) -> (B, K, H, W)
    probs = probs * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    dice: float = 0.0,
    ignore_index: int = IGNORE,
) -> Tensor:
    """Cross-entropy averaged over the non-ignored pixels (weighted: divided by the sum of
    their weights, as F.cross_entropy does) + `dice` x the soft Dice loss."""
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)
    if dice > 0:
        loss = loss + dice * soft_dice_loss(logits, target, ignore_index)
    return loss


def inverse_frequency(counts: Sequence[int]) -> list[float]:
    """Class weights total / (C * count_c) (1 for a balanced set); absent classes get 0."""
    counts_t = torch.tensor(counts, dtype=torch.float64)
    total, num = counts_t.sum(), len(counts)
    weights = torch.where(counts_t > 0, total / (num * counts_t.clamp(min=1)), 0.0)
    return [round(w, 6) for w in weights.tolist()]


def parse_class_weights(text: str | None, counts: Sequence[int]) -> list[float] | None:
    """`--class-weights`: None, "auto" (inverse frequency) or a comma list, one per class."""
    if text is None or text == "none":
        return None
    if text == "auto":
        return inverse_frequency(counts)
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise LbdlError(f"--class-weights {text}: 'auto' or numbers separated by commas") from None
    if len(weights) != len(counts) or any(w < 0 for w in weights):
        raise LbdlError(
            f"--class-weights {text}: needs {len(counts)} non-negative numbers, one per class"
        )
    return weights


class SegmentationLoss:
    """The Trainer's loss_fn: (model, (images, masks)) -> (loss, {"pixel_acc": ...})."""

    def __init__(self, class_weights: Sequence[float] | None = None, dice: float = 0.0) -> None:
        self.weights = None if class_weights is None else torch.tensor(class_weights)
        self.dice = dice

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
        images, masks = batch
        logits = model(images)
        loss = segmentation_loss(logits, masks, self.weights, self.dice)
        with torch.no_grad():
            valid = masks != IGNORE
            correct = ((logits.argmax(1) == masks) & valid).sum()
            accuracy = correct.float() / valid.sum().clamp(min=1)
        return loss, {"pixel_acc": accuracy}
