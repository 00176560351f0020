"""Detection datasets (book 6.3): annotated images in the formats of `formats.READERS`
(VOC, YOLO, COCO) or the built-in scenes, box-aware augmentation with
torchvision.transforms.v2 (boxes as tv_tensors.BoundingBoxes travel with the image through
every geometric step), and the training targets: default boxes matched to the objects and
their encoded offsets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lbdl_apps.core.bad_records import bad_record_rule
from lbdl_apps.core.data import load_image, split_indices
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.detect.boxes import encode, match
from lbdl_apps.detect.formats import Record, read_annotations
from lbdl_apps.detect.scenes import SCENE_CLASSES, make_scene

MEAN = [0.485, 0.456, 0.406]  # ImageNet statistics: what pretrained backbones expect
STD = [0.229, 0.224, 0.225]
SCENE_SIZE = 64
VAL_SEED_OFFSET = 1_000_003  # validation scenes come from another stream than training ones
Load = Callable[[int], tuple[Any, ...]]  # index -> (uint8 C x H x W, boxes, labels[, crowd])


# ----------------------------------------------------------------------------------------------
# Augmentation


AUGMENTS = ("ssd", "light", "none")


class Augment:
    """SSD's augmentation (book 6.3) with transforms.v2 on (image, {"boxes", "labels"}):
    photometric distortion, zoom-out (the image placed on a larger canvas: smaller objects),
    a random crop that keeps some IoU with the objects, horizontal flip, then resize to the
    square input; boxes that leave the crop are dropped with their labels. "light" keeps
    only the photometric distortion and the flip (enough for endless built-in scenes),
    "none" only resizes."""

    def __init__(self, image_size: int, zoom_out: float = 4.0, kind: str = "ssd") -> None:
        if kind not in AUGMENTS:
            raise LbdlError(f"--augment {kind}: choose one of {', '.join(AUGMENTS)}")
        self.kind = kind
        fill = [round(255 * m) for m in MEAN]
        self.photometric = v2.RandomPhotometricDistort(p=0.5)
        self.zoom = v2.RandomZoomOut(fill=fill, side_range=(1.0, zoom_out), p=0.5)
        self.crop = v2.RandomIoUCrop()
        self.flip = v2.RandomHorizontalFlip()
        self.resize = v2.Resize((image_size, image_size), antialias=True)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.kind != "none":
            image, target = self.photometric(image, target)
        if self.kind == "ssd":
            if self.zoom.side_range[1] > 1.0:
                image, target = self.zoom(image, target)
            if len(target["boxes"]):  # the IoU crop needs objects to keep
                image, target = self.sanitize(*self.crop(image, target))
        if self.kind != "none":
            image, target = self.flip(image, target)
        return self.sanitize(*self.resize(image, target))


def resize_only(image_size: int) -> v2.Resize:
    """Evaluation and prediction: the image resized to the square input, nothing else."""
    return v2.Resize((image_size, image_size), antialias=True)


def normalize(image: Tensor) -> Tensor:
    """uint8 (C, H, W) -> float, ImageNet mean/std normalized."""
    return v2.functional.normalize(image.float().div(255), MEAN, STD)


RESIZES = ("square", "bilinear")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input (the checkpoint's "preprocessing"): resized to
    the square `image_size`, scaled to [0, 1], normalized by `mean` and `std`. "square"
    resizes the uint8 image with antialiasing (lbdl's own models); "bilinear" resizes the
    normalized float image without antialiasing, as torchvision's detection transform does
    (its models were trained and evaluated so)."""

    image_size: int
    mean: tuple[float, ...] = tuple(MEAN)
    std: tuple[float, ...] = tuple(STD)
    resize: str = "square"

    @classmethod
    def of(cls, meta: dict[str, Any], image_size: int) -> Preprocessing:
        """The preprocessing a checkpoint's metadata describes (older ones: ImageNet
        statistics, "square")."""
        given = meta.get("preprocessing") or {}
        resize = given.get("resize", "square")
        if resize not in RESIZES:
            raise LbdlError(f"preprocessing: unknown resize {resize!r} (a newer lbdl?)")
        mean, std = given.get("mean", MEAN), given.get("std", STD)
        return cls(int(given.get("image_size", image_size)), tuple(mean), tuple(std), resize)

    def to_meta(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "resize": self.resize,
                "mean": list(self.mean), "std": list(self.std)}  # fmt: skip

    def __call__(self, image: Tensor) -> Tensor:
        """uint8 (C, H, W) -> the float input (C, S, S)."""
        size = [self.image_size, self.image_size]
        if self.resize == "square":
            if list(image.shape[-2:]) != size:
                image = resize_only(self.image_size)(image)
            return v2.functional.normalize(image.float().div(255), self.mean, self.std)
        x = v2.functional.normalize(image.float().div(255), self.mean, self.std)
        if list(x.shape[-2:]) != size:  # (C, H, W) -> (1, C, H, W) -> (C, S, S)
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        return x


# ----------------------------------------------------------------------------------------------
# Datasets


class DetectionDataset(Dataset):
    """Items of a detection set after `transform` and `prepare` (the model's preprocessing),
    as the image (normalized, C x S x S) and:
    with `priors` (training), the matched targets (offsets (N, 4), classes (N,), 0 = no
    object); without, the objects {"boxes" (M, 4) in [0, 1], "labels" (M,)}."""

    def __init__(
        self,
        load: Load,
        length: int,
        transform: Callable[[Any, Any], tuple[Any, Any]],
        priors: Tensor | None = None,
        iou_threshold: float = 0.5,
        prepare: Callable[[Tensor], Tensor] = normalize,
    ) -> None:
        self.load, self.length = load, length
        self.transform = transform
        self.priors = priors
        self.iou_threshold = iou_threshold
        self.prepare = prepare

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        pixels, boxes, labels, *crowd = self.load(index)
        height, width = pixels.shape[-2:]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(boxes).reshape(-1, 4),  # (M, 4), also for M = 0
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.as_tensor(labels, dtype=torch.long),
        }
        image, target = self.transform(tv_tensors.Image(pixels), target)
        size = torch.tensor(image.shape[-2:][::-1], dtype=torch.float32).repeat(2)
        boxes = target["boxes"].as_subclass(Tensor).float() / size
        image = self.prepare(image.as_subclass(Tensor))
        if self.priors is None:
            objects = {"boxes": boxes, "labels": target["labels"]}
            if crowd and len(crowd[0][1]):  # resized as the image: fractions of the original
                crowd_boxes = torch.as_tensor(crowd[0][0], dtype=torch.float32).reshape(-1, 4)
                objects["crowd_boxes"] = crowd_boxes / torch.tensor([width, height] * 2)
                objects["crowd_labels"] = torch.as_tensor(crowd[0][1], dtype=torch.long)
            return image, objects
        classes, matched = match(boxes, target["labels"], self.priors, self.iou_threshold)
        return image, encode(matched, self.priors), classes


def eval_collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict]]:
    """Validation batches: stacked images and the list of their objects."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def record_loader(records: Sequence[Record]) -> Load:
    """index -> (image, boxes, labels, (crowd boxes, crowd labels))."""

    def load(index: int) -> tuple[Tensor, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        record = records[index]
        image = v2.functional.pil_to_tensor(load_image(record.image, "RGB"))
        return image, record.boxes, record.labels, (record.crowd_boxes, record.crowd_labels)

    return load


def scene_loader(size: int, seed: int) -> Load:
    def load(index: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
        image, boxes, labels = make_scene(index, size, seed)
        pixels = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
        return pixels, boxes, labels

    return load


# ----------------------------------------------------------------------------------------------
# What train and evaluate read


@dataclass
class Split:
    """The items of one split: `load(i)` for i in range(count)."""

    load: Load
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass
class DetectData:
    """The training and validation splits (records or scene streams) and the class names."""

    train: Split
    val: Split
    labels: list[str]
    source: str
    format: str
    objects: int = 0

    @property
    def train_count(self) -> int:
        return self.train.count

    @property
    def val_count(self) -> int:
        return self.val.count

    def splits(self) -> dict[str, Split | None]:
        """The splits by name, as `core.evaluation.split_names` reads them (no test split)."""
        return {"train": self.train, "val": self.val, "test": None}

    def train_set(
        self,
        image_size: int,
        priors: Tensor,
        zoom_out: float,
        iou: float,
        augment: str = "ssd",
        prepare: Preprocessing | None = None,
    ) -> Dataset:
        augmentation = Augment(image_size, zoom_out, augment)
        return DetectionDataset(
            self.train.load, self.train.count, augmentation, priors, iou, prepare or normalize
        )

    def eval_set(
        self, image_size: int, split: str = "val", prepare: Preprocessing | None = None
    ) -> Dataset:
        """A split resized to the input as `prepare` says (default: lbdl's), with its
        objects (for the mAP)."""
        part = self.splits()[split]
        if part is None:
            raise LbdlError(f"{self.source}: has no {split} split")
        if prepare is not None and prepare.resize != "square":  # `prepare` resizes
            return DetectionDataset(part.load, part.count, lambda i, t: (i, t), prepare=prepare)
        resize = resize_only(image_size)
        return DetectionDataset(
            part.load, part.count, lambda i, t: resize(i, t), prepare=prepare or normalize
        )

    def val_set(self, image_size: int, prepare: Preprocessing | None = None) -> Dataset:
        return self.eval_set(image_size, "val", prepare)


def parse_classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise LbdlError(f"--classes {text}: give distinct class names, comma separated")
    return names


def load_detect_data(
    data: str | None,
    fmt: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    scenes: int = 2000,
    classes: list[str] | None = None,
    scene_size: int = SCENE_SIZE,
) -> DetectData:
    """The built-in scenes (data None: `scenes` training scenes and a fifth as many held out,
    each from its own stream) or an annotated dataset in a format of `formats.READERS`
    (`fmt`, or recognised), split with a seeded `val_fraction` (0: all of it in train)."""
    if data is None:
        if fmt is not None:
            raise LbdlError(f"--format {fmt}: needs --data")
        return DetectData(
            Split(scene_loader(scene_size, seed), scenes),
            Split(scene_loader(scene_size, seed + VAL_SEED_OFFSET), max(scenes // 5, 8)),
            list(SCENE_CLASSES),
            f"built-in scenes ({scene_size}px)",
            "scenes",
        )
    found = read_annotations(Path(data).expanduser(), fmt, classes)
    bad_record_rule(found.bad, len(found.records) + len(found.bad), skip_bad)
    records = found.records
    if not records:
        raise LbdlError(f"{data}: holds no annotated images")
    if not found.classes:
        raise LbdlError(f"{data}: its annotations name no classes")
    train_idx, val_idx = split_indices(len(records), val_fraction, seed)
    train = [records[i] for i in train_idx]
    val = [records[i] for i in val_idx]
    return DetectData(
        Split(record_loader(train), len(train)),
        Split(record_loader(val), len(val)),
        found.classes,
        f"{data} ({found.format})",
        found.format,
        sum(len(r.labels) for r in records),
    )
