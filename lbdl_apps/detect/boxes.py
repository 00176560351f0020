"""Default boxes, matching, box encoding and decoding of the single-shot detector (book 6.3).

Boxes are in coordinates normalised to [0, 1] by the image size. Default boxes are
(cx, cy, w, h); ground truth and detections are (x1, y1, x2, y2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, box_iou

VARIANCES = (0.1, 0.2)  # offsets of centres and of log-sizes are divided by these
MAX_LOG_SIZE = math.log(1000.0 / 16)  # decoded sizes stay under 62.5x the default box's


def boxes_per_location(aspect_ratios: Sequence[float]) -> int:
    """Two square boxes (scale s and sqrt(s s')) plus two per aspect ratio (a and 1/a)."""
    return 2 + 2 * len(aspect_ratios)


def default_scales(maps: int, smallest: float = 0.1, largest: float = 0.9) -> list[float]:
    """maps + 1 scales spaced evenly from `smallest` to `largest` (the last one only serves
    the sqrt(s s') square box of the last map)."""
    if maps == 1:
        return [smallest, largest]
    step = (largest - smallest) / maps
    return [round(smallest + i * step, 4) for i in range(maps + 1)]


def per_map(aspect_ratios: Sequence[float] | Sequence[Sequence[float]], maps: int) -> list:
    """One list of aspect ratios per map: the same list for every map, or one given per map
    (SSD300's [2], [2, 3], [2, 3], [2, 3], [2], [2])."""
    if aspect_ratios and isinstance(aspect_ratios[0], (list, tuple)):
        if len(aspect_ratios) != maps:
            raise ValueError(f"need aspect ratios for {maps} maps, got {len(aspect_ratios)}")
        return [list(r) for r in aspect_ratios]
    return [list(aspect_ratios)] * maps


def default_boxes(
    feature_sizes: Sequence[int],
    scales: Sequence[float],
    aspect_ratios: Sequence[float] | Sequence[Sequence[float]],
    steps: Sequence[float] | None = None,
    image_size: int | None = None,
) -> Tensor:
    """The default boxes (N, 4) as (cx, cy, w, h): for each map of size f_k, each cell and
    each of boxes_per_location shapes, in that order (the heads' output order). Centres are
    1/f_k apart, or `steps[k]` pixels of an `image_size` input apart (SSD300's steps 8, 16,
    32, 64, 100, 300 on 300 pixels: torchvision's DefaultBoxGenerator); sizes are clipped
    to [0, 1], centres are not."""
    if len(scales) != len(feature_sizes) + 1:
        raise ValueError(f"need {len(feature_sizes) + 1} scales, got {len(scales)}")
    boxes = []
    for k, (size, ratios) in enumerate(
        zip(feature_sizes, per_map(aspect_ratios, len(feature_sizes)), strict=True)
    ):
        s, s_next = scales[k], scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for a in ratios:
            r = math.sqrt(a)
            shapes += [(s * r, s / r), (s / r, s * r)]
        cells = size if steps is None or image_size is None else image_size / steps[k]
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) / cells
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        wh = torch.tensor(shapes, dtype=torch.float32).clamp(0.0, 1.0)  # (A, 2)
        # (f, f, 2) -> (f*f, 1, 2) -> (f*f, A, 2): each cell's centre for its A shapes
        cells_xy = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        sizes = wh.unsqueeze(0).expand(size * size, -1, -1)  # (A, 2) -> (f*f, A, 2)
        boxes.append(torch.cat([cells_xy, sizes], -1).reshape(-1, 4))  # (f*f*A, 4)
    return torch.cat(boxes)


def encode(matched: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """Offsets (N, 4) that turn default boxes `priors` (cx, cy, w, h) into `matched`
    (x1, y1, x2, y2): centre shift over the prior size, log size ratio, over the variances."""
    g = box_convert(matched, "xyxy", "cxcywh")
    centre = (g[:, :2] - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = torch.log(g[:, 2:].clamp(min=1e-6) / priors[:, 2:]) / variances[1]
    return torch.cat([centre, size], 1)


def decode(offsets: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """The inverse of `encode`: boxes (..., N, 4) as (x1, y1, x2, y2). The log size ratio is
    capped at log(1000 / 16), as torchvision's BoxCoder caps it (no overflow in exp)."""
    centre = priors[:, :2] + offsets[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp((offsets[..., 2:] * variances[1]).clamp(max=MAX_LOG_SIZE))
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def match(
    gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Assign ground truth to default boxes (book 6.3): each default box takes the object it
    overlaps most if their IoU reaches `threshold`, and each object also takes its best
    default box whatever the IoU (its best one not taken by another object), so no object
    goes unmatched. Returns the class targets
    (N,) with 0 for "no object" and c + 1 for class c, and the matched boxes (N, 4)."""
    n = len(priors)
    if len(gt_boxes) == 0:
        return torch.zeros(n, dtype=torch.long), torch.zeros(n, 4)
    iou = box_iou(gt_boxes, box_convert(priors, "cxcywh", "xyxy"))  # (M, N)
    best_iou, best_gt = iou.max(0)
    free = iou.clone()
    for j in iou.max(1).values.argsort(descending=True).tolist():  # best-placed objects first
        prior = int(free[j].argmax())  # its best default box not given to another object
        best_gt[prior], best_iou[prior] = j, 2.0
        free[:, prior] = -1.0
    labels = gt_labels[best_gt] + 1
    labels[best_iou < threshold] = 0
    return labels, gt_boxes[best_gt]


def postprocess(
    offsets: Tensor,
    logits: Tensor,
    priors: Tensor,
    conf: float = 0.01,
    iou: float = 0.45,
    max_det: int = 100,
    classes: Sequence[int] | None = None,
    pre_nms: int = 1000,
    per_class: bool = False,
) -> list[dict[str, Tensor]]:
    """Detections of a batch of network outputs: decoded boxes, softmax class probabilities
    without "no object", then `select`."""
    boxes = decode(offsets, priors).clamp(0.0, 1.0)
    probs = logits.float().softmax(-1)[..., 1:]
    return select(boxes, probs, conf, iou, max_det, classes, pre_nms, per_class)


def _candidates(scores: Tensor, conf: float, pre_nms: int, per_class: bool) -> Tensor:
    """The (box, class) pairs of scores (N, C) above `conf`, as indices box * C + class:
    the `pre_nms` best of all of them, or with `per_class` the `pre_nms` best of each class
    (torchvision's SSD: its topk_candidates)."""
    n, c = scores.shape
    if per_class:
        masked = scores.masked_fill(scores <= conf, -1.0)
        best, rows = masked.topk(min(pre_nms, n), dim=0)  # (k, C) per class, best first
        columns = torch.arange(c, device=scores.device).expand_as(rows)
        keep = best > conf
        return rows[keep] * c + columns[keep]
    flat = scores.flatten()  # (N, C) -> (N*C,): index = box * C + class
    candidates = (flat > conf).nonzero().squeeze(1)  # (K, 1) -> (K,)
    if len(candidates) > pre_nms:
        candidates = candidates[flat[candidates].topk(pre_nms).indices]
    return candidates


def select(
    boxes: Tensor,
    probs: Tensor,
    conf: float = 0.01,
    iou: float = 0.45,
    max_det: int = 100,
    classes: Sequence[int] | None = None,
    pre_nms: int = 1000,
    per_class: bool = False,
) -> list[dict[str, Tensor]]:
    """Per image, from boxes (B, N, 4) x1 y1 x2 y2 in [0, 1] and class probabilities
    (B, N, C): every (box, class) pair above `conf` is a candidate (the `pre_nms` best
    kept, of each class with `per_class`), then per-class non-maximum suppression
    (torchvision.ops.batched_nms) and the `max_det` best. Gives boxes, scores and labels
    (0-based) per image."""
    if classes is not None:
        keep_class = torch.zeros(probs.shape[-1], dtype=torch.bool, device=probs.device)
        keep_class[list(classes)] = True
        probs = probs * keep_class
    results = []
    for image_boxes, image_probs in zip(boxes, probs, strict=True):
        candidates = _candidates(image_probs, conf, pre_nms, per_class)
        box_index = candidates // image_probs.shape[1]
        labels = candidates % image_probs.shape[1]
        chosen_boxes = image_boxes[box_index]
        chosen_scores = image_probs.flatten()[candidates]
        kept = batched_nms(chosen_boxes, chosen_scores, labels, iou)[:max_det]
        results.append(
            {"boxes": chosen_boxes[kept], "scores": chosen_scores[kept], "labels": labels[kept]}
        )
    return results
