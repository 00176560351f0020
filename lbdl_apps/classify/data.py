"""Classification data (book 6.2): the formats people keep labelled images in, the built-in
shapes dataset, data augmentation and the preprocessing saved with a checkpoint."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2

from lbdl_apps.core.data import (
    IMAGE_EXTENSIONS,
    ImageRecords,
    Record,
    TensorImageDataset,
    check_records,
    convert_image,
    find_images,
    load_image,
    read_idx,
    split_indices,
)
from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.shapes import (
    SHAPE_NAMES,
    contrasting_color,
    draw_clutter,
    draw_shape,
    textured_backgrounds,
)

FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGIT_LABELS = [str(d) for d in range(10)]
AUGMENTS = ("basic", "trivial", "randaugment", "none")
NAMED_DATASETS = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
}
BUILTIN_SIZES = (6000, 1000, 1000)
DEFAULT_MAX_SIZE = 224  # default input size for large photos
TINY = 32  # images this small are padded and cropped, not resized, for augmentation
_VAL_FOLDERS = ("val", "valid", "validation")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_STATS_SAMPLE_TENSORS = 10000
_STATS_SAMPLE_FILES = 256
_PROBE_SAMPLE = 64


@dataclass
class ClassifyData:
    """Everything `classify train` needs: datasets yielding (normalized C×H×W float tensor,
    int label), the label names and the preprocessing that goes into the checkpoint."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    labels: list[str]
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    source: str
    hflip: bool = True
    augment: str = "basic"
    resize: int | None = None  # evaluation resize; None: eval_resize(image_size)

    def preprocessing(self) -> dict[str, Any]:
        """What inference needs to prepare an image exactly as evaluation did."""
        return {
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize or eval_resize(self.image_size),
        }


# ----------------------------------------------------------------------------------------------
# Built-in data: geometric shapes on cluttered, textured backgrounds


def _make_shapes_chunk(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    labels = rng.integers(0, len(SHAPE_NAMES), n)
    background = np.clip(textured_backgrounds(n, size, rng), 0, 255).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    colors = np.empty((n, 3), np.float32)
    unit = size / 32.0
    for i in range(n):
        draw_clutter(background[i], int(rng.integers(0, 4)), rng, unit)
        radius = rng.uniform(0.15, 0.4) * size
        center = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
        angle = np.deg2rad(rng.uniform(-15, 15))
        draw_shape(SHAPE_NAMES[labels[i]], masks[i], center, radius, angle, rng)
        inside = masks[i] > 127
        local = background[i][inside] if inside.any() else background[i].reshape(-1, 3)
        colors[i] = contrasting_color(local.mean(0), rng)
    alpha = masks.astype(np.float32)[..., None] / 255.0
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[None, :, None, None]
    shade = rng.uniform(-40, 40, (n, 1, 1, 1)).astype(np.float32) * ramp
    image = background * (1 - alpha) + (colors[:, None, None, :] + shade) * alpha
    for i in np.flatnonzero(rng.random(n) < 0.3):  # some clutter over the shape
        over = image[i].astype(np.uint8)
        draw_clutter(over, 1, rng, unit)
        image[i] = over
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image += noise * rng.uniform(3, 20, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def make_shapes(
    n: int, image_size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The built-in dataset: n RGB images (n, S, S, 3) uint8 of one of 10 geometric shapes
    (random color, size, position, small rotation) on textured, noisy backgrounds with
    clutter; labels (n,) int64 and the label names. Deterministic given the seed."""
    rng = np.random.default_rng(seed)
    chunks = [_make_shapes_chunk(min(1024, n - i), image_size, rng) for i in range(0, n, 1024)]
    if not chunks:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros(0, np.int64), []
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    return images, labels, list(SHAPE_NAMES)


# ----------------------------------------------------------------------------------------------
# Transforms (data augmentation) and inference preprocessing


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
) -> v2.Compose:
    """PIL image or uint8 tensor -> normalized float tensor (in_channels, S, S).
    Training: random crop (padded for tiny images, RandomResizedCrop otherwise), optional
    horizontal flip, and TrivialAugment or RandAugment; evaluation: resize + center crop."""
    if augment not in AUGMENTS:
        raise LbdlError(f"--augment {augment}: choose one of {', '.join(AUGMENTS)}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values")
    steps: list[Callable[[Any], Any]] = [
        v2.ToImage(),
        v2.Grayscale(1) if in_channels == 1 else v2.RGB(),
    ]
    if train and augment != "none":
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
    else:
        steps += [v2.Resize(resize or eval_resize(image_size)), v2.CenterCrop(image_size)]
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
# Readers: each returns the datasets (without transforms) and what it found


@dataclass
class _Found:
    train: ImageRecords | TensorImageDataset
    val: ImageRecords | TensorImageDataset
    test: ImageRecords | TensorImageDataset | None
    labels: list[str]
    source: str
    in_channels: int | None = None  # None: probe the image files
    native_size: int | None = None  # None: probe the image files
    hflip: bool = True


def _shuffled(items: Sequence[int], seed: int) -> list[int]:
    """Training items in a seeded random order, so a prefix is a fair sample."""
    return np.random.default_rng(seed).permutation(np.asarray(items, dtype=np.int64)).tolist()


def _split_arrays(
    images: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[TensorImageDataset, TensorImageDataset]:
    train_idx, val_idx = split_indices(len(labels), val_fraction, seed, stratify=labels)
    train_idx = _shuffled(train_idx, seed)
    return (
        TensorImageDataset(images[train_idx], labels[train_idx]),
        TensorImageDataset(images[val_idx], labels[val_idx]),
    )


def _split_records(
    records: list[Record], val_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    train_idx, val_idx = split_indices(
        len(records), val_fraction, seed, stratify=[label for _, label in records]
    )
    return [records[i] for i in _shuffled(train_idx, seed)], [records[i] for i in val_idx]


def _split_note(val_fraction: float, seed: int) -> str:
    return f"validation: {val_fraction:g} of train, seed {seed}"


def _builtin(
    image_size: int | None, val_fraction: float, seed: int, sizes: Sequence[int]
) -> _Found:
    del val_fraction  # the built-in data comes with its own validation set
    size = min(image_size or TINY, 64)  # larger inputs are upsampled by the transforms
    n_train, n_val, n_test = sizes
    images, labels, names = make_shapes(n_train + n_val + n_test, size, seed)
    parts = np.split(np.arange(len(labels)), [n_train, n_train + n_val])
    train, val, test = (TensorImageDataset(images[p], labels[p]) for p in parts)
    source = f"built-in shapes ({len(names)} classes, {size}x{size} RGB, seed {seed})"
    return _Found(train, val, test, names, source, 3, size, hflip=True)


def _datasets_root() -> Path:
    return Path(os.environ.get("LBDL_DATA") or Path.home() / ".cache" / "lbdl" / "datasets")


def _named(name: str, download: bool, val_fraction: float, seed: int) -> _Found:
    """mnist, fashion-mnist or cifar10 through torchvision.datasets (downloaded on request)."""
    from torchvision import datasets

    root = _datasets_root().expanduser()
    reader = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }[name]
    try:
        parts = [reader(str(root), train=train, download=download) for train in (True, False)]
    except Exception as error:
        if not download:
            raise LbdlError(f"{name} is not in {root}; add --download to fetch it") from error
        raise LbdlError(f"{name}: download into {root} failed ({error})") from error
    arrays = [(np.asarray(p.data, dtype=np.uint8), np.asarray(p.targets)) for p in parts]
    (images, labels), (test_images, test_labels) = arrays
    labels_names = {
        "mnist": DIGIT_LABELS,
        "fashion-mnist": FASHION_MNIST_LABELS,
        "cifar10": list(getattr(parts[0], "classes", [])),
    }[name]
    train, val = _split_arrays(images, labels, val_fraction, seed)
    return _Found(
        train,
        val,
        TensorImageDataset(test_images, test_labels),
        labels_names,
        f"{name} from {root} ({_split_note(val_fraction, seed)})",
        3 if images.ndim == 4 else 1,
        int(min(images.shape[1:3])),
        hflip=name != "mnist",
    )


def _idx_file(folder: Path, prefix: str, kind: str) -> Path | None:
    """e.g. train-images-idx3-ubyte[.gz] (also the train-images.idx3-ubyte spelling)."""
    dims = "idx3" if kind == "images" else "idx1"
    hits = sorted(folder.glob(f"{prefix}-{kind}[-.]{dims}-ubyte*"))
    return hits[0] if hits else None


def _read_classes_txt(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise LbdlError(f"{path}: a class name appears twice")
    return names


def _read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images_path = _idx_file(folder, prefix, "images")
    labels_path = _idx_file(folder, prefix, "labels")
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = (
            f"{prefix}-images-idx3-ubyte" if images_path is None else f"{prefix}-labels-idx1-ubyte"
        )
        raise LbdlError(f"{folder}: has {prefix} idx files but no {missing}[.gz]")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise LbdlError(f"{images_path}: expected unsigned-byte images (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise LbdlError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    if len(labels) and labels.min() < 0:
        raise LbdlError(f"{labels_path}: negative labels")
    return images, labels.astype(np.int64)


def _idx_folder(folder: Path, val_fraction: float, seed: int) -> _Found:
    """A folder of MNIST-style idx files: train-* for training, t10k-* as the test set."""
    train_pair = _read_idx_pair(folder, "train")
    if train_pair is None:
        raise LbdlError(f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]")
    test_pair = _read_idx_pair(folder, "t10k")
    images, labels = train_pair
    top = int(max(labels.max(initial=0), test_pair[1].max(initial=0) if test_pair else 0))
    fashion = "fashion" in folder.resolve().name.lower()
    names = _read_classes_txt(folder)
    if names is None:
        names = FASHION_MNIST_LABELS if fashion else DIGIT_LABELS
        if top >= len(names):
            names = [str(i) for i in range(top + 1)]
    elif top >= len(names):
        raise LbdlError(f"{folder / 'classes.txt'}: {len(names)} names but label {top} in the data")
    train, val = _split_arrays(images, labels, val_fraction, seed)
    test = TensorImageDataset(*test_pair) if test_pair else None
    which = "fashion-mnist" if fashion else "digit"
    return _Found(
        train,
        val,
        test,
        names,
        f"idx files in {folder} ({which} labels; {_split_note(val_fraction, seed)})",
        3 if images.ndim == 4 else 1,
        int(min(images.shape[1:3])),
        hflip=fashion,
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_records(
    folder: Path, names: list[str] | None, every_class: bool = True
) -> tuple[list[Record], list[str]]:
    """Records of a folder of class folders; `names` fixes the classes (and their order).
    With `every_class`, each named class must have its folder."""
    present = {p.name: p for p in _subfolders(folder)}
    if names is None:
        names = sorted(present)
    else:
        unknown = sorted(set(present) - set(names))
        if unknown:
            raise LbdlError(f"{folder / unknown[0]}: class folder not listed in classes.txt")
    records: list[Record] = []
    for index, name in enumerate(names):
        if name not in present:
            if every_class:
                raise LbdlError(f"{folder / name}: no folder for class {name!r} of classes.txt")
            continue
        images = find_images(present[name])
        if not images:
            raise LbdlError(f"{present[name]}: class folder holds no images")
        records += [(path, index) for path in images]
    return records, names


def _image_folder(folder: Path, val_fraction: float, seed: int) -> _Found:
    """ImageFolder layouts: root/train/<class>/... (+ val/, test/), or root/<class>/..."""
    classes_txt = _read_classes_txt(folder)
    if (folder / "train").is_dir():
        train_records, names = _class_records(folder / "train", classes_txt)
        val_dir = next((folder / v for v in _VAL_FOLDERS if (folder / v).is_dir()), None)
        if val_dir is not None:
            val_records = _class_records(val_dir, names, every_class=False)[0]
            note = f"validation: {val_dir.name}/"
        else:
            train_records, val_records = _split_records(train_records, val_fraction, seed)
            note = _split_note(val_fraction, seed)
        test_records = (
            _class_records(folder / "test", names, every_class=False)[0]
            if (folder / "test").is_dir()
            else None
        )
        parts = ["train/", f"{val_dir.name}/" if val_dir else "", "test/" if test_records else ""]
        source = f"image folders in {folder} ({' + '.join(p for p in parts if p)}; {note})"
    else:
        class_dirs = _subfolders(folder)
        if not class_dirs:
            loose = find_images(folder)
            if loose:
                raise LbdlError(
                    f"{folder}: holds images but no class folders; put each class in its own "
                    f"subfolder ({folder}/<class>/<image>)"
                )
            raise LbdlError(
                f"{folder}: expected class folders of images, train/ and val/ folders, "
                "or idx files (train-images-idx3-ubyte)"
            )
        loose = [
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if loose:
            report(f"warning: {len(loose)} images directly in {folder} are in no class folder")
        records, names = _class_records(folder, classes_txt)
        train_records, val_records = _split_records(records, val_fraction, seed)
        test_records = None
        source = f"class folders in {folder} ({_split_note(val_fraction, seed)})"
    test = ImageRecords(test_records) if test_records is not None else None
    return _Found(ImageRecords(train_records), ImageRecords(val_records), test, names, source)


def _csv_file(path: Path, val_fraction: float, seed: int) -> _Found:
    """A CSV with a header and `path,label` columns (optional `split`: train/val/test);
    relative paths are resolved against the CSV's folder."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip().lower(): c for c in reader.fieldnames or [] if c}
            if "path" not in columns or "label" not in columns:
                raise LbdlError(
                    f"{path}: needs a header with path and label columns, "
                    f"found {list(reader.fieldnames or [])}"
                )
            split_column = columns.get("split")
            rows = []
            for line, row in enumerate(reader, start=2):
                file, label = ((row.get(columns[k]) or "").strip() for k in ("path", "label"))
                split = (row.get(split_column) or "train") if split_column else "train"
                split = split.strip().lower()
                if not file or not label:
                    raise LbdlError(f"{path}:{line}: empty path or label")
                if split in _VAL_FOLDERS:
                    split = "val"
                if split not in ("train", "val", "test"):
                    raise LbdlError(f"{path}:{line}: split {split!r} is not train, val or test")
                rows.append((path.parent / Path(file).expanduser(), label, split))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LbdlError(f"{path}: cannot read CSV ({error})") from error
    if not rows:
        raise LbdlError(f"{path}: no rows")
    names = _read_classes_txt(path.parent)
    found = sorted({label for _, label, _ in rows})
    if names is None:
        digits = all(label.lstrip("-").isdigit() for label in found)
        names = sorted(found, key=int) if digits else found
    else:
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise LbdlError(f"{path}: label {unknown[0]!r} is not in classes.txt")
    index = {name: i for i, name in enumerate(names)}
    parts: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for file, label, split in rows:
        parts[split].append((file, index[label]))
    if parts["val"]:
        train_records, val_records = parts["train"], parts["val"]
        note = "validation: split column"
    else:
        train_records, val_records = _split_records(parts["train"], val_fraction, seed)
        note = _split_note(val_fraction, seed)
    test = ImageRecords(parts["test"]) if parts["test"] else None
    source = f"CSV {path} ({note})"
    return _Found(ImageRecords(train_records), ImageRecords(val_records), test, names, source)


def _detect(
    data: str | None,
    image_size: int | None,
    val_fraction: float,
    seed: int,
    download: bool,
    builtin_sizes: Sequence[int],
) -> _Found:
    if data is None:
        return _builtin(image_size, val_fraction, seed, builtin_sizes)
    path = Path(data).expanduser()
    named = NAMED_DATASETS.get(data.strip().lower().replace("_", "-"))
    if named is not None and not path.exists():
        return _named(named, download, val_fraction, seed)
    expected = (
        "an image folder, an idx folder, a .csv file, or one of mnist, fashion-mnist, cifar10"
    )
    if not path.exists():
        raise LbdlError(f"{data}: no such file or folder (expected {expected})")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _csv_file(path, val_fraction, seed)
        raise LbdlError(f"{data}: not a folder or a .csv file (expected {expected})")
    if _idx_file(path, "train", "images") or _idx_file(path, "train", "labels"):
        return _idx_folder(path, val_fraction, seed)
    return _image_folder(path, val_fraction, seed)


# ----------------------------------------------------------------------------------------------
# Probing image files and computing normalization statistics


def _probe(records: list[Record], seed: int) -> tuple[bool, int]:
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


def _channel_stats(
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


def load_classify_data(
    data: str | None,
    image_size: int | None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    skip_bad: bool = False,
    augment: str = "basic",
    preprocessing: dict[str, Any] | None = None,
    builtin_sizes: Sequence[int] = BUILTIN_SIZES,
) -> ClassifyData:
    """Read `--data` for classification, detecting its format (book 6.2):

    None: the built-in shapes; mnist / fashion-mnist / cifar10: torchvision datasets;
    a folder of idx files; a folder with train/ (val/, test/) of class folders; a folder of
    class folders (seeded split); a .csv of path,label. `preprocessing` (from a checkpoint)
    replaces the size and statistics found in the data; `augment` picks the training
    augmentation (basic, trivial, randaugment, none)."""
    if augment not in AUGMENTS:
        raise LbdlError(f"--augment {augment}: choose one of {', '.join(AUGMENTS)}")
    found = _detect(data, image_size, val_fraction, seed, download, builtin_sizes)
    if len(found.labels) < 2:
        raise LbdlError(
            f"{data}: found {len(found.labels)} class(es) {found.labels}; "
            "classification needs at least 2"
        )
    parts = [found.train, found.val, found.test]
    record_sets = [p for p in parts if isinstance(p, ImageRecords)]
    if record_sets:
        total = sum(len(p) for p in record_sets)
        good = set(check_records([r for p in record_sets for r in p.records], skip_bad))
        for part in record_sets:
            part.records = [r for r in part.records if r in good]
        if len(good) < total and found.train.labels:
            present = set(found.train.labels)
            if len(present) < 2:
                raise LbdlError(f"{data}: fewer than 2 classes left after skipping bad images")
    if len(found.train) == 0:
        raise LbdlError(f"{data}: no training images")
    if isinstance(found.train, ImageRecords):
        gray, native = _probe(found.train.records, seed)
        found.in_channels = 1 if gray else 3
        found.native_size = native
    if preprocessing is not None:
        in_channels = int(preprocessing["in_channels"])
        size = int(preprocessing["image_size"])
        mean, std = list(preprocessing["mean"]), list(preprocessing["std"])
        resize = preprocessing.get("resize")
    else:
        in_channels = int(found.in_channels or 3)
        size = int(image_size or min(found.native_size or DEFAULT_MAX_SIZE, DEFAULT_MAX_SIZE))
        mean, std = _channel_stats(found.train, in_channels, size, seed)
        resize = None
    mode = "L" if in_channels == 1 else "RGB"
    for part in parts:
        if isinstance(part, ImageRecords):
            part.mode = mode
    if isinstance(found.train, ImageRecords):
        found.train.draft = 2 * size  # fast JPEG decoding for random crops
    args = (size, in_channels, mean, std)
    found.train.transform = build_transforms(True, *args, augment=augment, hflip=found.hflip)
    evaluation = build_transforms(False, *args, resize=resize)
    found.val.transform = evaluation
    if found.test is not None:
        found.test.transform = evaluation
    return ClassifyData(
        train=found.train,
        val=found.val,
        test=found.test,
        labels=list(found.labels),
        in_channels=in_channels,
        image_size=size,
        mean=mean,
        std=std,
        source=found.source,
        hflip=found.hflip,
        augment=augment,
        resize=resize,
    )
