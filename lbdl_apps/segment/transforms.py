"""Image/mask pairs made into tensors for segmentation (book 6.4): joint augmentation with
torchvision.transforms.v2 (masks are tv_tensors.Mask, so every geometric step uses
nearest-neighbour on them, and the padding is the ignored value), the elastic deformation of
the U-Net paper, the datasets that apply them, and the preprocessing of inference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lbdl_apps.core.data import load_image
from lbdl_apps.segment.masks import IGNORE, Pair, read_mask_array, to_classes

ELASTIC_SMOOTHNESS = 8.0  # pixels: the Gaussian sigma that smooths the displacement field


def build_transform(
    train: bool,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.75, 1.25),
    vflip: bool = False,
    elastic: float = 0.0,
) -> v2.Compose:
    """(image, Mask) -> (normalized float image, Mask). Training: random scale, random crop
    to `image_size` (padded where the image is smaller; padding is ignored in the mask),
    with `elastic` > 0 a smooth elastic deformation of about that many pixels (the U-Net
    paper's augmentation for microscopy), horizontal (and with `vflip` vertical) flips,
    brightness/contrast on the image only."""
    steps: list[Any] = []
    if train:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}
        steps += [
            v2.RandomAffine(degrees=0, scale=scale, fill=fill),
            v2.RandomCrop(image_size, pad_if_needed=True, fill=fill),
            *([elastic_deformation(elastic, fill)] if elastic > 0 else []),
            v2.RandomHorizontalFlip(),
            *([v2.RandomVerticalFlip()] if vflip else []),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    return v2.Compose(steps)


def elastic_deformation(pixels: float, fill: dict[type, int]) -> v2.ElasticTransform:
    """An elastic deformation whose displacements have a standard deviation of about `pixels`.

    torchvision blurs uniform noise in [-1, 1] with a Gaussian of sigma s (standard deviation
    about 1 / (s * sqrt(12 pi))) and scales it by alpha / 2 pixels: alpha follows."""
    alpha = pixels * 2 * ELASTIC_SMOOTHNESS * math.sqrt(12 * math.pi)
    return v2.ElasticTransform(alpha=alpha, sigma=ELASTIC_SMOOTHNESS, fill=fill)


def apply_pair(transform: Any, image: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """Run a joint transform on a uint8 (C, H, W) image tensor and a uint8 (H, W) mask array;
    returns the float image and the long mask."""
    out_image, out_mask = transform(
        tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(np.array(mask, np.uint8)))
    )
    return out_image.as_subclass(Tensor), out_mask.as_subclass(Tensor).long()


def preprocess_image(image: Image.Image, preprocessing: dict[str, Any]) -> Tensor:
    """A PIL image -> normalized float (C, H, W), as evaluation sees it."""
    tensor = v2.functional.pil_to_tensor(image).float().div_(255)
    mean = torch.tensor(preprocessing["mean"])[:, None, None]  # (C,) -> (C, 1, 1)
    std = torch.tensor(preprocessing["std"])[:, None, None]
    return (tensor - mean) / std


def list_collate(batch: list[Any]) -> list[Any]:
    """Validation items keep their own sizes: a batch is the list of (image, mask) pairs."""
    return batch


class PairDataset(Dataset):
    """(image, mask) files -> (normalized float (C, H, W), long (H, W) mask, 255 ignored)."""

    def __init__(self, pairs: Sequence[Pair], mode: str, mask_mode: str, transform: Any) -> None:
        self.pairs = list(pairs)
        self.mode, self.mask_mode, self.transform = mode, mask_mode, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image = load_image(image_path, self.mode)
        mask = to_classes(read_mask_array(mask_path), self.mask_mode)
        return apply_pair(self.transform, v2.functional.pil_to_tensor(image), mask)


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, H, W[, C]) and masks (N, H, W)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, transform: Any) -> None:
        images = torch.from_numpy(np.ascontiguousarray(images))
        # (N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W)
        self.images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
        self.masks = masks
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return apply_pair(self.transform, self.images[index], self.masks[index])
