"""CLIP data (book 6.6): image-caption pairs from the formats people keep them in, the
built-in captioned shape scenes, and the image preprocessing saved with a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from lbdl_apps.clip.scenes import SCENE_COLORS, SCENE_SHAPES, Scenes, caption_for, make_scenes

__all__ = ["SCENE_COLORS", "SCENE_SHAPES", "Scenes", "caption_for", "image_transform",
           "make_scenes"]  # fmt: skip


def image_transform(preprocessing: dict[str, Any]) -> v2.Compose:
    """PIL image -> normalized (3, S, S) float tensor: shorter side resized to S (bicubic),
    center crop, mean/std normalization."""
    size = preprocessing["image_size"]
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(preprocessing["mean"], preprocessing["std"]),
    ])  # fmt: skip
