"""Detection metrics (book 6.3 reports mean average precision): COCO-style mAP@[.5:.95],
mAP@.5 and mAP@.75 and per-class AP with torchmetrics' MeanAveragePrecision (pycocotools
backend), and the precision-recall curves of each class at IoU 0.5."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from lbdl_apps.core.outputs import atomic_path
from lbdl_apps.detect.boxes import select
from lbdl_apps.detect.model import SSD, DecodedSSD

EVAL_CONF = 0.01  # low score threshold: mAP integrates over every operating point
EVAL_IOU = 0.5
EVAL_MAX_DET = 100


def new_metric(per_class: bool = False):
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        class_metrics=per_class,
        extended_summary=per_class,
        backend="pycocotools",
        sync_on_compute=False,
    )


def selection(postprocessing: dict[str, Any] | None) -> dict[str, Any]:
    """The candidate selection of an evaluation: lbdl's (conf 0.01, NMS IoU 0.5, 100 per
    image, the best 1000 pairs before NMS), or that of a checkpoint's "postprocessing"
    (torchvision's SSD300: conf 0.01, IoU 0.45, 200 per image, the best 400 per class)."""
    chosen = {"conf": EVAL_CONF, "iou": EVAL_IOU, "max_det": EVAL_MAX_DET, "pre_nms": 1000,
              "per_class": False}  # fmt: skip
    return {**chosen, **{k: v for k, v in (postprocessing or {}).items() if k in chosen}}


@torch.no_grad()
def detect_batches(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, list[dict]]],
    device: torch.device,
    postprocessing: dict[str, Any] | None = None,
) -> Iterable[tuple[list[dict], list[dict]]]:
    """(detections, targets) per batch, boxes in pixels of the model's input; `model` is an
    SSD or what the app runs at inference in its place (images -> boxes, probabilities:
    `DecodedSSD`, or its export through ONNX Runtime)."""
    network = DecodedSSD(model) if isinstance(model, SSD) else model
    network.eval()
    chosen = selection(postprocessing)
    for images, targets in batches:
        images = images.to(device)
        boxes, probs = network(images)
        found = select(boxes, probs, **chosen)
        scale = torch.tensor(images.shape[-2:][::-1], device=device).repeat(2).float()
        yield (
            [{k: v.cpu() for k, v in {**d, "boxes": d["boxes"] * scale}.items()} for d in found],
            [ground_truth(t, scale) for t in targets],
        )


def ground_truth(target: dict[str, Tensor], scale: Tensor) -> dict[str, Tensor]:
    """The metric's target of one image, boxes in pixels of the input: the objects, and the
    crowd regions marked `iscrowd` (COCO's evaluation ignores detections there)."""
    boxes, labels = target["boxes"].to(scale.device) * scale, target["labels"]
    crowd = torch.zeros(len(labels), dtype=torch.long)
    if "crowd_boxes" in target:
        boxes = torch.cat([boxes, target["crowd_boxes"].to(scale.device) * scale])
        labels = torch.cat([labels, target["crowd_labels"]])
        crowd = torch.cat([crowd, torch.ones(len(target["crowd_labels"]), dtype=torch.long)])
    return {"boxes": boxes, "labels": labels, "iscrowd": crowd}


def evaluate_detector(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, list[dict]]],
    device: torch.device,
    per_class: bool = False,
    postprocessing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """map, map_50, map_75 (and with `per_class`, the torchmetrics result with per-class AP
    and the precision array)."""
    metric = new_metric(per_class)
    for found, targets in detect_batches(model, batches, device, postprocessing):
        metric.update(found, [{k: v.cpu() for k, v in t.items()} for t in targets])
    result = metric.compute()
    return {k: (float(v) if k in ("map", "map_50", "map_75") else v) for k, v in result.items()}


def summary(result: dict[str, Any]) -> dict[str, float]:
    return {key: _nan_to_none(float(result[key])) for key in ("map", "map_50", "map_75")}


def per_class_ap(result: dict[str, Any], labels: list[str]) -> dict[str, float | None]:
    """AP@[.5:.95] of each class; None for a class absent from the ground truth."""
    classes = result["classes"].reshape(-1).tolist()
    values = result["map_per_class"].reshape(-1).tolist()
    found = {int(c): v for c, v in zip(classes, values, strict=True)}
    return {name: _nan_to_none(found.get(i, -1.0)) for i, name in enumerate(labels)}


def _nan_to_none(value: float) -> float | None:
    return None if value < 0 or math.isnan(value) else value


def plot_pr_curves(result: dict[str, Any], labels: list[str], path: Path) -> None:
    """Precision against recall at IoU 0.5 for each class (all areas, 100 detections)."""
    precision = result["precision"]  # (IoU thresholds, recall points, classes, areas, max dets)
    recall = torch.linspace(0, 1, precision.shape[1])
    classes = result["classes"].reshape(-1).tolist()
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for k, cls in enumerate(classes):
        curve = precision[0, :, k, 0, -1]
        valid = curve >= 0
        if valid.any():
            ap = float(curve[valid].mean())
            name = labels[int(cls)] if int(cls) < len(labels) else str(cls)
            ax.plot(recall[valid], curve[valid], label=f"{name} (AP50 {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("precision-recall at IoU 0.5")
    ax.legend(fontsize="small", loc="lower left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
