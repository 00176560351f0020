"""Data plumbing every image app shares: reading images the way users have them, finding
files, idx files, seeded splits (book ch. 3, training protocols) and the bad-record rule for
training sets: the training set is all the model learns from, so it is never silently altered."""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lbdl_apps.core.bad_records import bad_record_rule
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.outputs import atomic_path

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip

Record = tuple[Path, int]

_GLOB_CHARS = set("*?[")
_WHITE = (255, 255, 255)


def _reason(error: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit gray ("I;16", "I") and float ("F") images scaled to 8-bit "L"."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = array.astype(np.float32) / 257.0
    elif image.mode == "F":
        array = np.nan_to_num(array.astype(np.float32))
        scaled = array * 255.0 if array.size and array.max() <= 1.0 else array
    else:  # "I": 16-bit data read as 32-bit, or 8-bit values stored wide
        scaled = array.astype(np.float64)
        if scaled.size and scaled.max() > 255:
            scaled = scaled / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def convert_image(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any PIL image to "RGB" or "L": transparency composited on white, 16-bit
    scaled to 8-bit, palette/CMYK/YCbCr/1-bit converted."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    return image if image.mode == mode else image.convert(mode)


def load_image(path: str | Path, mode: str = "RGB", draft: int | None = None) -> Image.Image:
    """Read an image as the model expects it: EXIF orientation applied, then converted to
    `mode` ("RGB" or "L"). Any failure is an LbdlError naming the file. With `draft`, a
    JPEG is decoded at a reduced scale that keeps both sides >= draft pixels (faster)."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    path = Path(path)
    try:
        with Image.open(path) as opened:
            if draft is not None and opened.format == "JPEG":
                opened.draft(opened.mode, (draft, draft))
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception:  # a broken EXIF block: the pixels are still good
                image = opened
            image = convert_image(image, mode)
            image.load()
            return image if image is not opened else image.copy()
    except FileNotFoundError:
        raise LbdlError(f"{path}: cannot read image (no such file)") from None
    except IsADirectoryError:
        raise LbdlError(f"{path}: cannot read image (it is a folder)") from None
    except Exception as error:  # PIL raises many types for bad files
        raise LbdlError(f"{path}: cannot read image ({_reason(error)})") from error


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image ("L" or "RGB") as a float (C, H, W) tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """A float (C, H, W) tensor in [0, 1] (C = 1 or 3) as an 8-bit PIL image, rounded."""
    array = tensor.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    array = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def save_image(image: Image.Image | torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write an image atomically (temporary name, then rename); the format follows the
    extension. Tensors are float (C, H, W) in [0, 1]; arrays are uint8 (H, W[, C])."""
    if isinstance(image, torch.Tensor):
        image = tensor_to_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def image_preprocessing(
    image_size: int, in_channels: int, mean: Sequence[float], std: Sequence[float], **extra: Any
) -> dict[str, Any]:
    """The preprocessing an image app stores in its checkpoints, so that inference prepares
    an image as evaluation did: size, channels, normalization, and the app's `extra`."""
    return {"image_size": image_size, "in_channels": in_channels, "mean": list(mean),
            "std": list(std), **extra}  # fmt: skip


def center_transform(
    size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
) -> v2.Compose:
    """The evaluation / inference transform of the image apps: a PIL image or uint8 tensor
    -> float (channels, size, size): gray or RGB, the short side resized to `resize`
    (default `size`), the center crop, then (x - mean) / std per channel."""
    return v2.Compose([
        v2.ToImage(),
        v2.Grayscale(1) if channels == 1 else v2.RGB(),
        v2.Resize(resize or size, interpolation=interpolation, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
        v2.ToPureTensor(),
    ])  # fmt: skip


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Every image file under `root` (recursive, sorted; hidden files and folders skipped);
    with `extensions`, the files with those (lower-case) suffixes instead, e.g. audio."""
    root = Path(root)
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in extensions and p.is_file() and not _is_hidden(p, root)
    )


def expand_inputs(
    inputs: Sequence[str | Path],
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    what: str = "images",
) -> list[Path]:
    """The files a batch verb works on: files as given (even with an unknown extension, so a
    bad one is reported by the batch rule), folders (their images, recursive) and globs.
    An input that matches nothing is an LbdlError naming it. Duplicates are dropped.
    `extensions` and `what` ("audio files") make it look for other kinds of files."""
    found: dict[Path, None] = {}
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = find_images(path, extensions)
            if not matches:
                raise LbdlError(f"{text}: folder holds no {what} ({', '.join(extensions)})")
        elif _GLOB_CHARS & set(text):
            matches = []
            for hit in sorted(glob.glob(str(path), recursive=True)):
                hit_path = Path(hit)
                matches.extend(
                    find_images(hit_path, extensions) if hit_path.is_dir() else [hit_path]
                )
            if not matches:
                raise LbdlError(f"{text}: pattern matches no files")
        else:
            raise LbdlError(f"{text}: no such file or folder")
        found.update(dict.fromkeys(matches))
    return list(found)


_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST / Fashion-MNIST format), gzip-compressed or not."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise LbdlError(f"{path}: no such idx file") from None
    except (OSError, EOFError) as error:
        raise LbdlError(f"{path}: cannot read idx file ({_reason(error)})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise LbdlError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'none'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise LbdlError(f"{path}: truncated idx file (header cut short)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise LbdlError(
            f"{path}: idx file holds {len(raw) - header} data bytes, "
            f"its header {shape} says {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_file(folder: Path, prefix: str, kind: str) -> Path | None:
    """The idx file `prefix`-`kind` ("images" or "labels") of a folder, e.g.
    train-images-idx3-ubyte[.gz] (also the train-images.idx3-ubyte spelling), or None."""
    dims = "idx3" if kind == "images" else "idx1"
    hits = sorted(folder.glob(f"{prefix}-{kind}[-.]{dims}-ubyte*"))
    return hits[0] if hits else None


def read_classes_txt(folder: Path) -> list[str] | None:
    """The class names of `folder`/classes.txt, one a line (None without the file)."""
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise LbdlError(f"{path}: a class name appears twice")
    return names


def read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The images (N, H, W[, C]) uint8 and labels (N,) int64 of `prefix`-images / -labels
    idx files in `folder`, checked against each other; None when neither file is there."""
    images_path = idx_file(folder, prefix, "images")
    labels_path = idx_file(folder, prefix, "labels")
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


def datasets_root() -> Path:
    """Where named datasets are downloaded and built-in data is cached: $LBDL_DATA, else
    ~/.cache/lbdl/datasets."""
    root = os.environ.get("LBDL_DATA") or Path.home() / ".cache" / "lbdl" / "datasets"
    return Path(root).expanduser()


def split_indices(
    n: int, val_fraction: float, seed: int, stratify: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of range(n) (book ch. 3, training protocols), both
    parts sorted. With `stratify` (one label per item) each class is split on its own, so
    every class with 2+ items is in both parts. A fraction of 0 gives an empty validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise LbdlError(f"validation fraction must be in [0, 1), not {val_fraction}")
    if val_fraction == 0.0:
        return list(range(n)), []
    if n < 2:
        raise LbdlError(f"cannot split {n} item(s) into a training and a validation set")
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        labels = np.asarray(stratify)
        if len(labels) != n:
            raise ValueError("stratify needs one label per item")
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    train: list[int] = []
    val: list[int] = []
    for group in groups:
        order = rng.permutation(group)
        count = (
            0 if len(order) < 2 else min(max(round(len(order) * val_fraction), 1), len(order) - 1)
        )
        val.extend(order[:count].tolist())
        train.extend(order[count:].tolist())
    return sorted(train), sorted(val)


def _check_one(path: Path) -> str | None:
    """Why an image file cannot be used, or None when it looks fine (header + PIL verify)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "it is a folder"
    except Exception as error:
        return _reason(error)
    return None


def check_records(records: Sequence[Record], skip_bad: bool = False) -> list[Record]:
    """The bad-record rule (core.bad_records) for image files: open every image and return
    the good records."""
    good: list[Record] = []
    bad: list[tuple[Path, str]] = []
    for record in records:
        reason = _check_one(Path(record[0]))
        if reason is None:
            good.append(record)
        else:
            bad.append((Path(record[0]), reason))
    bad_record_rule(bad, len(records), skip_bad)
    return good


class ImageRecords(Dataset):
    """(path, label) records read with `load_image` in `mode` (and `draft`), then
    `transform`."""

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable[[Any], Any] | None = None,
        mode: str = "RGB",
        draft: int | None = None,
    ) -> None:
        self.records = [(Path(p), int(label)) for p, label in records]
        self.transform = transform
        self.mode = mode
        self.draft = draft

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.records]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.records[index]
        image = load_image(path, self.mode, self.draft)
        return (self.transform(image) if self.transform else image), label


class TensorImageDataset(Dataset):
    """In-memory uint8 images, (N, H, W) or (N, H, W, C), with integer labels. Items are
    `tv_tensors.Image` (C, H, W) uint8 before `transform`."""

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        images = torch.as_tensor(np.asarray(images))
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise ValueError("images must be uint8 with shape (N, H, W) or (N, H, W, C)")
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        return self.targets.tolist()

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = tv_tensors.Image(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.targets[index])
