"""Segmentation metrics: a confusion matrix over all non-ignored pixels (torchmetrics), from
which per-class IoU, mIoU and pixel accuracy follow; sliding-window logits for images larger
than the training size."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from lbdl_apps.core.tiles import tiled_apply
from lbdl_apps.segment.masks import IGNORE


def resized_short_side(image: Tensor, short: int) -> Tensor:
    """A (C, H, W) image whose short side is resized to `short` (bilinear, antialiased), the
    other side in proportion, rounded down, as torchvision's resize of one size."""
    height, width = image.shape[-2:]
    low, high = sorted((height, width))
    size = (short, int(short * high / low))
    size = size if height <= width else size[::-1]
    if size == (height, width):
        return image
    resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)
    return resized[0]  # (1, C, h, w) -> (C, h, w)


@torch.no_grad()
def sliding_logits(
    model: nn.Module,
    image: Tensor,
    device: torch.device,
    tile: int | None,
    multiple: int,
    overlap: int | None = None,
    flips: bool = False,
    resize: int | None = None,
) -> Tensor:
    """Class logits (K, H, W) of one normalized (C, H, W) image: whole when it fits in a
    tile, else overlapping tiles whose logits are averaged (blended) where they overlap.
    `flips` averages the logits of the four horizontal/vertical flips (test-time augmentation).
    `resize` (models trained at one scale, as torchvision's at 520): the image's short side
    is resized to it first, the image is processed whole unless `tile` is given, and the
    logits are resized back to (H, W)."""
    size = tuple(image.shape[-2:])
    if resize:
        image = resized_short_side(image, resize)
        tile = tile or -(-max(image.shape[-2:]) // multiple) * multiple  # whole
    if tile is None:
        raise ValueError("a tile size is needed without resize")
    overlap = tile // 8 if overlap is None else overlap
    tile = max(multiple, tile // multiple * multiple)
    views = [[], [-1], [-2], [-2, -1]] if flips else [[]]

    def run(batch: Tensor) -> Tensor:
        batch = batch.to(device)
        total = sum(model(batch.flip(dims)).flip(dims).float() for dims in views)
        return (total / len(views)).cpu()

    logits = tiled_apply(run, image, tile=tile, overlap=overlap, multiple=multiple)
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    return logits


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
    tile: int | None,
    multiple: int,
    flips: bool = False,
    resize: int | None = None,
) -> tuple[dict[str, float], list[float], Tensor]:
    """Scores, per-class IoU and the confusion matrix over (image, mask) items or lists of
    them (the validation loader's batches), each image evaluated at its full size (with
    `flips`, on the average of its four flips; with `resize`, see `sliding_logits`)."""
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
            logits = sliding_logits(
                model, image, device, tile, multiple, flips=flips, resize=resize
            )
            confusion.update(logits.argmax(0)[None], mask[None])  # (H, W) -> (1, H, W)
    matrix = confusion.compute()
    scores, iou = scores_from_confusion(matrix)
    model.train(was_training)
    return scores, iou, matrix
