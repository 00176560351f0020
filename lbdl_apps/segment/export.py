"""Deploying a segmenter (book 6.4, 8.2): its network as one graph, normalized images
(B, C, H, W) -> class logits (B, K, H, W), exactly as the sliding window calls it (tiles of
the training size, or a smaller image padded to the model's multiple), any batch and any
size (a multiple of the model's factor); static int8 (every model here is convolutional),
calibrated on tiles of the checkpoint's own kind of images. PSPNet's pyramid pooling
(adaptive average pooling to 2, 3 and 6 bins, which ONNX's exporter fixes to the sample's
size) is exported through a traceable equivalent that pools inputs of any size."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbdl_apps.core.export import Deployment, Graph, affordable, calibration_batches
from lbdl_apps.core.tiles import pad_to
from lbdl_apps.segment.api import TASK, Segmenter

SAMPLE_SIZE = 64  # side of the sample inputs (rounded up to the model's multiple)


def deployment(segmenter: Segmenter) -> Deployment:
    """The segmenter's network, attached back as `segmenter.model`."""
    multiple = segmenter.multiple
    side = -(-SAMPLE_SIZE // multiple) * multiple
    channels = int(segmenter.preprocessing["in_channels"])
    axes = {0: "batch", 2: "height", 3: "width"}
    sample = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))

    def attach(module: nn.Module) -> None:
        segmenter.model = module

    graph = Graph(
        "segmenter", traceable(segmenter.model), (sample.to(segmenter.device),), ["images"],
        ["logits"], dynamic={"images": axes, "logits": axes}, attach=attach,
        calibration=lambda data: calibration(segmenter, data),
    )  # fmt: skip
    return Deployment(TASK, Path(segmenter.meta["file"]), [graph], describe(segmenter))


def describe(segmenter: Segmenter) -> dict[str, Any]:
    """model.json's account: classes and colors, preprocessing, how to run large images."""
    pre = segmenter.preprocessing
    channels, multiple = int(pre["in_channels"]), segmenter.multiple
    tile = segmenter.tile()
    return {
        "labels": segmenter.labels,
        "palette": segmenter.palette,
        "input": f"images (B, {channels}, H, W) float32, channels first, "
        f"{'gray' if channels == 1 else 'RGB'}, H and W multiples of {multiple}",
        "preprocessing": {
            "value_range": "[0, 1] (uint8 / 255), then (x - mean) / std per channel",
            "mean": list(pre["mean"]),
            "std": list(pre["std"]),
            "resize": f"the short side to {segmenter.resize} (bilinear, antialiased) first"
            if segmenter.resize
            else "none: the image at its own size",
        },
        "output": "logits (B, K, H, W): argmax over K is the class index of each pixel "
        "(K = len(labels)); an image padded to a multiple is cropped back",
        "tiles": f"images larger than {tile}: overlapping tiles of {tile} (overlap "
        f"{tile // 8}), their logits blended (lbdl segment predict --tile)"
        if tile
        else "the whole image",
        "model": segmenter.config.name,
    }


def calibration(segmenter: Segmenter, data: str | None) -> list[tuple[Tensor]]:
    """Static int8's calibration inputs: seeded random tiles of the sliding window's size
    cut from the training images of --calibrate DATA (any data `segment train --data`
    reads, normalized as the checkpoint's) or of the built-in scenes, as many as fit in
    the calibrator's memory (at most CALIBRATION_INPUTS)."""
    from lbdl_apps.segment.data import load_segment_data

    pre, multiple = segmenter.preprocessing, segmenter.multiple
    side = max(multiple, (segmenter.tile() or int(pre["image_size"])) // multiple * multiple)
    probe = torch.zeros(2, int(pre["in_channels"]), side, side, device=segmenter.device)
    count = affordable(segmenter.model, probe, fewest=32)
    found = load_segment_data(
        data, val_fraction=0.0, seed=0, preprocessing=pre, scenes=count,
        labels=segmenter.labels if data is not None else None,
    )  # fmt: skip
    tiles = Tiles(found.train, side, count, int(pre["in_channels"]))
    return calibration_batches(tiles, lambda batch: (batch,), count, batch=8)


class Tiles(torch.utils.data.Dataset):
    """`count` tiles side x side of a dataset's images (image i % len), each at a random
    place (seeded by calibration_batches), reflect-padded where an image is smaller, in the
    model's `channels` (the built-in scenes are RGB: their gray mean for a gray model)."""

    def __init__(self, images: Any, side: int, count: int, channels: int) -> None:
        self.images, self.side, self.count, self.channels = images, side, count, channels

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index % len(self.images)][0]
        if image.shape[0] != self.channels:  # (C, H, W) -> (channels, H, W)
            image = image.mean(0, keepdim=True).expand(self.channels, -1, -1)
        image = pad_to(image, self.side, self.side)
        height, width = image.shape[-2:]
        top = int(torch.randint(height - self.side + 1, ()))
        left = int(torch.randint(width - self.side + 1, ()))
        return image[:, top : top + self.side, left : left + self.side]


def traceable(model: nn.Module) -> nn.Module:
    """`model` itself, or for a PSPNet a copy whose adaptive poolings to more than one bin
    are `BinPool`s (the same averages, for inputs of any size once exported)."""
    pools = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.AdaptiveAvgPool2d) and _bins(module) != 1
    ]
    if not pools:
        return model
    copied = copy.deepcopy(model)
    for name in pools:
        parent, _, leaf = name.rpartition(".")
        owner = copied.get_submodule(parent)
        setattr(owner, leaf, BinPool(_bins(getattr(owner, leaf))))
    return copied


def _bins(pool: nn.AdaptiveAvgPool2d) -> int | None:
    size = pool.output_size
    return size if isinstance(size, int) else (size[0] if size[0] == size[1] else None)


class BinPool(nn.Module):
    """Adaptive average pooling to bins x bins written as two matrix products (book 6.4,
    PSPNet): bin i of an axis of n averages positions floor(i n / bins) to
    ceil((i + 1) n / bins) - 1, as nn.AdaptiveAvgPool2d; the averaging matrices are built
    from the input's size, so the exported graph pools any size."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def weights(self, n: int, like: Tensor) -> Tensor:
        """(bins, n) averaging matrix of one axis."""
        i = torch.arange(self.bins, device=like.device)
        start = torch.div(i * n, self.bins, rounding_mode="floor")
        end = torch.div((i + 1) * n + self.bins - 1, self.bins, rounding_mode="floor")
        j = torch.arange(n, device=like.device)
        inside = ((j[None] >= start[:, None]) & (j[None] < end[:, None])).to(like.dtype)
        return inside / inside.sum(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = self.weights(x.shape[-2], x), self.weights(x.shape[-1], x)
        return rows @ x @ cols.t()  # (b, H) @ (B, C, H, W) @ (W, b) -> (B, C, b, b)
