"""Deploying a classifier (book 8.2): its network as one graph, preprocessed images (B, C, S,
S) -> class logits (B, K), exactly as `Classifier.probabilities` calls it (the softmax is the
user's), any batch; static int8 for the convolutional ones (CNN, ResNets, MobileNetV3)
calibrated on images read with the checkpoint's own preprocessing, dynamic int8 of the
matrix products for the ViT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from lbdl_apps.classify.api import TASK, Classifier
from lbdl_apps.core.export import (
    Deployment,
    Graph,
    affordable,
    calibration_batches,
)

SAMPLE_BATCH = 2  # torch.export fixes an axis of size 1
# ONNX Runtime's calibrator holds the activations of every calibration input at once: fewer
# inputs than CALIBRATION_INPUTS for a large network (an ImageNet ResNet at 224: ~100)
FEWEST_CALIBRATION_INPUTS = 32


def deployment(classifier: Classifier) -> Deployment:
    """The classifier's network, attached back as `classifier.model`."""
    pre = classifier.preprocessing
    channels, size = int(pre["in_channels"]), int(pre["image_size"])
    sample = torch.randn(
        SAMPLE_BATCH, channels, size, size, generator=torch.Generator().manual_seed(0)
    ).to(classifier.device)
    batch = {0: "batch"}

    def attach(module: nn.Module) -> None:
        classifier.model = module

    graph = Graph(
        "classifier",
        classifier.model,
        (sample,),
        ["images"],
        ["logits"],
        dynamic={"images": batch, "logits": batch},
        attach=attach,
        calibration=lambda data: calibration(classifier, data, sample),
    )
    return Deployment(TASK, Path(classifier.meta["file"]), [graph], describe(classifier))


def describe(classifier: Classifier) -> dict[str, Any]:
    """model.json's account of the inputs and outputs: labels, exact preprocessing."""
    pre = classifier.preprocessing
    channels, size = int(pre["in_channels"]), int(pre["image_size"])
    resize = pre.get("resize") or size
    interpolation = pre.get("interpolation", "bilinear")
    return {
        "labels": classifier.labels,
        "input": f"images (B, {channels}, {size}, {size}) float32, channels first, "
        f"{'gray' if channels == 1 else 'RGB'}",
        "preprocessing": {
            "channels": "gray (L)" if channels == 1 else "RGB",
            "resize": f"short side to {resize} ({interpolation}, antialiased)",
            "crop": f"center {size} x {size}",
            "value_range": "[0, 1] (uint8 / 255)",
            "mean": list(pre["mean"]),
            "std": list(pre["std"]),
            "normalize": "(x - mean) / std per channel",
        },
        "output": "logits (B, K): softmax over K gives the probabilities, K = len(labels)",
        "model": classifier.meta["config"].name,
    }


def calibration(classifier: Classifier, data: str | None, sample: Tensor) -> list[tuple[Tensor]]:
    """Images of --calibrate DATA (any data `classify train --data` reads; default: the
    built-in shapes) prepared as the checkpoint's evaluation prepares them, a seeded sample
    of CALIBRATION_INPUTS of them, fewer for a network whose activations would not fit."""
    from lbdl_apps.classify.data import load_classify_data

    pre = classifier.preprocessing
    count = affordable(classifier.model, sample, FEWEST_CALIBRATION_INPUTS)
    found = load_classify_data(
        data, int(pre["image_size"]), val_fraction=0.0, seed=0, preprocessing=pre,
        builtin_sizes=(count, 1, 1),
    )  # fmt: skip
    images = found.train
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    chosen = Subset(images, order[:count].tolist())
    return calibration_batches(chosen, lambda batch: (batch[0],), count)
