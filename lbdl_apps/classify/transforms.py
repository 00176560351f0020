"""Image transforms of classification (book 6.2, 5.2 data augmentation): random crops,
flips, TrivialAugment or RandAugment and MixUp / CutMix for training; the resize and center
crop of evaluation and inference, with the normalization stored in the checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.transforms import v2

from lbdl_apps.core.data import (
    ImageRecords,
    Record,
    TensorImageDataset,
    center_transform,
    convert_image,
    load_image,
)
from lbdl_apps.core.errors import LbdlError

AUGMENTS = ("basic", "trivial", "randaugment", "none")
TINY = 32  # images this small are padded and cropped, not resized, for augmentation
DEFAULT_MAX_SIZE = 224  # default input size for large photos
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_STATS_SAMPLE_TENSORS = 10000
_STATS_SAMPLE_FILES = 256
_PROBE_SAMPLE = 64


def eval_resize(image_size: int) -> int:
    """Short side an image is resized to before the center crop at evaluation."""
    return image_size if image_size <= TINY else round(image_size / 0.875)


def build_transforms(
    train: bool,
    image_size: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: str = "basic",
    hflip: bool = True,
    resize: int | None = None,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """PIL image or uint8 tensor -> normalized float tensor (in_channels, S, S).
    Training: random crop (padded for tiny images, RandomResizedCrop otherwise), optional
    horizontal flip, and TrivialAugment or RandAugment; evaluation: resize (`interpolation`,
    antialiased) + center crop."""
    if augment not in AUGMENTS:
        raise LbdlError(f"--augment {augment}: choose one of {', '.join(AUGMENTS)}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values")
    if not train or augment == "none":
        evaluation = resize or eval_resize(image_size)
        mode = v2.InterpolationMode(interpolation)
        return center_transform(image_size, in_channels, mean, std, evaluation, mode)
    steps: list[Callable[[Any], Any]] = [
        v2.ToImage(),
        v2.Grayscale(1) if in_channels == 1 else v2.RGB(),
    ]
    if image_size <= TINY:
        steps += [
            v2.Resize(image_size),
            v2.RandomCrop(image_size, padding=4, padding_mode="reflect"),
        ]
    else:
        steps.append(v2.RandomResizedCrop(image_size, scale=(0.35, 1.0)))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif augment == "randaugment":
        steps.append(v2.RandAugment())
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def preprocess_for_inference(
    images: Sequence[Image.Image | str | Path], preprocessing: dict[str, Any]
) -> Tensor:
    """A batch (N, C, S, S) prepared as at evaluation, from PIL images (or paths, read with
    `load_image`) and a checkpoint's preprocessing dict."""
    mode = "L" if preprocessing["in_channels"] == 1 else "RGB"
    transform = build_transforms(
        False,
        preprocessing["image_size"],
        preprocessing["in_channels"],
        preprocessing["mean"],
        preprocessing["std"],
        resize=preprocessing.get("resize"),
        interpolation=preprocessing.get("interpolation", "bilinear"),
    )
    batch = [
        transform(
            load_image(image, mode)
            if isinstance(image, (str, Path))
            else convert_image(image, mode)
        )
        for image in images
    ]
    if not batch:
        size = preprocessing["image_size"]
        return torch.zeros(0, preprocessing["in_channels"], size, size)
    return torch.stack(batch)


class MixCollate:
    """Collate a batch, then MixUp or CutMix it: returns (images, soft targets)
    with targets (B, num_classes) summing to 1. Picklable, for DataLoader workers."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.num_classes = num_classes
        mixers: list[Callable[..., Any]] = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers or [None])[0]

    def __call__(self, batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        images, labels = default_collate(batch)
        if self.mix is None:
            return images, F.one_hot(labels, self.num_classes).float()
        return self.mix(images, labels)


def mix_collate(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> MixCollate:
    """A DataLoader collate_fn applying MixUp and/or CutMix (chosen at random per batch)."""
    return MixCollate(num_classes, mixup_alpha, cutmix_alpha)


# ----------------------------------------------------------------------------------------------
# Probing image files and computing normalization statistics


def probe_images(records: list[Record], seed: int) -> tuple[bool, int]:
    """(all grayscale?, median short side) over a seeded sample of image files."""
    rng = np.random.default_rng(seed)
    count = min(len(records), _PROBE_SAMPLE)
    picks = rng.choice(len(records), count, replace=False) if count else []
    gray = True
    sides = []
    for i in picks:
        path = records[int(i)][0]
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                if image.mode == "P":
                    rgb = np.asarray(image.convert("RGB"))
                    gray &= bool(
                        (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
                    )
                else:
                    gray &= image.mode in _GRAY_MODES
        except Exception:  # already reported by check_records
            continue
    return gray, int(np.median(sides)) if sides else DEFAULT_MAX_SIZE


def channel_stats(
    dataset: ImageRecords | TensorImageDataset, in_channels: int, image_size: int, seed: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel values in [0, 1] over a seeded sample."""
    rng = np.random.default_rng(seed)
    if isinstance(dataset, TensorImageDataset):
        count = min(len(dataset), _STATS_SAMPLE_TENSORS)
        picks = torch.from_numpy(np.sort(rng.choice(len(dataset), count, replace=False)))
        pixels = dataset.images[picks].float().div_(255.0)
    else:
        count = min(len(dataset), _STATS_SAMPLE_FILES)
        picks = np.sort(rng.choice(len(dataset), count, replace=False))
        draft = 2 * image_size
        plain = build_transforms(
            False, image_size, in_channels, [0.0] * in_channels, [1.0] * in_channels
        )
        pixels = torch.stack(
            [plain(load_image(dataset.records[int(i)][0], dataset.mode, draft)) for i in picks]
        )
    pixels = pixels.transpose(0, 1).reshape(in_channels, -1)
    mean = pixels.mean(1)
    std = pixels.std(1).clamp_min(1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
