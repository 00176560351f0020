"""Segmentation metrics: a confusion matrix over all non-ignored pixels (torchmetrics), from
which per-class IoU, mIoU and pixel accuracy follow; sliding-window logits for images larger
than the training size."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from lbdl_apps.core.tiles import tiled_apply

IGNORE = 255


@torch.no_grad()
def sliding_logits(
    model: nn.Module,
    image: Tensor,
    device: torch.device,
    tile: int,
    multiple: int,
    overlap: int | None = None,
) -> Tensor:
    """Class logits (K, H, W) of one normalized (C, H, W) image: whole when it fits in a
    tile, else overlapping tiles whose logits are averaged (blended) where they overlap."""
    overlap = tile // 8 if overlap is None else overlap
    tile = max(multiple, tile // multiple * multiple)

    def run(batch: Tensor) -> Tensor:
        return model(batch.to(device)).float().cpu()

    return tiled_apply(run, image, tile=tile, overlap=overlap, multiple=multiple)


def scores_from_confusion(confusion: Tensor) -> tuple[dict[str, float], list[float]]:
    """mIoU (over classes present in the target or the prediction), pixel accuracy and the
    constant predictor's mIoU (always the most frequent true class); per-class IoU (nan
    for a class that appears nowhere)."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    present = union > 0
    total = confusion.sum().clamp(min=1)
    true_counts = confusion.sum(1)
    in_target = true_counts > 0
    constant = (true_counts.max() / total / in_target.sum().clamp(min=1)).item()
    scores = {
        "miou": iou[present].mean().item() if present.any() else 0.0,
        "pixel_acc": (tp.sum() / total).item(),
        "constant_miou": constant,
    }
    return scores, iou.tolist()


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    items: Iterable,
    device: torch.device,
    num_classes: int,
    tile: int,
    multiple: int,
) -> tuple[dict[str, float], list[float], Tensor]:
    """Scores, per-class IoU and the confusion matrix over (image, mask) items or lists of
    them (the validation loader's batches), each image evaluated at its full size."""
    was_training = model.training
    model.eval()
    confusion = MulticlassConfusionMatrix(
        num_classes,
        ignore_index=IGNORE,
        sync_on_compute=False,  # only rank 0 evaluates
    )
    for item in items:
        pairs = item if isinstance(item, list) else [item]
        for image, mask in pairs:
            logits = sliding_logits(model, image, device, tile, multiple)
            confusion.update(logits.argmax(0)[None], mask[None])
    matrix = confusion.compute()
    scores, iou = scores_from_confusion(matrix)
    model.train(was_training)
    return scores, iou, matrix


def plot_confusion(confusion: Tensor, labels: list[str], path: Path) -> None:
    """Row-normalised confusion matrix as a PNG (rows: true class, columns: predicted)."""
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 12:
        for i in range(len(labels)):
            for j in range(len(labels)):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
                )
    ax.set_title("pixels, normalised per true class")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
