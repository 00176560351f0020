"""The segment Python API: `load(checkpoint).segment(image)` and `.predict(paths)`; the CLI
uses it too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lbdl_apps.core.batch import BatchReport, read_each
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.data import convert_image, load_image, save_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.options import Inference
from lbdl_apps.core.runtime import deploy
from lbdl_apps.segment.metrics import sliding_logits
from lbdl_apps.segment.model import SegmenterConfig, build_model, size_multiple
from lbdl_apps.segment.transforms import preprocess_image

TASK = "segment"


@dataclass
class Segmentation:
    """The class index mask (H, W) uint8 of one image, and the image itself (PIL)."""

    path: str
    mask: np.ndarray
    image: Image.Image


def colorize(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """Index mask -> RGB (H, W, 3) uint8 with the class colors (255: white)."""
    table = np.full((256, 3), 255, np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[mask]


def overlay(image: Image.Image, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5):
    """The image with the class colors blended over it (class 0 left uncolored)."""
    base = np.asarray(image.convert("RGB"), np.float32)
    colors = colorize(mask, palette).astype(np.float32)
    painted = (mask > 0)[..., None]
    blended = np.where(painted, (1 - alpha) * base + alpha * colors, base)
    return Image.fromarray(blended.round().astype(np.uint8))


def index_png(mask: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A palette ("P") PNG whose pixel values are the class indices (the VOC convention)."""
    image = Image.fromarray(mask.astype(np.uint8), "P")
    flat = [v for color in palette for v in color]
    image.putpalette(flat + [255] * (768 - len(flat)))
    return image


class Segmenter:
    """A trained segmentation model with its classes and preprocessing."""

    def __init__(
        self, model: nn.Module, meta: dict, device: torch.device, tta: bool = False
    ) -> None:
        self.model = model.to(device).eval()
        self.tta = tta
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.preprocessing: dict = meta["preprocessing"]
        self.palette: list[list[int]] = self.preprocessing["palette"]
        self.config: SegmenterConfig = meta["config"]
        self.multiple = size_multiple(self.config)
        self.resize: int | None = self.preprocessing.get("resize")
        self.device = device

    @property
    def mode(self) -> str:
        return "L" if self.preprocessing["in_channels"] == 1 else "RGB"

    def logits(self, image: Tensor, tile: int | None = None, overlap: int | None = None):
        """Class logits (K, H, W) of a normalized (C, H, W) image; images larger than `tile`
        (default: the training size) go through a sliding window; with `tta`, the average
        over the image's four flips. A model trained at one scale (torchvision's, whose
        preprocessing has `resize`) sees the image resized to it, whole by default."""
        return sliding_logits(
            self.model, image, self.device, self.tile(tile), self.multiple, overlap,
            flips=self.tta, resize=self.resize,
        )  # fmt: skip

    def tile(self, tile: int | None = None) -> int | None:
        """The sliding window's tile: `tile`, else the training size (None: the whole image,
        for a model with a `resize`)."""
        return tile or (None if self.resize else self.preprocessing["image_size"])

    def segment(
        self,
        image: Image.Image | str | Path | np.ndarray,
        tile: int | None = None,
        overlap: int | None = None,
    ) -> np.ndarray:
        """The class index mask (H, W) uint8 of a PIL image, an array or an image file."""
        return self._segment(self._image(image), tile, overlap)

    def _image(self, image: Image.Image | str | Path | np.ndarray) -> Image.Image:
        if isinstance(image, (str, Path)):
            return load_image(image, self.mode)
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return convert_image(image, self.mode)

    def _segment(self, image: Image.Image, tile: int | None, overlap: int | None) -> np.ndarray:
        tensor = preprocess_image(image, self.preprocessing)
        return self.logits(tensor, tile, overlap).argmax(0).byte().numpy()

    def iter_predict(
        self,
        paths: Iterable[str | Path],
        report: BatchReport | None = None,
        tile: int | None = None,
        overlap: int | None = None,
    ) -> Iterator[Segmentation]:
        """Masks of image files one at a time; unreadable files go to `report` (or raise)."""
        for path, image in read_each(paths, self._image, report):
            yield Segmentation(str(path), self._segment(image, tile, overlap), image)

    def predict(
        self,
        paths: Iterable[str | Path],
        report: BatchReport | None = None,
        tile: int | None = None,
        overlap: int | None = None,
    ) -> list[Segmentation]:
        """The masks of image files (`iter_predict`, all at once)."""
        return list(self.iter_predict(paths, report, tile, overlap))

    def save(self, result: Segmentation, folder: Path, stem: str, raw: bool = False) -> None:
        """Write <stem>_mask.png (the classes' colors), <stem>_overlay.png (over the image)
        and, with `raw`, <stem>_raw.png (a palette PNG of the class indices)."""
        save_image(colorize(result.mask, self.palette), folder / f"{stem}_mask.png")
        painted = overlay(result.image, result.mask, self.palette)
        save_image(painted, folder / f"{stem}_overlay.png")
        if raw:
            save_image(index_png(result.mask, self.palette), folder / f"{stem}_raw.png")

    def shares(self, mask: np.ndarray) -> list[tuple[str, float]]:
        """The classes of a mask with the share of its pixels each covers, largest first."""
        values = mask.ravel()
        found = [(self.labels[c], float((values == c).mean())) for c in set(values.tolist())]
        return sorted(found, key=lambda item: -item[1])


def load(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    inference: Inference | None = None,
    tta: bool = False,
) -> Segmenter:
    """Load a `lbdl segment` checkpoint (a .safetensors file, a run folder or a model name),
    its network run as `inference` says (default: PyTorch; book 8.2); `tta` makes every
    prediction the average over the image's four flips (4x the compute)."""
    from lbdl_apps.segment.export import deployment

    model, meta = load_model(checkpoint, TASK, build_model, SegmenterConfig)
    segmenter = Segmenter(model, meta, resolve_device(device), tta)
    deploy(deployment(segmenter), inference, segmenter.device)
    return segmenter
