"""The classify Python API: `load(checkpoint).predict(paths)`; the CLI uses it too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lbdl_apps.classify.data import preprocess_for_inference
from lbdl_apps.classify.model import build_model
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.data import load_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import BatchReport, LbdlError

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
        names: list[Path] = []
        images = []
        for path in map(Path, paths):
            try:
                images.append(load_image(path, mode))
            except LbdlError as error:
                if report is None:
                    raise
                report.failed(path, str(error).removeprefix(f"{path}: "))
                continue
            names.append(path)
            if len(images) == batch_size:
                yield names, preprocess_for_inference(images, self.preprocessing)
                names, images = [], []
        if images:
            yield names, preprocess_for_inference(images, self.preprocessing)


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a `lbdl classify` checkpoint (a .safetensors file or a run folder)."""
    model, meta = load_model(checkpoint, TASK, build_model)
    return Classifier(model, meta, resolve_device(device))
