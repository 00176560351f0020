"""CLIP data (book 6.6): image-caption pairs from the formats people keep them in (CSV/JSONL
manifests, folders with .txt sidecars, COCO captions JSON, ImageFolder trees captioned with
prompt templates, idx files), the built-in captioned shape scenes, and the preprocessing
saved with a checkpoint."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lbdl_apps.clip.scenes import (
    SCENE_COLORS,
    SCENE_SHAPES,
    Scenes,
    caption_for,
    is_unseen_pair,
    make_scenes,
)
from lbdl_apps.core.data import (
    IMAGE_EXTENSIONS,
    check_records,
    find_images,
    load_image,
    read_idx,
    split_indices,
)
from lbdl_apps.core.errors import LbdlError

__all__ = [
    "CLASS_TEMPLATES",
    "SCENE_COLORS",
    "SCENE_SHAPES",
    "ClipData",
    "PairDataset",
    "PairSet",
    "Scenes",
    "caption_for",
    "image_transform",
    "is_unseen_pair",
    "load_clip_data",
    "make_scenes",
    "scene_class_names",
]  # fmt: skip

MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's normalization
STD = [0.26862954, 0.26130258, 0.27577711]
CLASS_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
)
SCENE_TEMPLATES = ("a {}.", "a photo of a {}.", "a small {}.", "a large {}.")
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # fmt: skip
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def image_transform(preprocessing: dict[str, Any]) -> v2.Compose:
    """PIL image or uint8 tensor -> normalized (3, S, S) float tensor: shorter side resized
    to S (bicubic), center crop, mean/std normalization."""
    size = preprocessing["image_size"]
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(preprocessing["mean"], preprocessing["std"]),
    ])  # fmt: skip


def scene_class_names() -> list[str]:
    """The zero-shot classes of the built-in scenes: every "{color} {shape}" pair."""
    return [f"{color} {shape}" for color in SCENE_COLORS for shape in SCENE_SHAPES]


# ----------------------------------------------------------------------------------------------
# Pairs


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


@dataclass
class ClipData:
    """What `clip train` needs: the pair sets, class names and prompt templates (for
    zero-shot accuracy when the data has labels) and where the data came from."""

    train: PairSet
    val: PairSet
    test: PairSet | None
    source: str
    class_names: list[str] | None = None
    templates: list[str] = field(default_factory=lambda: list(CLASS_TEMPLATES))


class PairDataset(Dataset):
    """(normalized image (3, S, S), token ids (context,)) items of a PairSet. With
    `random_caption`, each access draws one of the pair's candidate captions."""

    def __init__(
        self,
        pairs: PairSet,
        tokens: list[Tensor],
        preprocessing: dict[str, Any],
        random_caption: bool = False,
    ) -> None:
        self.pairs = pairs
        self.tokens = tokens  # per pair: (candidates, context) ids
        self.transform = image_transform(preprocessing)
        self.random_caption = random_caption

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images = self.pairs.images
        if isinstance(images, Tensor):
            image = images[index]
            image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        else:
            image = load_image(images[index], "RGB")
        options = self.tokens[index]
        choice = int(torch.randint(len(options), ())) if self.random_caption else 0
        return self.transform(image), options[choice]


# ----------------------------------------------------------------------------------------------
# Readers


def _scenes_pairs(scenes: Scenes) -> PairSet:
    names = scene_class_names()
    images = torch.from_numpy(scenes.images).permute(0, 3, 1, 2).contiguous()
    labels = [names.index(f"{a['color']} {a['shape']}") for a in scenes.attributes]
    keys = [str(i) for i in range(len(scenes.captions))]
    return PairSet(images, [[c] for c in scenes.captions], keys, labels)


def builtin_data(n: int, image_size: int, seed: int) -> ClipData:
    """Scenes of the "seen" color-shape pairs for training and validation; the test set
    holds only the unseen pairs, so its zero-shot accuracy measures new combinations."""
    n_val = max(100, n // 10)
    return ClipData(
        train=_scenes_pairs(make_scenes(n, image_size, seed, "seen")),
        val=_scenes_pairs(make_scenes(n_val, image_size, seed + 1, "seen")),
        test=_scenes_pairs(make_scenes(n_val, image_size, seed + 2, "unseen")),
        source=f"built-in scenes ({n} training images, {image_size} px)",
        class_names=scene_class_names(),
        templates=list(SCENE_TEMPLATES),
    )


def _templated_pairs(
    images: Tensor | list[Path], labels: list[int], classes: list[str], keys: list[str]
) -> PairSet:
    captions = [[t.format(classes[y]) for t in CLASS_TEMPLATES] for y in labels]
    return PairSet(images, captions, keys, list(labels))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_pairs(images: Path, labels: Path, classes: list[str] | None, prefix: str) -> PairSet:
    x, y = read_idx(images), read_idx(labels).astype(np.int64)
    if classes is None:
        classes = [str(c) for c in range(int(y.max()) + 1)]
    keys = [f"{prefix}{i}" for i in range(len(y))]
    pixels = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    return _templated_pairs(pixels, y.tolist(), classes, keys)


def _read_idx_folder(folder: Path) -> ClipData:
    """MNIST-style idx files (Fashion-MNIST's class names for a folder named so)."""
    files = [_idx_file(folder, stem) for stem in _IDX_FILES]
    if files[1] is None:
        raise LbdlError(f"{folder}: idx folder without {_IDX_FILES[1]}[.gz]")
    classes = FASHION_MNIST_LABELS if "fashion" in folder.resolve().name.lower() else None
    train = _idx_pairs(files[0], files[1], classes, "train")  # type: ignore[arg-type]
    test = None
    if files[2] is not None and files[3] is not None:
        test = _idx_pairs(files[2], files[3], classes, "test")
    names = classes or [str(c) for c in range(max(train.labels or [0]) + 1)]
    return ClipData(train, train, test, f"idx files in {folder}", names)


def _class_folder_records(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in find_images(root / name):
            paths.append(path)
            labels.append(index)
    return paths, labels, classes


def _read_image_folder(root: Path) -> ClipData:
    """ImageFolder trees (class folders, or train/ val/ test/ of class folders), each class
    name put into several prompt templates ("a photo of a {label}.")."""
    splits = {}
    for split, names in _SPLIT_FOLDERS.items():
        found = [root / n for n in names if (root / n).is_dir()]
        if found:
            splits[split] = found[0]
    if "train" not in splits:
        splits = {"train": root}
    paths, labels, classes = _class_folder_records(splits["train"])
    if not paths:
        raise LbdlError(f"{root}: no captions (.txt sidecars) and no class folders of images")
    labels_by_name = {name.replace("_", " "): i for i, name in enumerate(classes)}
    classes = list(labels_by_name)
    sets = {"train": _templated_pairs(paths, labels, classes, [str(p) for p in paths])}
    for split in ("val", "test"):
        if split in splits:
            p, y, names = _class_folder_records(splits[split])
            if [n.replace("_", " ") for n in names] != classes:
                raise LbdlError(f"{splits[split]}: its class folders differ from the training ones")
            sets[split] = _templated_pairs(p, y, classes, [str(q) for q in p])
    return ClipData(
        sets["train"], sets.get("val"), sets.get("test"), f"image folder {root}", classes
    )  # type: ignore[arg-type]


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


def _read_csv(path: Path) -> PairSet:
    """A CSV manifest with `image` and `caption` (or `text`) columns."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        text = "caption" if "caption" in columns else "text"
        if "image" not in columns or text not in columns:
            raise LbdlError(f"{path}: a CSV manifest needs 'image' and 'caption' columns")
        rows = [(r["image"], r[text]) for r in reader]
    return _pairs_from_rows(rows, path.parent, str(path))


def _read_jsonl(path: Path) -> PairSet:
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
    return _pairs_from_rows(rows, path.parent, str(path))


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


def _read_coco(path: Path, data: dict) -> PairSet:
    """COCO captions JSON: `images` (id, file_name) and `annotations` (image_id, caption)."""
    try:
        names = {image["id"]: image["file_name"] for image in data["images"]}
        rows = [(names[a["image_id"]], a["caption"]) for a in data["annotations"]]
    except (KeyError, TypeError):
        raise LbdlError(f"{path}: not a COCO captions file (images, annotations)") from None
    if not rows:
        raise LbdlError(f"{path}: holds no captions")
    return _pairs_from_rows(rows, _coco_image_folder(path, rows[0][0]), str(path))


def _read_sidecars(root: Path, images: list[Path]) -> PairSet:
    """Images with a caption file beside them (photo.jpg + photo.txt), one caption a line."""
    paths, captions = [], []
    for image in images:
        sidecar = image.with_suffix(".txt")
        if not sidecar.is_file():
            continue
        lines = [line.strip() for line in sidecar.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            raise LbdlError(f"{sidecar}: empty caption file")
        paths.append(image)
        captions.append(lines)
    if not paths:
        raise LbdlError(f"{root}: no image has a .txt caption beside it")
    return PairSet(paths, captions, [str(p) for p in paths])


def _read_pairs_file(path: Path) -> PairSet:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise LbdlError(f"{path}: not valid JSON ({error.msg})") from None
        return _read_coco(path, data)
    raise LbdlError(f"{path}: unknown caption format; use .csv, .jsonl or COCO .json")


def _with_split(pairs: PairSet, val_fraction: float, seed: int, source: str) -> ClipData:
    """Split by image (captions of one image stay together) into train and validation."""
    keys = sorted(set(pairs.image_keys))
    _, val_keys = split_indices(len(keys), val_fraction, seed)
    val_set = {keys[i] for i in val_keys}
    val_idx = [i for i, k in enumerate(pairs.image_keys) if k in val_set]
    train_idx = [i for i, k in enumerate(pairs.image_keys) if k not in val_set]
    if not train_idx:
        raise LbdlError(f"{source}: too few images to train on")
    return ClipData(pairs.subset(train_idx), pairs.subset(val_idx), None, source)


def load_clip_data(
    data: str | None,
    image_size: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
    scenes: int = 10000,
    skip_bad: bool = False,
) -> ClipData:
    """The pairs of `--data`: None (built-in scenes), a CSV/JSONL manifest, a COCO captions
    JSON, a folder of images with .txt sidecars, an ImageFolder tree or idx files."""
    if data is None:
        return builtin_data(scenes, image_size, seed)
    path = Path(data).expanduser()
    if not path.exists():
        raise LbdlError(f"{data}: no such file or folder")
    if path.is_file():
        result = _with_split(_read_pairs_file(path), val_fraction, seed, f"{path}")
    elif _idx_file(path, _IDX_FILES[0]) is not None:
        result = _read_idx_folder(path)
    else:
        images = [p for p in find_images(path) if p.suffix.lower() in IMAGE_EXTENSIONS]
        if any(p.with_suffix(".txt").is_file() for p in images):
            pairs = _read_sidecars(path, images)
            result = _with_split(pairs, val_fraction, seed, f"captioned images in {path}")
        else:
            result = _read_image_folder(path)
    if result.val is None or result.val is result.train:
        result = _split_labelled(result, val_fraction, seed)
    _check_images(result.train, skip_bad)
    return result


def _split_labelled(result: ClipData, val_fraction: float, seed: int) -> ClipData:
    train, val_idx = split_indices(len(result.train), val_fraction, seed, result.train.labels)
    return ClipData(
        result.train.subset(train),
        result.train.subset(val_idx),
        result.test,
        result.source,
        result.class_names,
        result.templates,
    )


def _check_images(pairs: PairSet, skip_bad: bool) -> None:
    """The bad-record rule for training pairs read from files (DESIGN.md)."""
    if isinstance(pairs.images, Tensor):
        return
    unique = list(dict.fromkeys(pairs.images))
    good = {path for path, _ in check_records([(p, 0) for p in unique], skip_bad)}
    if len(good) < len(unique):
        keep = [i for i, p in enumerate(pairs.images) if p in good]
        kept = pairs.subset(keep)
        pairs.images, pairs.captions = kept.images, kept.captions
        pairs.image_keys, pairs.labels = kept.image_keys, kept.labels
