"""Training data of `lbdl diffusion` (book 7.2): images scaled to [-1, 1], with a class label,
a caption or nothing, read from the formats people keep them in, one registry entry each:

- image-caption pairs (text-conditional), read by `lbdl clip`'s API: .csv/.jsonl manifests
  with image and caption columns, COCO captions JSON, x.png + x.txt sidecars;
- a folder of images (unconditional);
- labelled images (class-conditional), read by `lbdl classify`'s API: class folders,
  train/ (val/, test/) layouts, idx files, a path,label CSV;
- built-in captioned shape scenes, made on the fly (the scenes of `lbdl clip`): captions for
  text conditioning, or a class per color, shape or color-shape pair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lbdl_apps.classify.api import labelled_images
from lbdl_apps.clip.api import TextEncoder, caption_pairs, has_captions, make_scenes
from lbdl_apps.core.data import (
    IMAGE_EXTENSIONS,
    ImageRecords,
    TensorImageDataset,
    center_transform,
    check_records,
    find_images,
)
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers

SCENE_LABELS = ("color", "shape", "color-shape")
BUILTIN_SIZE = 32
MAX_FILE_SIZE = 64  # default side for image files: larger ones are scaled down


@dataclass
class DiffusionData:
    """A training set of (image in [-1, 1] (C, S, S), condition) items, where the condition
    is an int label (`labels` names them), a caption string (`captions`), or 0 (none); and
    the data's own val and test splits of real images, when it has them."""

    train: Dataset
    kind: str  # "none", "class" or "text": what the data can condition on
    labels: list[str]
    channels: int
    image_size: int
    source: str
    val: Dataset | None = None
    test: Dataset | None = None

    def splits(self) -> dict[str, Dataset | None]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass
class Request:
    """How the images of --data are to be read."""

    image_size: int | None = None  # None: the data's own (at most MAX_FILE_SIZE)
    channels: int | None = None  # None: the data's own
    seed: int = 0
    skip_bad: bool = False
    hflip: bool = False  # random horizontal flips of the training images


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


def embed_captions(captioned: Captioned, encoder: TextEncoder, batch_size: int = 256):
    """The captioned images with each distinct caption embedded once, before training."""
    unique = sorted(set(captioned.captions))
    rows = [
        encoder.encode_text(unique[i : i + batch_size]).float().cpu()
        for i in range(0, len(unique), batch_size)
    ]
    index = {caption: i for i, caption in enumerate(unique)}
    return EmbeddedCaptions(captioned, torch.cat(rows), index)


def image_transform(size: int, channels: int, hflip: bool = False) -> v2.Compose:
    """PIL image or uint8 tensor -> float (channels, size, size) in [-1, 1]: resized on the
    short side and center-cropped, optionally flipped at random."""
    centered = center_transform(size, channels, [0.5] * channels, [0.5] * channels)
    return v2.Compose([v2.RandomHorizontalFlip(), centered]) if hflip else centered


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


READERS: Readers = Readers("image data for diffusion")


@READERS.register(
    "captions", "image-caption pairs (the formats of lbdl clip: manifests, COCO, sidecars)",
    has_captions,
)  # fmt: skip
def read_captions(path: Path, request: Request) -> DiffusionData:
    """Image-caption pairs read by `lbdl clip`'s API; an image with several captions gives
    one item per caption."""
    size = request.image_size or BUILTIN_SIZE
    found, source = caption_pairs(str(path), request.seed, request.skip_bad)
    transform = image_transform(size, 3, request.hflip)
    items = [(i, caption) for i, options in enumerate(found.captions) for caption in options]
    if isinstance(found.images, Tensor):
        pixels = found.images.permute(0, 2, 3, 1)[[i for i, _ in items]]  # NCHW -> NHWC
        zeros = np.zeros(len(items), np.int64)
        images: Dataset = TensorImageDataset(pixels.numpy(), zeros, transform)
    else:
        images = ImageRecords([(found.images[i], 0) for i, _ in items], transform, "RGB")
    captions = [caption for _, caption in items]
    text = f"{source} ({len(captions)} captions)"
    return DiffusionData(Captioned(images, captions), "text", [], 3, size, text)


def _loose_images(folder: Path) -> bool:
    """A folder of images alone: no class folders, no idx files."""
    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries)
    has_classes = any(p.is_dir() and not p.name.startswith(".") for p in entries)
    return loose and not has_classes and not any(folder.glob("train-images*"))


@READERS.register("images", "a folder of images without classes", _loose_images)
def read_images(folder: Path, request: Request) -> DiffusionData:
    """Unlabelled images (unconditional), under the bad-record rule."""
    records = check_records([(p, 0) for p in find_images(folder)], request.skip_bad)
    if not records:
        raise LbdlError(f"{folder}: holds no images")
    channels = request.channels or 3
    size = request.image_size or BUILTIN_SIZE
    mode = "L" if channels == 1 else "RGB"
    train = ImageRecords(records, image_transform(size, channels, request.hflip), mode)
    source = f"{len(records)} images in {folder} (no classes)"
    return DiffusionData(train, "none", [], channels, size, source)


@READERS.register("labelled", "labelled images (the formats of lbdl classify)", Path.exists)
def read_labelled(path: Path, request: Request) -> DiffusionData:
    """Labelled images read by `lbdl classify`'s API, with their own val and test splits."""
    found = labelled_images(str(path), request.seed, request.skip_bad)
    channels = request.channels or found.channels
    size = request.image_size or min(found.image_size, MAX_FILE_SIZE)

    def transform(split: str) -> v2.Compose:
        return image_transform(size, channels, request.hflip and split == "train")

    found.prepare(transform, channels)
    splits = found.splits
    return DiffusionData(
        splits["train"], "class", found.labels, channels, size, found.source,  # type: ignore[arg-type]
        splits.get("val"), splits.get("test"),
    )  # fmt: skip


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
    their classes; `channels` forces gray (1) or color (3) images; `hflip` flips the images
    of files at random (not the scenes, whose captions say left and right)."""
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
    request = Request(image_size, channels, seed, skip_bad, hflip)
    return READERS.find(path).read(path, request)


def collate_images(batch: Sequence[tuple[Any, Any]]) -> tuple[Tensor, Any]:
    """Stack images; conditions become a tensor (labels, embeddings) or stay a list (text)."""
    images = torch.stack([item[0] for item in batch])
    conds = [item[1] for item in batch]
    if isinstance(conds[0], Tensor):
        return images, torch.stack(conds)
    if isinstance(conds[0], str):
        return images, conds
    return images, torch.as_tensor(conds, dtype=torch.long)
