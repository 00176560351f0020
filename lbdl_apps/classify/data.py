"""Classification data (book 6.2): the formats people keep labelled images in — a registry
of readers (image folders, idx files, CSV), the named torchvision datasets and the built-in
shapes — and the preprocessing saved with a checkpoint."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lbdl_apps.classify.builtin import make_shapes
from lbdl_apps.classify.transforms import (
    AUGMENTS,
    DEFAULT_MAX_SIZE,
    TINY,
    build_transforms,
    channel_stats,
    eval_resize,
    probe_images,
)
from lbdl_apps.core.data import (
    IMAGE_EXTENSIONS,
    ImageRecords,
    Record,
    TensorImageDataset,
    check_records,
    datasets_root,
    find_images,
    idx_file,
    image_preprocessing,
    read_classes_txt,
    read_idx_pair,
    split_indices,
)
from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.readers import Readers

FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGIT_LABELS = [str(d) for d in range(10)]
NAMED_DATASETS = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
}
BUILTIN_SIZES = (6000, 1000, 1000)
_VAL_FOLDERS = ("val", "valid", "validation")


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
        resize = self.resize or eval_resize(self.image_size)
        return image_preprocessing(
            self.image_size, self.in_channels, self.mean, self.std, resize=resize
        )

    def splits(self) -> dict[str, Dataset | None]:
        return {"train": self.train, "val": self.val, "test": self.test}


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


def _named(name: str, download: bool, val_fraction: float, seed: int) -> _Found:
    """mnist, fashion-mnist or cifar10 through torchvision.datasets (downloaded on request)."""
    from torchvision import datasets

    root = datasets_root()
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


def _has_idx(path: Path) -> bool:
    return path.is_dir() and bool(
        idx_file(path, "train", "images") or idx_file(path, "train", "labels")
    )


READERS: Readers = Readers("classification data")


@READERS.register("idx", "a folder of MNIST-style idx files (train-*, t10k-*)", _has_idx)
def _idx_folder(folder: Path, val_fraction: float, seed: int) -> _Found:
    """A folder of MNIST-style idx files: train-* for training, t10k-* as the test set."""
    train_pair = read_idx_pair(folder, "train")
    if train_pair is None:
        raise LbdlError(f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]")
    test_pair = read_idx_pair(folder, "t10k")
    images, labels = train_pair
    top = int(max(labels.max(initial=0), test_pair[1].max(initial=0) if test_pair else 0))
    fashion = "fashion" in folder.resolve().name.lower()
    names = read_classes_txt(folder)
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


@READERS.register("folders", "class folders, or train/ (val/, test/) of class folders", Path.is_dir)
def _image_folder(folder: Path, val_fraction: float, seed: int) -> _Found:
    """ImageFolder layouts: root/train/<class>/... (+ val/, test/), or root/<class>/..."""
    classes_txt = read_classes_txt(folder)
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


@READERS.register(
    "csv", "a .csv of path,label (optional split)", lambda p: p.suffix.lower() == ".csv"
)
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
    names = read_classes_txt(path.parent)
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


def _find(
    data: str | None,
    image_size: int | None,
    val_fraction: float,
    seed: int,
    download: bool,
    builtin_sizes: Sequence[int],
) -> _Found:
    """The built-in shapes (no data), a named dataset, or a file or folder in one of the
    registered formats."""
    if data is None:
        return _builtin(image_size, val_fraction, seed, builtin_sizes)
    path = Path(data).expanduser()
    named = NAMED_DATASETS.get(data.strip().lower().replace("_", "-"))
    if named is not None and not path.exists():
        return _named(named, download, val_fraction, seed)
    if not path.exists():
        raise LbdlError(
            f"{data}: no such file or folder (expected {READERS.expected()}; "
            "or one of mnist, fashion-mnist, cifar10)"
        )
    return READERS.find(path).read(path, val_fraction, seed)


def _check_images(found: _Found, data: str | None, skip_bad: bool) -> None:
    """The bad-record rule on the image files of every split."""
    record_sets = [p for p in (found.train, found.val, found.test) if isinstance(p, ImageRecords)]
    if not record_sets:
        return
    total = sum(len(p) for p in record_sets)
    good = set(check_records([r for p in record_sets for r in p.records], skip_bad))
    for part in record_sets:
        part.records = [r for r in part.records if r in good]
    if len(good) < total and found.train.labels and len(set(found.train.labels)) < 2:
        raise LbdlError(f"{data}: fewer than 2 classes left after skipping bad images")


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
    start: dict[str, Any] | None = None,
) -> ClassifyData:
    """Read `--data` for classification, detecting its format (book 6.2):

    None: the built-in shapes; mnist / fashion-mnist / cifar10: torchvision datasets;
    a folder of idx files; a folder with train/ (val/, test/) of class folders; a folder of
    class folders (seeded split); a .csv of path,label. `augment` picks the training
    augmentation (basic, trivial, randaugment, none). `preprocessing` (a checkpoint's, for
    evaluation) replaces the size and statistics found in the data, and every split, the
    training one too, gets the evaluation transform; `start` (an --init checkpoint's)
    replaces them alone, the training split still augmented."""
    if augment not in AUGMENTS:
        raise LbdlError(f"--augment {augment}: choose one of {', '.join(AUGMENTS)}")
    found = _find(data, image_size, val_fraction, seed, download, builtin_sizes)
    if len(found.labels) < 2:
        raise LbdlError(
            f"{data}: found {len(found.labels)} class(es) {found.labels}; "
            "classification needs at least 2"
        )
    _check_images(found, data, skip_bad)
    if len(found.train) == 0:
        raise LbdlError(f"{data}: no training images")
    saved = preprocessing or start
    interpolation = (saved or {}).get("interpolation", "bilinear")
    if saved is not None:
        in_channels, size = int(saved["in_channels"]), int(saved["image_size"])
        mean, std = list(saved["mean"]), list(saved["std"])
        resize = saved.get("resize")
    else:
        if isinstance(found.train, ImageRecords):
            gray, found.native_size = probe_images(found.train.records, seed)
            found.in_channels = 1 if gray else 3
        in_channels = int(found.in_channels or 3)
        size = int(image_size or min(found.native_size or DEFAULT_MAX_SIZE, DEFAULT_MAX_SIZE))
        mean, std = channel_stats(found.train, in_channels, size, seed)
        resize = None
    args = (size, in_channels, mean, std)
    evaluation = build_transforms(False, *args, resize=resize, interpolation=interpolation)
    for part in (found.train, found.val, found.test):
        if isinstance(part, ImageRecords):
            part.mode = "L" if in_channels == 1 else "RGB"
        if part is not None:
            part.transform = evaluation
    if preprocessing is None:
        found.train.transform = build_transforms(True, *args, augment=augment, hflip=found.hflip)
        if isinstance(found.train, ImageRecords):
            found.train.draft = 2 * size  # fast JPEG decoding for random crops
    return ClassifyData(
        found.train, found.val, found.test, list(found.labels), in_channels, size, mean, std,
        found.source, found.hflip, augment, resize,
    )  # fmt: skip
