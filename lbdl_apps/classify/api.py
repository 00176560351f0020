"""The classify Python API: `load(checkpoint).predict(paths)`; the CLI uses it too."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lbdl_apps.classify.model import ClassifierConfig, build_model
from lbdl_apps.classify.transforms import preprocess_for_inference
from lbdl_apps.core.batch import BatchReport, read_batches
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.data import ImageRecords, load_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.options import Inference
from lbdl_apps.core.runtime import deploy

TASK = "classify"


@dataclass
class Prediction:
    """Top-k labels and probabilities of one image."""

    path: str
    labels: list[str]
    probabilities: list[float]


class Classifier:
    """A trained classifier with its labels and preprocessing, ready for inference."""

    def __init__(self, model: nn.Module, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.preprocessing: dict = meta["preprocessing"]
        self.device = device

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities of a preprocessed batch (N, C, H, W)."""
        return self.model(images.to(self.device)).float().softmax(dim=1).cpu()

    def predict(
        self,
        paths: Iterable[str | Path],
        top_k: int = 5,
        batch_size: int = 64,
        report: BatchReport | None = None,
    ) -> list[Prediction]:
        """Top-k predictions for image files; unreadable files go to `report` (or raise)."""
        k = min(top_k, len(self.labels))
        results = []
        for batch_paths, batch in self._batches(paths, batch_size, report):
            top = self.probabilities(batch).topk(k, dim=1)
            for path, scores, indices in zip(batch_paths, top.values, top.indices, strict=True):
                labels = [self.labels[i] for i in indices.tolist()]
                results.append(
                    Prediction(str(path), labels, [round(p, 6) for p in scores.tolist()])
                )
        return results

    def _batches(
        self, paths: Iterable[str | Path], batch_size: int, report: BatchReport | None
    ) -> Iterator[tuple[list[Path], Tensor]]:
        mode = "L" if self.preprocessing["in_channels"] == 1 else "RGB"
        read = functools.partial(load_image, mode=mode)
        for names, images in read_batches(paths, read, batch_size, report):
            yield names, preprocess_for_inference(images, self.preprocessing)


def load(
    checkpoint: str | Path, device: str | torch.device = "cpu", inference: Inference | None = None
) -> Classifier:
    """Load a `lbdl classify` checkpoint (a .safetensors file, a run folder or a model name),
    its network run as `inference` says (default: PyTorch; book 8.2)."""
    from lbdl_apps.classify.export import deployment

    model, meta = load_model(checkpoint, TASK, build_model, ClassifierConfig)
    classifier = Classifier(model, meta, resolve_device(device))
    deploy(deployment(classifier), inference, classifier.device)
    return classifier


@dataclass
class LabelledImages:
    """Labelled images as `lbdl classify train --data` reads them, for the apps that train
    on them (diffusion): the splits the data has of its own (`train`, and `val` / `test`
    when it has them; no validation split is held out), the class names, and the images'
    channels and side (the data's own, at most 224). Items are (image, label index)."""

    splits: dict[str, Dataset | None]
    labels: list[str]
    channels: int
    image_size: int
    source: str

    def prepare(self, transform_of: Callable[[str], Callable], channels: int) -> None:
        """Read the images of every split in `channels` (1: gray, 3: RGB) and through
        `transform_of(split name)`, instead of classify's own preprocessing."""
        for name, part in self.splits.items():
            if part is None:
                continue
            part.transform = transform_of(name)  # type: ignore[attr-defined]
            if isinstance(part, ImageRecords):
                part.mode = "L" if channels == 1 else "RGB"


def labelled_images(data: str, seed: int = 0, skip_bad: bool = False) -> LabelledImages:
    """The labelled images of `data` (class folders, train/ val/ test/ layouts, idx files, a
    path,label CSV, a named dataset) under the bad-record rule of `--skip-bad`."""
    from lbdl_apps.classify.data import load_classify_data

    found = load_classify_data(
        data, None, val_fraction=0.0, seed=seed, skip_bad=skip_bad, augment="none"
    )
    return LabelledImages(
        found.splits(), found.labels, found.in_channels, found.image_size, found.source
    )
