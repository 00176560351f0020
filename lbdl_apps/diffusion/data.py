"""Training data of `lbdl diffusion` (book 7.2): images scaled to [-1, 1], with a class label,
a caption or nothing, read from the formats people keep them in:

- a folder of images (unconditional), class folders / train/ layouts, idx files, a path,label
  CSV (class-conditional; the readers of `lbdl classify`);
- image-caption pairs (text-conditional), in the formats of `lbdl clip`: .csv/.jsonl
  manifests with image and caption columns, COCO captions JSON, x.png + x.txt sidecars;
- built-in captioned shape scenes, made on the fly (the scenes of `lbdl clip`): captions for
  text conditioning, or a class per color, shape or color-shape pair."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lbdl_apps.classify.data import build_transforms, load_classify_data
from lbdl_apps.core.data import (
    IMAGE_EXTENSIONS,
    ImageRecords,
    TensorImageDataset,
    check_records,
    find_images,
)
from lbdl_apps.core.errors import LbdlError

SCENE_LABELS = ("color", "shape", "color-shape")
BUILTIN_SIZE = 32
MAX_FILE_SIZE = 64  # default side for image files: larger ones are scaled down


@dataclass
class DiffusionData:
    """A training set of (image in [-1, 1] (C, S, S), condition) items, where the condition
    is an int label (`labels` names them), a caption string (`captions`), or 0 (none)."""

    train: Dataset
    kind: str  # "none", "class" or "text": what the data can condition on
    labels: list[str]
    channels: int
    image_size: int
    source: str
    real: Dataset | None = None  # held-out real images (the test split) when the data has one


class Captioned(Dataset):
    """Images (any `images[i] -> (tensor, _)` dataset) paired with a caption each."""

    def __init__(self, images: Dataset, captions: list[str]) -> None:
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        return self.images[index][0], self.captions[index]


class EmbeddedCaptions(Dataset):
    """Captioned items with each caption replaced by its (precomputed) text embedding."""

    def __init__(self, captioned: Captioned, embeddings: Tensor, index: dict[str, int]) -> None:
        self.captioned, self.embeddings, self.index = captioned, embeddings, index

    def __len__(self) -> int:
        return len(self.captioned)

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        image, caption = self.captioned[i]
        return image, self.embeddings[self.index[caption]]


def image_transform(size: int, channels: int, hflip: bool = False) -> v2.Compose:
    """PIL image or uint8 tensor -> float (channels, size, size) in [-1, 1]: resized on the
    short side and center-cropped, optionally flipped at random."""
    half = [0.5] * channels
    base = build_transforms(False, size, channels, half, half, resize=size)
    return v2.Compose([v2.RandomHorizontalFlip(), base]) if hflip else base


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] (what is saved and what the metrics read)."""
    return (x.float() + 1).mul(0.5).clamp(0, 1)


def scene_classes(attributes: list[dict[str, str]], by: str) -> tuple[np.ndarray, list[str]]:
    """A class per scene: its color, its shape or its "color shape" pair."""
    if by not in SCENE_LABELS:
        raise LbdlError(f"--scene-label {by}: choose one of {', '.join(SCENE_LABELS)}")
    keys = {"color": ("color",), "shape": ("shape",), "color-shape": ("color", "shape")}[by]
    names = [" ".join(a[k] for k in keys) for a in attributes]
    labels = sorted(set(names))
    index = {name: i for i, name in enumerate(labels)}
    return np.array([index[n] for n in names], np.int64), labels


def builtin_scenes(
    n: int, image_size: int, seed: int, captions: bool, scene_label: str
) -> DiffusionData:
    """The built-in captioned shape scenes (`lbdl clip`'s), text- or class-conditional."""
    from lbdl_apps.clip.scenes import make_scenes

    scenes = make_scenes(n, image_size, seed)
    transform = image_transform(image_size, 3)
    what = f"{n} built-in shape scenes ({image_size}x{image_size} RGB, seed {seed})"
    if captions:
        images = TensorImageDataset(scenes.images, np.zeros(n, np.int64), transform)
        return DiffusionData(
            Captioned(images, list(scenes.captions)), "text", [], 3, image_size, what
        )
    labels, names = scene_classes(scenes.attributes, scene_label)
    images = TensorImageDataset(scenes.images, labels, transform)
    source = f"{what}, a class per {scene_label}"
    return DiffusionData(images, "class", names, 3, image_size, source)


def is_manifest(path: Path) -> bool:
    """A .jsonl or COCO .json, or a .csv whose header has a caption or text column (a
    path,label CSV is a classification list)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return True
    if suffix != ".csv":
        return False
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return bool({"caption", "text"} & {column.strip().lower() for column in header})


def _captioned_files(
    data: str, image_size: int | None, seed: int, skip_bad: bool, hflip: bool
) -> DiffusionData:
    """Image-caption pairs read by `lbdl clip`'s readers (manifests, COCO captions, .txt
    sidecars); an image with several captions gives one item per caption."""
    from lbdl_apps.clip.data import load_clip_data

    size = image_size or BUILTIN_SIZE
    pairs = load_clip_data(data, size, val_fraction=0.0, seed=seed, skip_bad=skip_bad)
    found = pairs.train
    transform = image_transform(size, 3, hflip)
    items = [(i, caption) for i, options in enumerate(found.captions) for caption in options]
    if isinstance(found.images, Tensor):
        images: Dataset = TensorImageDataset(
            found.images.permute(0, 2, 3, 1)[[i for i, _ in items]].numpy(),
            np.zeros(len(items), np.int64),
            transform,
        )
    else:
        images = ImageRecords([(found.images[i], 0) for i, _ in items], transform, "RGB")
    captions = [caption for _, caption in items]
    return DiffusionData(
        Captioned(images, captions),
        "text",
        [],
        3,
        size,
        f"{pairs.source} ({len(captions)} captions)",
    )


def _plain_folder(
    folder: Path, image_size: int | None, channels: int | None, skip_bad: bool, hflip: bool
) -> DiffusionData:
    records = check_records([(p, 0) for p in find_images(folder)], skip_bad)
    if not records:
        raise LbdlError(f"{folder}: holds no images")
    channels = channels or 3
    size = image_size or BUILTIN_SIZE
    mode = "L" if channels == 1 else "RGB"
    train = ImageRecords(records, image_transform(size, channels, hflip), mode)
    source = f"{len(records)} images in {folder} (no classes)"
    return DiffusionData(train, "none", [], channels, size, source)


def load_diffusion_data(
    data: str | None,
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    builtin_count: int = 6000,
    captions: bool = False,
    scene_label: str = "color-shape",
    hflip: bool = False,
) -> DiffusionData:
    """Read `--data` for diffusion training, detecting its format (see the module doc).
        `captions`: read the captions of the built-in scenes (text conditioning) rather than
        their classes; `channels` forces gray (1) or color (3) images; `hflip` flips the images of
    files at random (not the scenes, whose captions say left and right)."""
    if channels not in (None, 1, 3):
        raise LbdlError(f"--channels {channels}: choose 1 (gray) or 3 (color)")
    if image_size is not None and image_size < 8:
        raise LbdlError(f"--image-size {image_size}: must be at least 8")
    if data is None:
        return builtin_scenes(
            builtin_count, image_size or BUILTIN_SIZE, seed, captions, scene_label
        )
    path = Path(data).expanduser()
    if not path.exists():
        raise LbdlError(f"{data}: no such file or folder")
    if path.is_file() and is_manifest(path):
        return _captioned_files(data, image_size, seed, skip_bad, hflip)
    if path.is_dir():
        if any(p.with_suffix(".txt").is_file() for p in find_images(path)):
            return _captioned_files(data, image_size, seed, skip_bad, hflip)
        loose = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        has_classes = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        idx = any(path.glob("train-images*"))
        if loose and not has_classes and not idx:
            return _plain_folder(path, image_size, channels, skip_bad, hflip)
    found = load_classify_data(
        data, image_size, val_fraction=0.0, seed=seed, skip_bad=skip_bad, augment="none"
    )
    channels = channels or found.in_channels
    size = image_size or min(found.image_size, MAX_FILE_SIZE)
    mode = "L" if channels == 1 else "RGB"
    for part, flip in ((found.train, hflip), (found.test, False)):
        if part is not None:
            part.transform = image_transform(size, channels, flip)
            if isinstance(part, ImageRecords):
                part.mode = mode
    return DiffusionData(
        found.train, "class", found.labels, channels, size, found.source, found.test
    )


def collate_images(batch: list[tuple[Any, Any]]) -> tuple[Tensor, Any]:
    """Stack images; conditions become a tensor (labels, embeddings) or stay a list (text)."""
    images = torch.stack([item[0] for item in batch])
    conds = [item[1] for item in batch]
    if isinstance(conds[0], Tensor):
        return images, torch.stack(conds)
    if isinstance(conds[0], str):
        return images, conds
    return images, torch.as_tensor(conds, dtype=torch.long)
