"""The image-caption formats `lbdl clip` reads (book 6.6), one entry each in a registry:
CSV and JSONL manifests, COCO captions JSON, idx files, folders of images with .txt
sidecars, and ImageFolder trees captioned with prompt templates. A reader gives the pairs of
each split the data has; a split it lacks is None (data.py holds out a validation split)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lbdl_apps.core.data import find_images, idx_file, read_idx_pair
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers

CLASS_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
)
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class PairSet:
    """Image-caption pairs. `images` is a uint8 tensor (N, C, H, W) or a list of paths (one
    per pair); `captions[i]` holds the candidate captions of pair i (training draws one,
    evaluation uses the first); `image_keys` tell which pairs share an image; `labels` are
    class indices for zero-shot accuracy (or None)."""

    images: Tensor | list[Path]
    captions: list[list[str]]
    image_keys: list[str]
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices: Sequence[int]) -> PairSet:
        images = (
            self.images[list(indices)]
            if isinstance(self.images, Tensor)
            else [self.images[i] for i in indices]
        )
        return PairSet(
            images,
            [self.captions[i] for i in indices],
            [self.image_keys[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices],
        )

    def first_captions(self) -> list[str]:
        return [options[0] for options in self.captions]

    @staticmethod
    def concat(named: dict[str, PairSet]) -> PairSet:
        """The pairs of several splits as one set, each image key prefixed with its split's
        name (the built-in splits number their images from 0 each)."""
        if len(named) == 1:
            return next(iter(named.values()))
        parts = list(named.values())
        tensors = all(isinstance(p.images, Tensor) for p in parts)
        images = (
            torch.cat([p.images for p in parts])  # type: ignore[misc]
            if tensors
            else [image for p in parts for image in _paths(p)]
        )
        labelled = all(p.labels is not None for p in parts)
        return PairSet(
            images,
            [c for p in parts for c in p.captions],
            [f"{name}:{key}" for name, p in named.items() for key in p.image_keys],
            [y for p in parts for y in p.labels] if labelled else None,  # type: ignore[union-attr]
        )


def _paths(pairs: PairSet) -> list[Path]:
    if isinstance(pairs.images, Tensor):
        raise LbdlError("cannot join in-memory images with image files in one evaluation")
    return pairs.images


@dataclass
class ClipData:
    """What `clip train` needs: the pair sets, class names and prompt templates (for
    zero-shot accuracy when the data has labels) and where the data came from. Straight
    from a reader, `val` is None when the data has no validation split of its own."""

    train: PairSet
    val: PairSet | None
    test: PairSet | None
    source: str
    class_names: list[str] | None = None
    templates: list[str] = field(default_factory=lambda: list(CLASS_TEMPLATES))

    def splits(self) -> dict[str, PairSet | None]:
        return {"train": self.train, "val": self.val, "test": self.test}


READERS: Readers = Readers("image-caption data")


def _pairs_from_rows(rows: list[tuple[str, str]], base: Path, where: str) -> PairSet:
    """(image path, caption) rows; paths relative to `base`; several captions per image
    become several pairs sharing an image key."""
    if not rows:
        raise LbdlError(f"{where}: holds no image-caption pairs")
    paths, captions = [], []
    for number, (image, caption) in enumerate(rows, start=1):
        if not image or not caption or not caption.strip():
            raise LbdlError(f"{where}: record {number} lacks an image or a caption")
        path = Path(image)
        paths.append(path if path.is_absolute() else base / path)
        captions.append([caption.strip()])
    return PairSet(paths, captions, [str(p) for p in paths])


def _suffix(*suffixes: str):
    return lambda path: path.is_file() and path.suffix.lower() in suffixes


@READERS.register("csv", "a .csv manifest with image and caption columns", _suffix(".csv"))
def read_csv(path: Path) -> ClipData:
    """A CSV manifest with `image` and `caption` (or `text`) columns."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        text = "caption" if "caption" in columns else "text"
        if "image" not in columns or text not in columns:
            raise LbdlError(f"{path}: a CSV manifest needs 'image' and 'caption' columns")
        rows = [(r["image"], r[text]) for r in reader]
    return ClipData(_pairs_from_rows(rows, path.parent, str(path)), None, None, str(path))


@READERS.register("jsonl", 'a .jsonl manifest of {"image", "caption"} lines', _suffix(".jsonl"))
def read_jsonl(path: Path) -> ClipData:
    """A JSONL manifest: one {"image": ..., "caption": ...} object a line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append((record["image"], record.get("caption", record.get("text"))))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise LbdlError(f"{path}: line {number} is not an image-caption object") from None
    return ClipData(_pairs_from_rows(rows, path.parent, str(path)), None, None, str(path))


def _coco_image_folder(path: Path, file_name: str) -> Path:
    """Where COCO's images are: beside the JSON, in images/, or in ../<split>/ (the
    layout annotations/captions_val2017.json + val2017/)."""
    split = path.stem.removeprefix("captions_")
    up = path.parent.parent
    candidates = (path.parent, path.parent / "images", up / split, up / "images" / split)
    for folder in (*candidates, up / "images"):
        if (folder / file_name).is_file():
            return folder
    raise LbdlError(f"{path}: cannot find its images (first: {file_name})")


@READERS.register("coco", "a COCO captions .json (images, annotations)", _suffix(".json"))
def read_coco(path: Path) -> ClipData:
    """COCO captions JSON: `images` (id, file_name) and `annotations` (image_id, caption)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LbdlError(f"{path}: not valid JSON ({error.msg})") from None
    try:
        names = {image["id"]: image["file_name"] for image in data["images"]}
        rows = [(names[a["image_id"]], a["caption"]) for a in data["annotations"]]
    except (KeyError, TypeError):
        raise LbdlError(f"{path}: not a COCO captions file (images, annotations)") from None
    if not rows:
        raise LbdlError(f"{path}: holds no captions")
    pairs = _pairs_from_rows(rows, _coco_image_folder(path, rows[0][0]), str(path))
    return ClipData(pairs, None, None, str(path))


def _has_idx(path: Path) -> bool:
    return path.is_dir() and idx_file(path, "train", "images") is not None


def _idx_pairs(pair: tuple[np.ndarray, np.ndarray], classes: list[str], prefix: str) -> PairSet:
    images, labels = pair
    pixels = torch.from_numpy(np.ascontiguousarray(images))
    # (N, H, W) -> (N, 1, H, W), or (N, H, W, C) -> (N, C, H, W)
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    keys = [f"{prefix}{i}" for i in range(len(labels))]
    return templated_pairs(pixels, labels.tolist(), classes, keys)


@READERS.register("idx", "a folder of MNIST-style idx files (train-*, t10k-*)", _has_idx)
def read_idx_folder(folder: Path) -> ClipData:
    """MNIST-style idx files, t10k-* as the test split (Fashion-MNIST's class names for a
    folder named so, else the label numbers)."""
    train = read_idx_pair(folder, "train")
    if train is None:
        raise LbdlError(f"{folder}: idx folder without train-labels-idx1-ubyte[.gz]")
    test = read_idx_pair(folder, "t10k")
    top = max(int(train[1].max(initial=0)), int(test[1].max(initial=0)) if test else 0)
    fashion = "fashion" in folder.resolve().name.lower()
    classes = FASHION_MNIST_LABELS if fashion else [str(c) for c in range(top + 1)]
    if top >= len(classes):
        raise LbdlError(f"{folder}: label {top} in the data, but {len(classes)} class names")
    return ClipData(
        _idx_pairs(train, classes, "train"),
        None,
        _idx_pairs(test, classes, "test") if test else None,
        f"idx files in {folder}",
        classes,
    )


def has_sidecars(folder: Path) -> bool:
    """Whether some image in `folder` (recursively) has a caption file beside it."""
    return folder.is_dir() and any(p.with_suffix(".txt").is_file() for p in find_images(folder))


@READERS.register("sidecars", "images with .txt captions beside them (a.png + a.txt)", has_sidecars)
def read_sidecars(root: Path) -> ClipData:
    """Images with a caption file beside them (photo.jpg + photo.txt), one caption a line."""
    paths, captions = [], []
    for image in find_images(root):
        sidecar = image.with_suffix(".txt")
        if not sidecar.is_file():
            continue
        lines = [line.strip() for line in sidecar.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            raise LbdlError(f"{sidecar}: empty caption file")
        paths.append(image)
        captions.append(lines)
    pairs = PairSet(paths, captions, [str(p) for p in paths])
    return ClipData(pairs, None, None, f"captioned images in {root}")


def has_captions(path: Path) -> bool:
    """Whether `path` holds captions (a .jsonl or COCO .json manifest, a .csv whose header
    has a caption or text column, a folder of images with .txt sidecars) rather than
    labelled images (a path,label .csv, class folders, idx files)."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".jsonl", ".json"):
        return True
    if path.is_file() and suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return bool({"caption", "text"} & {column.strip().lower() for column in header})
    return has_sidecars(path)


def templated_pairs(
    images: Tensor | list[Path], labels: list[int], classes: list[str], keys: list[str]
) -> PairSet:
    """Labelled images captioned with every prompt template of their class's name."""
    captions = [[t.format(classes[y]) for t in CLASS_TEMPLATES] for y in labels]
    return PairSet(images, captions, keys, list(labels))


def _class_folder_records(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in find_images(root / name):
            paths.append(path)
            labels.append(index)
    return paths, labels, classes


@READERS.register("folders", "class folders, or train/ (val/, test/) of class folders", Path.is_dir)
def read_image_folder(root: Path) -> ClipData:
    """ImageFolder trees (class folders, or train/ val/ test/ of class folders), each class
    name put into several prompt templates ("a photo of a {label}.")."""
    splits = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [root / n for n in names if (root / n).is_dir()]
        if found:
            splits[split] = found[0]
    if "train" not in splits:
        splits = {"train": root}
    paths, labels, classes = _class_folder_records(splits["train"])
    if not paths:
        raise LbdlError(f"{root}: no captions (.txt sidecars) and no class folders of images")
    classes = [name.replace("_", " ") for name in classes]
    sets = {"train": templated_pairs(paths, labels, classes, [str(p) for p in paths])}
    for split in ("val", "test"):
        if split in splits:
            p, y, names = _class_folder_records(splits[split])
            if [n.replace("_", " ") for n in names] != classes:
                raise LbdlError(f"{splits[split]}: its class folders differ from the training ones")
            sets[split] = templated_pairs(p, y, classes, [str(q) for q in p])
    return ClipData(
        sets["train"], sets.get("val"), sets.get("test"), f"image folder {root}", classes
    )
