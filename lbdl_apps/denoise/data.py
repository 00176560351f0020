"""Restoration data (book 6.1): clean images from any folder or file (a registry of readers)
or the built-in dead leaves, cut into random patches with flips and rotations, degraded on the
fly into (degraded, clean) pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lbdl_apps.core.data import check_records, find_images, load_image, split_indices
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers
from lbdl_apps.denoise.degrade import LUMA, Degradation, apply_all, from_uint8, needs_color

BUILTIN = "dead-leaves"
BUILTIN_SIZES = (400, 24)  # train, validation images
BUILTIN_SIZE = 128
VAL_SEED = 12345  # the degradation seed of validation pairs (the same every epoch)
PRELOAD_BYTES = 1 << 29  # folders smaller than this (decoded) are kept in memory
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


# ----------------------------------------------------------------------------------------------
# Built-in data: dead leaves


def dead_leaves(
    n: int, size: int = BUILTIN_SIZE, seed: int = 0, color: bool = True, start: int = 0
) -> np.ndarray:
    """n dead-leaves images (n, S, S, 3) uint8 (or (n, S, S) gray): overlapping disks of random
    color whose radii follow a power law (density ~ r^-3, scale invariant like natural images),
    each with a slight linear shading, over a random background. Image i depends only on
    (seed, start + i)."""
    channels = 3 if color else 1
    out = np.empty((n, size, size, channels), np.uint8)
    r_min, r_max = max(1.5, size / 64), size / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        image = np.empty((size, size, channels), np.float32)
        image[:] = rng.uniform(0, 255, channels)
        count = int(rng.integers(400, 700))
        u = rng.random(count)
        radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5  # inverse CDF of r^-3
        centers = rng.uniform(-0.1 * size, 1.1 * size, (count, 2))
        colors = rng.uniform(0, 255, (count, channels))
        shades = rng.normal(0, 25, (count, 2))
        for (cx, cy), r, c, (gx, gy) in zip(centers, radii, colors, shades, strict=True):
            # draw only inside the disk's bounding box (fast for the many small leaves)
            x0, x1 = max(0, int(cx - r - 1)), min(size, int(cx + r + 2))
            y0, y1 = max(0, int(cy - r - 1)), min(size, int(cy + r + 2))
            if x0 >= x1 or y0 >= y1:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            center = (round((cx - x0) * 16), round((cy - y0) * 16))
            cv2.circle(mask, center, round(r * 16), 255, -1, cv2.LINE_AA, 4)
            alpha = mask.astype(np.float32)[:, :, None] / 255.0
            shade = gx * (xx[y0:y1, x0:x1] - cx / size) + gy * (yy[y0:y1, x0:x1] - cy / size)
            region = image[y0:y1, x0:x1]
            region += alpha * (c + shade[:, :, None] - region)
        out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out if color else out[:, :, :, 0]


# ----------------------------------------------------------------------------------------------
# Image sources


class ImageSource:
    """Clean images as float (H, W, C) arrays in [0, 1]: in memory, or read from files."""

    def __init__(
        self, arrays: list[np.ndarray] | None, paths: list[Path] | None, channels: int
    ) -> None:
        self.arrays = arrays
        self.paths = paths
        self.channels = channels

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.paths or [])

    def name(self, index: int) -> str:
        return self.paths[index].name if self.paths is not None else f"{BUILTIN}-{index:03d}.png"

    def uint8(self, index: int) -> np.ndarray:
        """The image as uint8 (H, W, C)."""
        if self.arrays is not None:
            array = self.arrays[index]
        else:
            mode = "L" if self.channels == 1 else "RGB"
            array = np.asarray(load_image(self.paths[index], mode))  # type: ignore[index]
        if array.ndim == 2:
            array = array[:, :, None]
        if array.shape[2] != self.channels:
            if array.shape[2] == 1:
                array = np.repeat(array, 3, axis=2)
            else:  # color to gray: the luminance, as PIL's convert("L")
                array = np.rint(array[:, :, :3] @ LUMA)[:, :, None].astype(np.uint8)
        return array

    def __getitem__(self, index: int) -> np.ndarray:
        return from_uint8(self.uint8(index))

    def subset(self, indices: Sequence[int]) -> ImageSource:
        arrays = [self.arrays[i] for i in indices] if self.arrays is not None else None
        paths = [self.paths[i] for i in indices] if self.paths is not None else None
        return ImageSource(arrays, paths, self.channels)

    def preloaded(self) -> ImageSource:
        """The same images decoded once into memory (uint8)."""
        if self.arrays is not None:
            return self
        return ImageSource([self.uint8(i) for i in range(len(self))], self.paths, self.channels)


def _is_gray(path: Path) -> bool:
    with Image.open(path) as image:
        return image.mode in _GRAY_MODES


def _decoded_bytes(paths: Sequence[Path]) -> int:
    total = 0
    for path in paths:
        with Image.open(path) as image:
            total += image.width * image.height * 3
    return total


# ----------------------------------------------------------------------------------------------
# Datasets of (degraded, clean) pairs


def _to_tensor(image: np.ndarray) -> Tensor:
    # (H, W, C) -> (C, H, W)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Pad an image smaller than `size` (mirror) so that a size x size crop fits."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    return image


def _with_channels(image: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] < channels else image


class PatchPairs(Dataset):
    """Random patches of the clean images (random flips and 90-degree rotations), degraded
    on the fly: items are (degraded, clean) float (C, P, P) tensors. The randomness comes from
    torch's generator, so the Trainer's seeding (and resume) governs it."""

    def __init__(
        self,
        source: ImageSource,
        degradations: Sequence[Degradation],
        patch: int,
        length: int,
        channels: int,
    ) -> None:
        self.source = source
        self.degradations = list(degradations)
        self.patch = patch
        self.length = length
        self.channels = channels

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        rng = np.random.default_rng(seed)
        image = _fit(self.source[index % len(self.source)], self.patch)
        top = int(rng.integers(0, image.shape[0] - self.patch + 1))
        left = int(rng.integers(0, image.shape[1] - self.patch + 1))
        clean = image[top : top + self.patch, left : left + self.patch]
        clean = np.rot90(clean, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            clean = clean[:, ::-1]
        clean = _with_channels(np.ascontiguousarray(clean), self.channels)
        degraded, _ = apply_all(clean, self.degradations, rng)
        return _to_tensor(degraded), _to_tensor(clean)


class CenterPairs(Dataset):
    """Validation pairs: the center crop of each image, degraded with a fixed seed per image,
    so that the validation PSNR is comparable between epochs."""

    def __init__(
        self,
        source: ImageSource,
        degradations: Sequence[Degradation],
        size: int,
        channels: int,
        seed: int = VAL_SEED,
    ) -> None:
        self.source = source
        self.degradations = list(degradations)
        self.size = size
        self.channels = channels
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = _fit(self.source[index], self.size)
        top = (image.shape[0] - self.size) // 2
        left = (image.shape[1] - self.size) // 2
        clean = _with_channels(image[top : top + self.size, left : left + self.size], self.channels)
        degraded, _ = apply_all(clean, self.degradations, np.random.default_rng([self.seed, index]))
        return _to_tensor(degraded), _to_tensor(clean)


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class DenoiseData:
    """Clean training and validation images, and what the model's input looks like."""

    train: ImageSource
    val: ImageSource
    channels: int
    source: str

    def splits(self) -> dict[str, ImageSource | None]:
        """The splits `evaluate --split` chooses from (restoration data has no test split)."""
        return {"train": self.train, "val": self.val, "test": None}


def resolve_channels(data_channels: int, forced: int | None, degradations: Sequence[Degradation]):
    """The model's channel count: the data's (1 if every image is gray), or --channels; the
    gray degradation (colorization) needs 3."""
    channels = forced or data_channels
    if forced not in (None, 1, 3):
        raise LbdlError(f"--channels {forced}: choose 1 (gray) or 3 (color)")
    if needs_color(degradations):
        if forced == 1:
            raise LbdlError("--degrade gray: colorization needs --channels 3")
        if data_channels == 1 and forced is None:
            raise LbdlError(
                "--degrade gray: every training image is gray, there is no color to learn"
            )
        channels = 3
    return channels


class LazyLeaves:
    """n dead-leaves images made when first used (a short run makes only what it reads)."""

    def __init__(self, n: int, seed: int, color: bool, size: int = BUILTIN_SIZE) -> None:
        self.n, self.seed, self.color, self.size = n, seed, color, size
        self.cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.n:
            raise IndexError(index)
        if index not in self.cache:
            self.cache[index] = dead_leaves(1, self.size, self.seed, self.color, index)[0]
        return self.cache[index]


def builtin_images(n: int, seed: int, color: bool, size: int = BUILTIN_SIZE) -> ImageSource:
    return ImageSource(LazyLeaves(n, seed, color, size), None, 3 if color else 1)  # type: ignore[arg-type]


READERS: Readers = Readers("a folder or file of images")


@READERS.register("folder", "a folder of images (recursive, gray or color)", Path.is_dir)
def _image_folder(folder: Path) -> list[Path]:
    """Every image under the folder, subfolders included."""
    paths = find_images(folder)
    if not paths:
        raise LbdlError(f"{folder}: folder holds no images")
    return paths


@READERS.register("file", "one image file", Path.is_file)
def _image_file(path: Path) -> list[Path]:
    return [path]


def _builtin(
    channels: int | None,
    degradations: Sequence[Degradation],
    seed: int,
    builtin_sizes: tuple[int, int],
) -> DenoiseData:
    """The built-in dead leaves (color unless --channels 1), validation images of their own."""
    color = channels != 1
    n_train, n_val = builtin_sizes
    return DenoiseData(
        builtin_images(n_train, seed, color),
        builtin_images(n_val, seed + 1_000_003, color),
        resolve_channels(3 if color else 1, channels, degradations),
        f"built-in {BUILTIN} ({'color' if color else 'gray'}, {BUILTIN_SIZE}x{BUILTIN_SIZE})",
    )


def load_denoise_data(
    data: str | None,
    degradations: Sequence[Degradation],
    channels: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    builtin_sizes: tuple[int, int] = BUILTIN_SIZES,
) -> DenoiseData:
    """Clean images of a folder (recursive) or an image file, a seeded split of whole images
    for validation (none with `val_fraction` 0); or the built-in dead leaves."""
    if data is None or data == BUILTIN:
        return _builtin(channels, degradations, seed, builtin_sizes)
    root = Path(data)
    if not root.exists():
        raise LbdlError(f"{data}: no such folder")
    paths = READERS.find(root).read(root)
    good = [p for p, _ in check_records([(p, 0) for p in paths], skip_bad=skip_bad)]
    if not good:
        raise LbdlError(f"{data}: no readable images")
    gray = all(_is_gray(p) for p in good)
    chans = resolve_channels(1 if gray else 3, channels, degradations)
    source = ImageSource(None, good, 1 if chans == 1 else 3)
    if _decoded_bytes(good) <= PRELOAD_BYTES:
        source = source.preloaded()
    if val_fraction > 0 and len(good) >= 2:
        train_idx, val_idx = split_indices(len(good), val_fraction, seed)
    else:
        train_idx, val_idx = list(range(len(good))), []
    return DenoiseData(
        source.subset(train_idx),
        source.subset(val_idx),
        chans,
        f"{data} ({len(good)} {'gray' if gray else 'color'} images)",
    )


def default_patches_per_epoch(n_images: int) -> int:
    return max(1024, 16 * n_images)


def describe(specs: Sequence[Degradation]) -> str:
    return " + ".join(d.spec for d in specs)
