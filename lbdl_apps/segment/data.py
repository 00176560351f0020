"""Segmentation data (book 6.4): image + mask pairs from folders (index or binary PNG masks),
the Pascal VOC layout, or built-in scenes of shapes made on the fly; joint image/mask
augmentation with torchvision.transforms.v2 (masks as tv_tensors.Mask, so every geometric
step uses nearest-neighbour on them) and the bad-record rule for training sets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lbdl_apps.core.data import IMAGE_EXTENSIONS, load_image, split_indices
from lbdl_apps.core.errors import LbdlError, report

IGNORE = 255  # mask value that no loss or metric counts (the VOC object borders)
MASK_MODES = ("index", "binary", "voc")
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
SCENE_CLASSES = ["background", "disk", "square", "triangle"]
IMAGE_DIRS = ("images", "image", "imgs", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "SegmentationClass")
Pair = tuple[Path, Path]


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC color map (class i's bits spread over the high bits of R, G, B)."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


_FIXED = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
]  # fmt: skip


def palette_for(mask_mode: str, num_classes: int) -> list[list[int]]:
    """Colors of the classes: the VOC palette for VOC data, a fixed distinct one otherwise."""
    voc = voc_palette(max(num_classes, 1))
    if mask_mode == "voc":
        return [list(c) for c in voc]
    return [list(_FIXED[i] if i < len(_FIXED) else voc[i]) for i in range(num_classes)]


# ----------------------------------------------------------------------------------------------
# Built-in scenes: textured backgrounds with disks, squares and triangles


def make_scenes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` RGB scenes (n, size, size, 3) uint8 and their index masks (n, size, size) uint8:
    a smooth textured, noisy grayish background and 2-4 shapes of random saturated color
    (classes 1-3: disk, square, triangle; only their geometry tells them apart)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        fx, fy = rng.uniform(0.05, 0.4, 2)
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = rng.uniform(70, 180) + rng.uniform(-12, 12, 3)  # a grayish, tinted background
        texture = np.sin(fx * xx + phase[0])[..., None] * np.cos(fy * yy + phase[1])[..., None]
        image = base + 35 * texture * rng.uniform(0.3, 1.0, 3)
        mask = masks[k]
        for _ in range(rng.integers(2, 5)):
            cls = int(rng.integers(1, 4))
            r = rng.uniform(0.09, 0.2) * size
            cy, cx = rng.uniform(r, size - r, 2)
            if cls == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif cls == 2:
                inside = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
            else:
                top, left, right = (cy - r, cx), (cy + r * 0.8, cx - r), (cy + r * 0.8, cx + r)
                inside = _in_triangle(yy, xx, top, left, right)
            color = rng.permutation(
                [rng.uniform(180, 255), rng.uniform(0, 70), rng.uniform(0, 255)]
            )  # a saturated color
            image[inside] = color + 20 * texture[inside] * rng.uniform(-1, 1)
            mask[inside] = cls
        image += rng.normal(0, 10, image.shape)
        images[k] = np.clip(image, 0, 255).astype(np.uint8)
    return images, masks


def _in_triangle(yy: np.ndarray, xx: np.ndarray, *corners: tuple[float, float]) -> np.ndarray:
    (y1, x1), (y2, x2), (y3, x3) = corners

    def side(ya: float, xa: float, yb: float, xb: float) -> np.ndarray:
        return (xx - xb) * (ya - yb) - (xa - xb) * (yy - yb)

    d1, d2, d3 = side(y1, x1, y2, x2), side(y2, x2, y3, x3), side(y3, x3, y1, x1)
    negative = (d1 < 0) | (d2 < 0) | (d3 < 0)
    positive = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(negative & positive)


# ----------------------------------------------------------------------------------------------
# Masks


def read_mask_array(path: Path) -> np.ndarray:
    """A mask file's values as (H, W) uint8: palette PNGs give their indices, gray images
    their values. RGB masks are refused (colors are not class indices)."""
    try:
        with Image.open(path) as mask:
            if mask.mode in ("P", "L"):
                array = np.asarray(mask)
            elif mask.mode in ("1",):
                array = np.asarray(mask.convert("L"))
            elif mask.mode in ("I", "I;16", "I;16B", "I;16L"):
                array = np.asarray(mask).astype(np.int64)
                if array.size and array.max() > 255:
                    raise LbdlError(f"{path}: mask values above 255 ({int(array.max())})")
                array = array.astype(np.uint8)
            elif mask.mode == "LA":
                array = np.asarray(mask.getchannel("L"))
            else:
                raise LbdlError(
                    f"{path}: a {mask.mode} mask; masks are gray or palette PNGs of class indices"
                )
            return np.array(array, dtype=np.uint8)
    except LbdlError:
        raise
    except FileNotFoundError:
        raise LbdlError(f"{path}: cannot read mask (no such file)") from None
    except Exception as error:
        raise LbdlError(f"{path}: cannot read mask ({str(error).splitlines()[0]})") from error


def to_classes(array: np.ndarray, mask_mode: str) -> np.ndarray:
    """Raw mask values -> class indices (255 = ignored): binary maps 0/255 to 0/1."""
    if mask_mode == "binary":
        return (array == 255).astype(np.uint8)
    return array


def bad_values(values: np.ndarray, mask_mode: str, num_classes: int) -> list[int]:
    """The mask values (from np.unique) that are not classes of `mask_mode`."""
    if mask_mode == "binary":
        return [int(v) for v in values if v not in (0, 255)]
    return [int(v) for v in values if v >= num_classes and v != IGNORE]


# ----------------------------------------------------------------------------------------------
# Datasets and transforms


def list_collate(batch: list[Any]) -> list[Any]:
    """Validation items keep their own sizes: a batch is the list of (image, mask) pairs."""
    return batch


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


ELASTIC_SMOOTHNESS = 8.0  # pixels: the Gaussian sigma that smooths the displacement field


def elastic_deformation(pixels: float, fill: dict[type, int]) -> v2.ElasticTransform:
    """An elastic deformation whose displacements have a standard deviation of about `pixels`.

    torchvision blurs uniform noise in [-1, 1] with a Gaussian of sigma s (standard deviation
    about 1 / (s * sqrt(12 pi))) and scales it by alpha / 2 pixels: alpha follows."""
    alpha = pixels * 2 * ELASTIC_SMOOTHNESS * math.sqrt(12 * math.pi)
    return v2.ElasticTransform(alpha=alpha, sigma=ELASTIC_SMOOTHNESS, fill=fill)


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
        self.images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
        self.masks = masks
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return apply_pair(self.transform, self.images[index], self.masks[index])


def apply_pair(transform: Any, image: Tensor, mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """Run a joint transform on a uint8 image tensor and a uint8 mask array."""
    out_image, out_mask = transform(
        tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(np.array(mask, np.uint8)))
    )
    return out_image.as_subclass(Tensor), out_mask.as_subclass(Tensor).long()


# ----------------------------------------------------------------------------------------------
# Finding and checking the pairs


@dataclass
class SegData:
    """What `segment train` and `evaluate` need: datasets of (image, mask) tensors, class
    names, the mask mode and the preprocessing that goes into the checkpoint."""

    train: Dataset
    val: Dataset
    labels: list[str]
    in_channels: int
    image_size: int
    mask_mode: str
    source: str
    mean: list[float]
    std: list[float]
    class_counts: list[int] = field(default_factory=list)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "mask_mode": self.mask_mode,
            "palette": palette_for(self.mask_mode, len(self.labels)),
        }


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    }


def _pair_dirs(folder: Path) -> tuple[Path, Path] | None:
    images = next((folder / d for d in IMAGE_DIRS if (folder / d).is_dir()), None)
    masks = next((folder / d for d in MASK_DIRS if (folder / d).is_dir()), None)
    return (images, masks) if images and masks else None


def _pairs(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[tuple[Path, str]]]:
    """Image/mask pairs by file stem; an image without a mask is a bad record."""
    images, masks = _images_by_stem(image_dir), _images_by_stem(mask_dir)
    if not images:
        raise LbdlError(f"{image_dir}: folder holds no images")
    pairs, bad = [], []
    for stem, path in images.items():
        if stem in masks:
            pairs.append((path, masks[stem]))
        else:
            bad.append((path, f"no mask {stem}.* in {mask_dir}"))
    return pairs, bad


def _voc_root(folder: Path) -> Path | None:
    for root in (folder, folder / "VOC2012", folder / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return root
    return None


def _voc_pairs(root: Path, split: str) -> tuple[list[Pair], list[tuple[Path, str]]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise LbdlError(f"{listing}: missing (the VOC layout lists its {split} images there)")
    pairs, bad = [], []
    for stem in listing.read_text().split():
        image = root / "JPEGImages" / f"{stem}.jpg"
        mask = root / "SegmentationClass" / f"{stem}.png"
        if not mask.is_file():
            bad.append((mask, "no such mask file"))
        else:
            pairs.append((image, mask))
    return pairs, bad


def read_classes_txt(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise LbdlError(f"{path}: lists no class names")
    if len(set(names)) != len(names):
        raise LbdlError(f"{path}: a class name appears twice")
    return names


@dataclass
class _Scan:
    """One pass over the masks: sizes checked, values collected, bad records listed."""

    good: list[Pair]
    bad: list[tuple[Path, str]]
    values: set[int]
    counts: np.ndarray
    uniques: dict[Path, np.ndarray]


def _scan(pairs: list[Pair], bad: list[tuple[Path, str]]) -> _Scan:
    good: list[Pair] = []
    values: set[int] = set()
    counts = np.zeros(256, np.int64)
    uniques: dict[Path, np.ndarray] = {}
    bad = list(bad)
    for image_path, mask_path in pairs:
        try:
            with Image.open(image_path) as image:
                size = image.size
                image.verify()
            mask = read_mask_array(mask_path)
        except LbdlError as error:
            bad.append((mask_path, str(error).removeprefix(f"{mask_path}: ")))
            continue
        except FileNotFoundError:
            bad.append((image_path, "no such file"))
            continue
        except Exception as error:
            bad.append((image_path, str(error).splitlines()[0] or type(error).__name__))
            continue
        if (mask.shape[1], mask.shape[0]) != size:
            bad.append(
                (
                    mask_path,
                    f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {size[0]}x{size[1]}",
                )
            )
            continue
        found = np.bincount(mask.ravel(), minlength=256)
        counts += found
        uniques[mask_path] = np.flatnonzero(found)
        values.update(uniques[mask_path].tolist())
        good.append((image_path, mask_path))
    return _Scan(good, bad, values, counts, uniques)


def detect_mask_mode(values: set[int]) -> str:
    """binary when the masks hold only 0 and 255, index otherwise."""
    return "binary" if values <= {0, IGNORE} and IGNORE in values else "index"


def check_values(scan: _Scan, mask_mode: str, num_classes: int) -> None:
    """Masks with values outside the classes become bad records."""
    for mask_path, values in scan.uniques.items():
        wrong = bad_values(values, mask_mode, num_classes)
        if wrong:
            scan.bad.append(
                (
                    mask_path,
                    f"mask values {wrong[:5]} are not classes of a {mask_mode} mask "
                    f"with {num_classes} classes",
                )
            )
            scan.good = [p for p in scan.good if p[1] != mask_path]


def apply_bad_rule(bad: list[tuple[Path, str]], total: int, skip_bad: bool) -> None:
    """The bad-record rule: error naming the first and the count, or warn for each."""
    if not bad:
        return
    if not skip_bad:
        path, reason = bad[0]
        noun = "record" if len(bad) == 1 else "records"
        raise LbdlError(
            f"{len(bad)} bad {noun}, first: {path}: {reason} (add --skip-bad to train on the rest)"
        )
    for path, reason in bad:
        report(f"warning: skipping bad record {path}: {reason}")
    report(f"warning: skipped {len(bad)} bad records of {total}")


def _find_layout(folder: Path) -> tuple[str, list[Pair], list[Pair] | None, list]:
    """(description, train pairs, val pairs or None for a seeded split, bad records)."""
    voc = _voc_root(folder)
    if voc is not None:
        train, bad = _voc_pairs(voc, "train")
        val, bad_val = _voc_pairs(voc, "val")
        return f"Pascal VOC layout in {voc}", train, val, bad + bad_val
    if (folder / "train").is_dir():
        dirs = _pair_dirs(folder / "train")
        if dirs is None:
            raise LbdlError(
                f"{folder / 'train'}: expected images/ and masks/ (or image/ and label/) folders"
            )
        train, bad = _pairs(*dirs)
        val = None
        for name in ("val", "valid", "validation", "test"):
            if (folder / name).is_dir() and (val_dirs := _pair_dirs(folder / name)):
                val, bad_val = _pairs(*val_dirs)
                bad += bad_val
                break
        return f"train/ folder in {folder}", train, val, bad
    dirs = _pair_dirs(folder)
    if dirs is None:
        raise LbdlError(
            f"{folder}: expected images/ + masks/ (or image/ + label/) folders, train/ and val/ "
            "folders of them, or the Pascal VOC layout"
        )
    train, bad = _pairs(*dirs)
    return f"{dirs[0].name}/ + {dirs[1].name}/ in {folder}", train, None, bad


def default_image_size(pairs: list[Pair], cap: int = 256) -> int:
    """The training crop: `cap`, or the smallest image side when smaller, a multiple of 32."""
    with Image.open(pairs[0][0]) as first:
        side = min(first.size)
    return max(32, min(cap, side // 32 * 32))


def load_segment_data(
    data: str | None,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    mask_mode: str | None = None,
    skip_bad: bool = False,
    labels: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    scenes: int = 400,
    announce: Any = None,
    vflip: bool = False,
    elastic: float = 0.0,
) -> SegData:
    """Read a segmentation dataset (see the module doc), check every record and build the
    datasets. `labels`/`preprocessing` (from a checkpoint) fix classes and normalization."""
    if mask_mode is not None and mask_mode not in MASK_MODES:
        raise LbdlError(f"--mask-mode {mask_mode}: choose one of {', '.join(MASK_MODES)}")
    if preprocessing is not None:
        mean, std = preprocessing["mean"], preprocessing["std"]
        image_size = preprocessing["image_size"]
        mask_mode = mask_mode or preprocessing["mask_mode"]
    if data is None:
        return _builtin(image_size or 64, val_fraction, seed, scenes, preprocessing)
    folder = Path(data)
    if not folder.is_dir():
        raise LbdlError(f"{data}: no such folder")
    description, train_pairs, val_pairs, bad = _find_layout(folder)
    every = train_pairs + (val_pairs or [])
    total = len(every) + len(bad)
    if total == 0:
        raise LbdlError(f"{folder}: holds no image/mask pairs")
    scan = _scan(every, bad)
    detected = "voc" if description.startswith("Pascal VOC") else detect_mask_mode(scan.values)
    chosen = mask_mode or detected
    names = labels or read_classes_txt(folder)
    if names is None:
        if chosen == "voc":
            names = list(VOC_CLASSES)
        elif chosen == "binary":
            names = ["background", "foreground"]
        else:
            top = max((v for v in scan.values if v != IGNORE), default=0)
            names = [f"class{i}" for i in range(top + 1)]
    if chosen == "binary" and len(names) != 2:
        raise LbdlError(f"{folder}: binary masks have 2 classes, classes.txt lists {len(names)}")
    check_values(scan, chosen, len(names))
    apply_bad_rule(scan.bad, total, skip_bad)
    good = set(scan.good)
    train_pairs = [p for p in train_pairs if p in good]
    if val_pairs is not None:
        val_pairs = [p for p in val_pairs if p in good]
    else:
        if len(train_pairs) < 2:
            raise LbdlError(f"{folder}: needs at least 2 image/mask pairs to split off validation")
        train_idx, val_idx = split_indices(len(train_pairs), val_fraction, seed)
        val_pairs = [train_pairs[i] for i in val_idx]
        train_pairs = [train_pairs[i] for i in train_idx]
        description += f" (seeded split, {val_fraction:.0%} validation)"
    if not train_pairs:
        raise LbdlError(f"{folder}: no usable training pairs")
    how = "--mask-mode" if mask_mode else "detected"
    if announce is not None:
        announce(
            f"masks: {chosen} ({how}); classes: {', '.join(names[:8])}"
            + (" ..." if len(names) > 8 else "")
        )
    with Image.open(train_pairs[0][0]) as first:
        in_channels = 1 if first.mode in ("L", "I", "I;16", "1", "F", "LA") else 3
    if preprocessing is not None:
        in_channels = preprocessing["in_channels"]
    else:
        mean, std = [0.5] * in_channels, [0.25] * in_channels
    size = image_size or default_image_size(train_pairs)
    mode = "L" if in_channels == 1 else "RGB"
    counts = scan.counts.copy()
    if chosen == "binary":
        counts = np.array([counts[0], counts[255]])
    counts = counts[: len(names)]
    return SegData(
        train=PairDataset(
            train_pairs,
            mode,
            chosen,
            build_transform(True, size, mean, std, vflip=vflip, elastic=elastic),
        ),
        val=PairDataset(val_pairs, mode, chosen, build_transform(False, size, mean, std)),
        labels=list(names),
        in_channels=in_channels,
        image_size=size,
        mask_mode=chosen,
        source=description,
        mean=list(mean),
        std=list(std),
        class_counts=[int(c) for c in counts],
    )


def _builtin(
    size: int, val_fraction: float, seed: int, n: int, preprocessing: dict | None
) -> SegData:
    images, masks = make_scenes(n, size, seed=seed)
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    mean = preprocessing["mean"] if preprocessing else [0.5] * 3
    std = preprocessing["std"] if preprocessing else [0.25] * 3
    counts = np.bincount(masks[train_idx].ravel(), minlength=len(SCENE_CLASSES))
    return SegData(
        train=ArrayDataset(
            images[train_idx], masks[train_idx], build_transform(True, size, mean, std)
        ),
        val=ArrayDataset(images[val_idx], masks[val_idx], build_transform(False, size, mean, std)),
        labels=list(SCENE_CLASSES),
        in_channels=3,
        image_size=size,
        mask_mode="index",
        source=f"built-in scenes ({n} of {size}x{size}, seed {seed}, "
        f"{val_fraction:.0%} validation)",
        mean=mean,
        std=std,
        class_counts=counts.tolist(),
    )


def preprocess_image(image: Image.Image, preprocessing: dict[str, Any]) -> Tensor:
    """A PIL image -> normalized float (C, H, W), as evaluation sees it."""
    tensor = v2.functional.pil_to_tensor(image).float().div_(255)
    mean = torch.tensor(preprocessing["mean"])[:, None, None]
    std = torch.tensor(preprocessing["std"])[:, None, None]
    return (tensor - mean) / std
