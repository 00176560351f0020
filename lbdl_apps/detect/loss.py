"""The SSD loss (book 6.3): cross-entropy on every matched default box and on the hardest
"no object" boxes (three negatives per positive), plus Smooth-L1 on the offsets of the
matched boxes, summed and divided by the number of matched boxes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hard_negatives(ce: Tensor, positive: Tensor, ratio: float) -> Tensor:
    """Mask (B, N) of the `ratio` x (positives of the image) unmatched boxes with the highest
    classification loss, per image."""
    loss = ce.detach().masked_fill(positive, -torch.inf)
    rank = loss.argsort(1, descending=True).argsort(1)
    wanted = (ratio * positive.sum(1, keepdim=True)).long()
    wanted = torch.minimum(wanted, (~positive).sum(1, keepdim=True))
    return rank < wanted


def ssd_loss(
    offsets: Tensor,
    logits: Tensor,
    target_offsets: Tensor,
    target_labels: Tensor,
    neg_ratio: float = 3.0,
    box_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """offsets (B, N, 4), logits (B, N, C + 1), targets from `boxes.match` + `boxes.encode`."""
    positive = target_labels > 0
    matched = positive.sum().clamp(min=1).float()
    box = F.smooth_l1_loss(offsets[positive], target_offsets[positive], reduction="sum")
    # (B, N, C + 1) -> (B*N, C + 1) against (B, N) -> (B*N,)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), target_labels.flatten(), reduction="none")
    ce = ce.view_as(target_labels)  # (B*N,) -> (B, N)
    negative = hard_negatives(ce, positive, neg_ratio)
    classification = ce[positive].sum() + ce[negative].sum()
    loss = (classification + box_weight * box.float()) / matched
    return loss, {"cls_loss": classification.detach() / matched, "box_loss": box.detach() / matched}


class SSDLoss(nn.Module):
    """loss_fn for the Trainer: batch = (images, target offsets, target labels)."""

    def __init__(self, neg_ratio: float = 3.0, box_weight: float = 1.0) -> None:
        super().__init__()
        self.neg_ratio, self.box_weight = neg_ratio, box_weight

    def forward(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        images, target_offsets, target_labels = batch
        offsets, logits = model(images)
        return ssd_loss(
            offsets, logits, target_offsets, target_labels, self.neg_ratio, self.box_weight
        )
