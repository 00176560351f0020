"""Classification metrics (torchmetrics): loss, top-1/top-5, per-class P/R/F1, confusion
matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Mean loss, top-1/top-5 accuracy and per-class tables over a loader."""
    model.eval()
    k = min(5, num_classes)
    local = {"sync_on_compute": False}  # under torchrun only rank 0 evaluates
    overall = {
        "acc": MulticlassAccuracy(num_classes, average="micro", **local),
        f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro", **local),
    }
    per_class = {
        "precision": MulticlassPrecision(num_classes, average=None, **local),
        "recall": MulticlassRecall(num_classes, average=None, **local),
        "f1": MulticlassF1Score(num_classes, average=None, **local),
        "confusion": MulticlassConfusionMatrix(num_classes, **local),
    }
    total_loss, count = 0.0, 0
    for images, targets in loader:
        logits = model(images.to(device)).float().cpu()
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
        for metric in (*overall.values(), *per_class.values()):
            metric.update(logits, targets)
    scores = {"loss": total_loss / max(count, 1)}
    scores.update({name: metric.compute().item() for name, metric in overall.items()})
    return scores, {name: metric.compute() for name, metric in per_class.items()}
