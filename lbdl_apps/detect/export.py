"""Deploying a detector (book 8.2; the SSD of book 6.3): the network with its box decoding
as one graph `model`, exactly what `Detector` runs at inference, any batch:

    boxes, probs = model(images)   # images (B, 3, S, S) float32, preprocessed as model.json
                                   # says; boxes (B, N, 4) x1 y1 x2 y2 in [0, 1] of the
                                   # input, probs (B, N, C) class probabilities

the selection (score threshold, per-class NMS, the best max_det) then the user's, as
`boxes.select` does it; with --nms the graph `model_nms` does it too and gives the
detections padded to K = max_det per image:

    boxes, scores, labels, count = model_nms(images)
    # boxes (B, K, 4) in [0, 1], scores (B, K) best first (0 after the count), labels
    # (B, K) class indices (-1 after the count), count (B,): detections per image

Static int8 (the network is convolutional) is calibrated on images read as the app reads
its data (`--calibrate DATA`, default: the built-in scenes), prepared as the checkpoint's
preprocessing says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.ops import nms

from lbdl_apps.core.export import (
    Deployment,
    Graph,
    affordable,
    calibration_batches,
)
from lbdl_apps.detect.api import TASK, Detector
from lbdl_apps.detect.cli import Selection
from lbdl_apps.detect.data import load_detect_data
from lbdl_apps.detect.scenes import make_scene

SAMPLE_BATCH = 2  # torch.export fixes an axis of size 1
SAMPLE_SEED = 2718  # the sample inputs: built-in scenes of another stream than training's
# ONNX Runtime's calibrator holds the activations of every calibration input at once: fewer
# inputs than CALIBRATION_INPUTS for a large network (SSD300 at 300 px: 16, SSDLite: 26)
FEWEST_CALIBRATION_INPUTS = 16


class SelectedSSD(nn.Module):
    """The decoded SSD followed by the selection of `boxes.select`, batched so that it
    traces: the candidates above `conf` (the `pre_nms` best, of each class with
    `per_class`), non-maximum suppression within each image and class (one NMS call, each
    image's and class's boxes moved apart: they lie in [0, 1]), the `max_det` best of each
    image, padded."""

    def __init__(self, network: nn.Module, detector: Detector, selection: Selection) -> None:
        super().__init__()
        self.network = network
        self.priors, self.classes = len(detector.model.priors), len(detector.labels)
        self.conf, self.iou, self.max_det = selection.conf, selection.iou, selection.max_det
        self.pre_nms, self.per_class = detector.pre_nms, detector.per_class

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes, probs = self.network(images)  # (B, N, 4), (B, N, C)
        scores, rows, labels = self._candidates(probs)  # (B, P) each
        image = torch.arange(images.shape[0], device=images.device)[:, None].expand_as(rows)
        chosen = (scores > self.conf).flatten().nonzero().squeeze(1)  # (M, 1) -> (M,)
        image, labels = image.flatten()[chosen], labels.flatten()[chosen]
        scores, rows = scores.flatten()[chosen], rows.flatten()[chosen]
        # (B, N, 4) -> (B*N, 4): row image * N + box
        boxes = boxes.reshape(-1, 4)[image * self.priors + rows]
        groups = (image * self.classes + labels).to(boxes.dtype)
        kept = nms(boxes + 2.0 * groups[:, None], scores, self.iou)  # best first
        return padded(images.shape[0], self.max_det, image[kept], boxes[kept], scores[kept],
                      labels[kept])  # fmt: skip

    def _candidates(self, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Scores, box rows and classes (B, P) of the `pre_nms` best pairs of each image
        (of each class with `per_class`), above `conf` or not."""
        if self.per_class:
            best = min(self.pre_nms, self.priors)
            # (B, N, C) -> (B, C, N) -> the best boxes of each class (B, C, P')
            scores, rows = probs.transpose(1, 2).topk(best, dim=-1)
            labels = torch.arange(self.classes, device=probs.device)[:, None].expand_as(rows)
            return scores.flatten(1), rows.flatten(1), labels.flatten(1)  # (B, C*P')
        best = min(self.pre_nms, self.priors * self.classes)
        scores, pairs = probs.flatten(1).topk(best, dim=-1)  # (B, N*C): box * C + class
        return scores, pairs // self.classes, pairs % self.classes


def padded(
    batch: int, k: int, image: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Detections of all images (M,), best first, as (B, K) tables: each image's first K,
    boxes and scores padded with 0, labels with -1, and each image's count."""
    order = (image.to(scores.dtype) * 2.0 - scores).argsort()  # by image, then best first
    image, boxes, scores, labels = image[order], boxes[order], scores[order], labels[order]
    counts = (image[:, None] == torch.arange(batch, device=image.device)).sum(0)  # (B,)
    rank = torch.arange(image.shape[0], device=image.device) - (counts.cumsum(0) - counts)[image]
    keep = rank < k
    slot = image[keep] * k + rank[keep]  # row of (B*K)
    out_boxes = boxes.new_zeros(batch * k, 4).scatter(0, slot[:, None].expand(-1, 4), boxes[keep])
    out_scores = scores.new_zeros(batch * k).scatter(0, slot, scores[keep])
    out_labels = labels.new_full((batch * k,), -1).scatter(0, slot, labels[keep])
    # (B*K, 4) -> (B, K, 4), (B*K,) -> (B, K)
    return (out_boxes.reshape(batch, k, 4), out_scores.reshape(batch, k),
            out_labels.reshape(batch, k), counts.clamp(max=k))  # fmt: skip


def deployment(detector: Detector, nms: Selection | None = None) -> Deployment:
    """The detector's network with its box decoding (`model`, attached back as
    `detector.network`), or with `nms` the whole selection too (`model_nms`, which the app
    does not run itself)."""
    sample = samples(detector, SAMPLE_BATCH)
    batch = {0: "batch"}
    common: dict[str, Any] = {
        "inputs": (sample,),
        "input_names": ["images"],
        "calibration": lambda data: calibration(detector, data, sample),
    }
    if nms is None:

        def attach(module: nn.Module) -> None:
            detector.network = module

        graph = Graph("model", detector.network, output_names=["boxes", "probs"],
                      dynamic={"images": batch, "boxes": batch, "probs": batch},
                      attach=attach, **common)  # fmt: skip
    else:
        names = ["boxes", "scores", "labels", "count"]
        graph = Graph("model_nms", SelectedSSD(detector.network, detector, nms).eval(),
                      output_names=names, dynamic={name: batch for name in ["images", *names]},
                      compare=same_detections, **common)  # fmt: skip
    return Deployment(TASK, Path(detector.meta["file"]), [graph], describe(detector, nms))


def same_detections(expected: tuple[Tensor, ...], got: tuple[Tensor, ...]) -> tuple[float, float]:
    """The NMS graph's outputs compared as a set per image (ONNX Runtime may rank two
    detections of nearly equal scores the other way): the largest distance from a detection
    to its nearest counterpart (box, score and label), and the largest output."""
    boxes, scores, _, count = expected
    scale = max(float(boxes.abs().max()), float(scores.abs().max()), 1.0)
    if not torch.equal(count, got[3]):
        return float((count - got[3]).abs().max()), scale
    diff = 0.0
    for b, n in enumerate(count.tolist()):
        if n == 0:
            continue
        # each side's n detections -> (n, 6): box, score, label
        ours, theirs = (
            torch.cat([o[0][b, :n], o[1][b, :n, None], o[2][b, :n, None].float()], 1)
            for o in (expected, got)
        )
        distance = (ours[:, None] - theirs[None]).abs().amax(-1)  # (n, n)
        diff = max(diff, float(distance.amin(1).max()), float(distance.amin(0).max()))
    return diff, scale


def samples(detector: Detector, count: int) -> Tensor:
    """`count` built-in scenes prepared as the model's inputs (B, 3, S, S)."""
    size = detector.image_size
    images = [detector._input(make_scene(i, size, SAMPLE_SEED)[0]) for i in range(count)]
    return torch.stack(images).to(detector.device)


def describe(detector: Detector, nms: Selection | None) -> dict[str, Any]:
    """model.json's account of the graph: labels, the exact preprocessing, the outputs and
    what is left to the user."""
    pre, size = detector.preprocessing, detector.image_size
    if pre.resize == "square":
        steps = [f"resize the uint8 RGB image to {size} x {size} (bilinear, antialiased; the "
                 "aspect ratio is not kept)", "scale to [0, 1] (/ 255)",
                 "normalize: (x - mean) / std per channel"]  # fmt: skip
    else:
        steps = ["scale the uint8 RGB image to [0, 1] (/ 255)",
                 "normalize: (x - mean) / std per channel",
                 f"resize to {size} x {size} (bilinear, no antialiasing, align_corners=False: "
                 "torch.nn.functional.interpolate; the aspect ratio is not kept)"]  # fmt: skip
    candidates = f"the {detector.pre_nms} best" + (" of each class" if detector.per_class else "")
    described: dict[str, Any] = {
        "labels": detector.labels,
        "input": f"images (B, 3, {size}, {size}) float32, RGB, channels first",
        "preprocessing": {
            "steps": steps,
            "image_size": size,
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
    }
    if nms is None:
        described["outputs"] = {
            "boxes": "(B, N, 4) x1 y1 x2 y2 in [0, 1] of the input (N default boxes)",
            "probs": f"(B, N, {len(detector.labels)}) class probabilities (labels' order)",
        }
        described["postprocessing"] = (
            "per image: the (box, class) pairs with probability > conf (lbdl predict: 0.25), "
            f"{candidates}, torchvision.ops.batched_nms per class (IoU 0.45), the best max_det "
            "(100); boxes times (width, height, width, height) of the original image"
        )
        return described
    k = nms.max_det
    described["outputs"] = {
        "boxes": f"(B, {k}, 4) x1 y1 x2 y2 in [0, 1] of the input, best first, 0 after count",
        "scores": f"(B, {k}) float32, best first, 0 after count",
        "labels": f"(B, {k}) int64 indices into labels, -1 after count",
        "count": "(B,) int64: the detections of each image (its first count rows)",
    }
    described["selection"] = {
        "conf": nms.conf,
        "iou": nms.iou,
        "max_det": k,
        "pre_nms": detector.pre_nms,
        "per_class": detector.per_class,
    }
    described["postprocessing"] = (
        "inside the graph: pairs with score > conf, "
        f"{candidates}, NMS per image and class, the best max_det; the user multiplies the "
        "first count boxes by (width, height, width, height) of the original image"
    )
    return described


class _Images(Dataset):
    """The images of a detection dataset, without their objects: (image,) items."""

    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor]:
        return (self.items[index][0],)


def calibration(detector: Detector, data: str | None, sample: Tensor) -> list[tuple[Tensor]]:
    """Images of --calibrate DATA (anything `lbdl detect train --data` reads: VOC, YOLO,
    COCO; default: the built-in scenes at the model's input size) prepared as the
    checkpoint's preprocessing says, CALIBRATION_INPUTS of them, fewer for a network whose
    activations would not fit in CALIBRATION_MEMORY."""
    count = affordable(detector.network, sample, FEWEST_CALIBRATION_INPUTS)
    found = load_detect_data(
        data, val_fraction=0.0, seed=0, scenes=count, scene_size=detector.image_size
    )
    images = _Images(found.eval_set(detector.image_size, "train", detector.preprocessing))
    return calibration_batches(images, lambda batch: (batch[0],), count)
