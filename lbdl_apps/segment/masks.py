"""Segmentation masks (book 6.4): reading them as class indices (palette or gray PNGs, binary
0/255 masks), the class colors, and the scan that checks every image/mask pair of a training
set (sizes, readable files, values that are classes) before anything trains on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lbdl_apps.core.errors import LbdlError

IGNORE = 255  # mask value that no loss or metric counts (the VOC object borders)
MASK_MODES = ("index", "binary", "voc")
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
Pair = tuple[Path, Path]  # (image file, mask file)
Bad = tuple[Path, str]  # (record, why it is bad)


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


def _mask_values(mask: Image.Image, path: Path) -> np.ndarray:
    """The values of an open mask image as (H, W), in whatever integer type it holds."""
    if mask.mode in ("P", "L"):
        return np.asarray(mask)
    if mask.mode == "1":
        return np.asarray(mask.convert("L"))
    if mask.mode in ("I", "I;16", "I;16B", "I;16L"):
        array = np.asarray(mask).astype(np.int64)
        if array.size and array.max() > 255:
            raise LbdlError(f"{path}: mask values above 255 ({int(array.max())})")
        return array
    if mask.mode == "LA":
        return np.asarray(mask.getchannel("L"))
    raise LbdlError(f"{path}: a {mask.mode} mask; masks are gray or palette PNGs of class indices")


def read_mask_array(path: Path) -> np.ndarray:
    """A mask file's values as (H, W) uint8: palette PNGs give their indices, gray images
    their values. RGB masks are refused (colors are not class indices)."""
    try:
        with Image.open(path) as mask:
            return np.array(_mask_values(mask, path), dtype=np.uint8)
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


def detect_mask_mode(values: set[int]) -> str:
    """binary when the masks hold only 0 and 255, index otherwise."""
    return "binary" if values <= {0, IGNORE} and IGNORE in values else "index"


@dataclass
class Scan:
    """One pass over the masks: sizes checked, values collected, bad records listed."""

    good: list[Pair]
    bad: list[Bad]
    values: set[int]
    counts: np.ndarray  # (256,) pixels of each mask value
    uniques: dict[Path, np.ndarray]  # the values of each mask

    def class_counts(self, mask_mode: str, num_classes: int) -> list[int]:
        """Pixels of each class (binary masks: of the values 0 and 255)."""
        counts = self.counts
        if mask_mode == "binary":
            counts = np.array([counts[0], counts[255]])
        return [int(c) for c in counts[:num_classes]]

    def check_values(self, mask_mode: str, num_classes: int) -> None:
        """Masks with values outside the classes become bad records."""
        for mask_path, values in self.uniques.items():
            wrong = bad_values(values, mask_mode, num_classes)
            if wrong:
                self.bad.append(
                    (
                        mask_path,
                        f"mask values {wrong[:5]} are not classes of a {mask_mode} mask "
                        f"with {num_classes} classes",
                    )
                )
                self.good = [p for p in self.good if p[1] != mask_path]


def _read_pair(image_path: Path, mask_path: Path) -> np.ndarray | Bad:
    """The mask of a pair whose image opens and whose sizes agree, else why it is bad."""
    try:
        with Image.open(image_path) as image:
            size = image.size
            image.verify()
        mask = read_mask_array(mask_path)
    except LbdlError as error:
        return mask_path, str(error).removeprefix(f"{mask_path}: ")
    except FileNotFoundError:
        return image_path, "no such file"
    except Exception as error:
        return image_path, str(error).splitlines()[0] or type(error).__name__
    if (mask.shape[1], mask.shape[0]) != size:
        return mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {size[0]}x{size[1]}"
    return mask


def scan_pairs(pairs: list[Pair], bad: list[Bad]) -> Scan:
    """Open every pair (image verified, mask read); `bad` are the records already found bad."""
    scan = Scan([], list(bad), set(), np.zeros(256, np.int64), {})
    for image_path, mask_path in pairs:
        mask = _read_pair(image_path, mask_path)
        if isinstance(mask, tuple):
            scan.bad.append(mask)
            continue
        found = np.bincount(mask.ravel(), minlength=256)
        scan.counts += found
        scan.uniques[mask_path] = np.flatnonzero(found)
        scan.values.update(scan.uniques[mask_path].tolist())
        scan.good.append((image_path, mask_path))
    return scan
