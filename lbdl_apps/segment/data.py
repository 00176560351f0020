"""Segmentation data (book 6.4): image + mask pairs in the layouts people keep them — a
registry of readers (the Pascal VOC layout, train/ (val/, test/) folders, images/ + masks/
folders), masks of class indices or binary 0/255 — or the built-in scenes of shapes; every
record checked by the bad-record rule, and datasets of (image, mask) tensors augmented
together (segment/transforms.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lbdl_apps.core.bad_records import bad_record_rule
from lbdl_apps.core.data import (
    IMAGE_EXTENSIONS,
    image_preprocessing,
    read_classes_txt,
    split_indices,
)
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers
from lbdl_apps.segment.builtin import SCENE_CLASSES, make_scenes
from lbdl_apps.segment.masks import (
    IGNORE,
    MASK_MODES,
    VOC_CLASSES,
    Bad,
    Pair,
    Scan,
    detect_mask_mode,
    palette_for,
    scan_pairs,
)
from lbdl_apps.segment.transforms import ArrayDataset, PairDataset, build_transform

IMAGE_DIRS = ("images", "image", "imgs", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "SegmentationClass")
VAL_FOLDERS = ("val", "valid", "validation")
GRAY_MODES = ("L", "I", "I;16", "1", "F", "LA")


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
    test: Dataset | None = None

    def preprocessing(self) -> dict[str, Any]:
        palette = palette_for(self.mask_mode, len(self.labels))
        return image_preprocessing(
            self.image_size, self.in_channels, self.mean, self.std, mask_mode=self.mask_mode,
            palette=palette,
        )  # fmt: skip

    def splits(self) -> dict[str, Dataset | None]:
        return {"train": self.train, "val": self.val, "test": self.test}


# ----------------------------------------------------------------------------------------------
# The readers: where the pairs of each split are


@dataclass
class Layout:
    """What a reader finds: the pairs of each split (val None: a seeded split of train), the
    records already known to be bad, and the mask mode the format implies."""

    description: str
    train: list[Pair]
    val: list[Pair] | None = None
    test: list[Pair] | None = None
    bad: list[Bad] = field(default_factory=list)
    mask_mode: str | None = None


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


def _pairs(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[Bad]]:
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


def _voc_pairs(root: Path, split: str) -> tuple[list[Pair], list[Bad]]:
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


READERS: Readers[Callable[[Path], Layout]] = Readers("segmentation data")


@READERS.register(
    "voc",
    "the Pascal VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
    lambda path: _voc_root(path) is not None,
)
def _voc(folder: Path) -> Layout:
    """VOC's train.txt and val.txt lists; palette masks whose 255 is the ignored border."""
    root = _voc_root(folder)
    assert root is not None
    train, bad = _voc_pairs(root, "train")
    val, bad_val = _voc_pairs(root, "val")
    return Layout(f"Pascal VOC layout in {root}", train, val, None, bad + bad_val, "voc")


def _split_folder(folder: Path, names: Sequence[str]) -> tuple[Path, Path] | None:
    """The image and mask folders of the first of the folders `names` under `folder` that
    has them."""
    return next((dirs for n in names if (dirs := _pair_dirs(folder / n)) is not None), None)


@READERS.register(
    "splits",
    "train/ (val/, test/) folders of images/ + masks/",
    lambda path: (path / "train").is_dir(),
)
def _split_folders(folder: Path) -> Layout:
    """train/ and, each optional, val/ (valid/, validation/) and test/; a test/ folder
    without a val/ one is the validation set."""
    dirs = _pair_dirs(folder / "train")
    if dirs is None:
        raise LbdlError(
            f"{folder / 'train'}: expected images/ and masks/ (or image/ and label/) folders"
        )
    train, bad = _pairs(*dirs)
    held = {"val": _split_folder(folder, VAL_FOLDERS), "test": _split_folder(folder, ("test",))}
    if held["val"] is None:  # test/ alone: it validates, as it always did
        held = {"val": held["test"], "test": None}
    pairs: dict[str, list[Pair] | None] = {"val": None, "test": None}
    for split, where in held.items():
        if where is not None:
            pairs[split], more = _pairs(*where)
            bad += more
    names = [d[0].parent.name for d in (dirs, held["val"], held["test"]) if d]
    description = f"{' + '.join(n + '/' for n in names)} folders in {folder}"
    return Layout(description, train, pairs["val"], pairs["test"], bad)


@READERS.register(
    "pairs", "images/ + masks/ (or image/ + label/) folders of the same file stems", Path.is_dir
)
def _pair_folders(folder: Path) -> Layout:
    """One folder of images and one of masks, matched by file stem."""
    dirs = _pair_dirs(folder)
    if dirs is None:
        raise LbdlError(
            f"{folder}: expected images/ + masks/ (or image/ + label/) folders, train/ and val/ "
            "folders of them, or the Pascal VOC layout"
        )
    train, bad = _pairs(*dirs)
    return Layout(f"{dirs[0].name}/ + {dirs[1].name}/ in {folder}", train, None, None, bad)


# ----------------------------------------------------------------------------------------------
# Loading: the records checked, the classes named, the splits made


def _class_names(folder: Path, mask_mode: str, values: set[int]) -> list[str]:
    """The classes of classes.txt, else those the mask mode and values imply."""
    names = read_classes_txt(folder)
    if names is not None and not names:
        raise LbdlError(f"{folder / 'classes.txt'}: lists no class names")
    if names is not None:
        return names
    if mask_mode == "voc":
        return list(VOC_CLASSES)
    if mask_mode == "binary":
        return ["background", "foreground"]
    top = max((v for v in values if v != IGNORE), default=0)
    return [f"class{i}" for i in range(top + 1)]


def _checked(
    layout: Layout, folder: Path, mask_mode: str | None, labels: list[str] | None, skip_bad: bool
) -> tuple[Scan, str, list[str]]:
    """Every record scanned and the bad-record rule applied; the mask mode and the classes."""
    every = layout.train + (layout.val or []) + (layout.test or [])
    total = len(every) + len(layout.bad)
    if total == 0:
        raise LbdlError(f"{folder}: holds no image/mask pairs")
    scan = scan_pairs(every, layout.bad)
    chosen = mask_mode or layout.mask_mode or detect_mask_mode(scan.values)
    names = labels or _class_names(folder, chosen, scan.values)
    if chosen == "binary" and len(names) != 2:
        raise LbdlError(f"{folder}: binary masks have 2 classes, classes.txt lists {len(names)}")
    scan.check_values(chosen, len(names))
    bad_record_rule(scan.bad, total, skip_bad)
    return scan, chosen, names


def _held_out(
    layout: Layout, good: set[Pair], val_fraction: float, seed: int, folder: Path
) -> tuple[list[Pair], list[Pair], list[Pair] | None, str]:
    """The good pairs of each split: a seeded share of train held out when the layout has no
    validation split (none with `val_fraction` 0); the description of the data."""
    train = [p for p in layout.train if p in good]
    test = None if layout.test is None else [p for p in layout.test if p in good]
    description = layout.description
    if layout.val is not None:
        val = [p for p in layout.val if p in good]
    elif val_fraction > 0:
        if len(train) < 2:
            raise LbdlError(f"{folder}: needs at least 2 image/mask pairs to split off validation")
        train_idx, val_idx = split_indices(len(train), val_fraction, seed)
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
        description += f" (seeded split, {val_fraction:.0%} validation)"
    else:
        val = []
    if not train:
        raise LbdlError(f"{folder}: no usable training pairs")
    return train, val, test, description


@dataclass
class Prep:
    """How images are prepared: training ones augmented (`vflip`, `elastic`) and the
    normalization by default; with a checkpoint's `saved` preprocessing, its normalization
    and channels, and every split, the training one too, as evaluation sees it; with the
    preprocessing of the checkpoint a run `start`s from (--init), its normalization and
    channels, the training split augmented."""

    vflip: bool = False
    elastic: float = 0.0
    saved: dict[str, Any] | None = None
    start: dict[str, Any] | None = None

    def channels(self, detected: int) -> int:
        fixed = self.saved or self.start
        return int(fixed["in_channels"]) if fixed else detected

    def normalization(self, channels: int) -> tuple[list[float], list[float]]:
        fixed = self.saved or self.start
        if fixed:
            return list(fixed["mean"]), list(fixed["std"])
        return [0.5] * channels, [0.25] * channels

    def transforms(self, size: int, channels: int) -> tuple[Any, Any]:
        """The training and the evaluation transform."""
        mean, std = self.normalization(channels)
        evaluation = build_transform(False, size, mean, std)
        if self.saved:
            return evaluation, evaluation
        extra = {"vflip": self.vflip, "elastic": self.elastic}
        return build_transform(True, size, mean, std, **extra), evaluation


def _folder_data(
    folder: Path,
    image_size: int | None,
    split: tuple[float, int],
    records: tuple[str | None, list[str] | None, bool],
    prep: Prep,
    announce: Callable[[str], Any] | None,
) -> SegData:
    """A folder in one of the registered layouts, checked (`records`: the mask mode, the
    classes, --skip-bad), `split` (val_fraction, seed) and made into datasets."""
    mask_mode = records[0]
    layout = READERS.find(folder).read(folder)
    scan, chosen, names = _checked(layout, folder, *records)
    train, val, test, description = _held_out(layout, set(scan.good), *split, folder)
    if announce is not None:
        how = "--mask-mode" if mask_mode else "detected"
        more = " ..." if len(names) > 8 else ""
        announce(f"masks: {chosen} ({how}); classes: {', '.join(names[:8])}{more}")
    with Image.open(train[0][0]) as first:
        channels = prep.channels(1 if first.mode in GRAY_MODES else 3)
    size = image_size or default_image_size(train)
    train_transform, evaluation = prep.transforms(size, channels)
    mode = "L" if channels == 1 else "RGB"
    mean, std = prep.normalization(channels)
    return SegData(
        train=PairDataset(train, mode, chosen, train_transform),
        val=PairDataset(val, mode, chosen, evaluation),
        labels=list(names),
        in_channels=channels,
        image_size=size,
        mask_mode=chosen,
        source=description,
        mean=mean,
        std=std,
        class_counts=scan.class_counts(chosen, len(names)),
        test=None if test is None else PairDataset(test, mode, chosen, evaluation),
    )


def default_image_size(pairs: list[Pair], cap: int = 256) -> int:
    """The training crop: `cap`, or the smallest image side when smaller, a multiple of 32."""
    with Image.open(pairs[0][0]) as first:
        side = min(first.size)
    return max(32, min(cap, side // 32 * 32))


def _builtin(size: int, val_fraction: float, seed: int, n: int, prep: Prep) -> SegData:
    """`n` built-in scenes, a seeded share of them held out."""
    images, masks = make_scenes(n, size, seed=seed)
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    counts = np.bincount(masks[train_idx].ravel(), minlength=len(SCENE_CLASSES))
    train_transform, evaluation = prep.transforms(size, 3)
    mean, std = prep.normalization(3)
    return SegData(
        train=ArrayDataset(images[train_idx], masks[train_idx], train_transform),
        val=ArrayDataset(images[val_idx], masks[val_idx], evaluation),
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
    announce: Callable[[str], Any] | None = None,
    vflip: bool = False,
    elastic: float = 0.0,
    start: dict[str, Any] | None = None,
) -> SegData:
    """Read a segmentation dataset (see the module doc), check every record and build the
    datasets; `val_fraction` 0 keeps only the data's own validation and test splits.
    `labels`/`preprocessing` (from a checkpoint) fix classes and normalization, and every
    split, the training one too, then gets the evaluation transform. `start` (the
    preprocessing of an --init checkpoint) fixes the channels and normalization alone."""
    if mask_mode is not None and mask_mode not in MASK_MODES:
        raise LbdlError(f"--mask-mode {mask_mode}: choose one of {', '.join(MASK_MODES)}")
    prep = Prep(vflip, elastic, preprocessing, start)
    if preprocessing is not None:
        image_size = preprocessing["image_size"]
        mask_mode = mask_mode or preprocessing["mask_mode"]
    if data is None:
        return _builtin(image_size or 64, val_fraction, seed, scenes, prep)
    folder = Path(data)
    if not folder.is_dir():
        raise LbdlError(f"{data}: no such folder")
    records = (mask_mode, labels, skip_bad)
    return _folder_data(folder, image_size, (val_fraction, seed), records, prep, announce)
