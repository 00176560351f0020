"""The clip Python API (book 6.6): `load(checkpoint)` gives a model that embeds images and
texts in one space; zero-shot classification, embedding and search use it, and so does the
diffusion app for text guidance.

    from lbdl_apps.clip import load
    clip = load("model.safetensors")
    images = clip.preprocess(pil_images)          # (N, 3, S, S), the model's preprocessing
    clip.encode_image(images)                     # (N, D), unit norm
    clip.encode_text(["a red circle."])           # (N, D), unit norm
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from lbdl_apps.clip.data import image_transform
from lbdl_apps.clip.interop import is_openai_clip, load_openai_clip, read_state_dict
from lbdl_apps.clip.model import CLIP, build_model
from lbdl_apps.clip.tokenizer import TextTokenizer
from lbdl_apps.core.checkpoint import META_KEY, load_model
from lbdl_apps.core.data import load_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import BatchReport, LbdlError

TASK = "clip"
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class ZeroShotPrediction:
    """The labels of one image ranked by probability."""

    path: str
    labels: list[str]
    probabilities: list[float]


class ClipModel:
    """A CLIP model with its tokenizer and image preprocessing, ready for inference.

    `encode_image` and `encode_text` return unit-norm (N, embed_dim) embeddings; gradients
    flow through `encode_image` (and `prepare`) to the pixels, for guidance."""

    def __init__(self, model: CLIP, meta: dict[str, Any], device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.meta = meta
        self.device = device
        self.tokenizer = TextTokenizer.from_meta(meta["tokenizer"])
        self.preprocessing: dict[str, Any] = meta["preprocessing"]
        self.image_size: int = self.preprocessing["image_size"]
        self.embed_dim: int = meta["config"]["embed_dim"]
        self._transform = image_transform(self.preprocessing)

    @property
    def logit_scale(self) -> float:
        """1 / temperature: the factor of the cosine similarities in the softmax."""
        return float(self.model.scale())

    # ----------------------------------------------------------------- embeddings
    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> (N, 3, S, S): resized (shorter side), center-cropped, normalized."""
        return torch.stack([self._transform(image.convert("RGB")) for image in images])

    def prepare(self, images: Tensor) -> Tensor:
        """Differentiable preprocessing of (N, 3, H, W) images in [0, 1]: resized to the
        model's size (bilinear, antialiased) and normalized; for generated images."""
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True,
                                   align_corners=False)  # fmt: skip
        mean = torch.tensor(self.preprocessing["mean"], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing["std"], device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_image(self, images: Tensor) -> Tensor:
        """Preprocessed images (N, 3, S, S) -> unit-norm embeddings (N, D)."""
        return self.model.encode_image(images.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(N, context_length) token ids, truncated to the context."""
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Texts -> unit-norm embeddings (N, D)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.model.encode_text(self.tokenize(texts).to(self.device))

    @torch.no_grad()
    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> Tensor:
        """Prompt ensembling (as open_clip): each label's prompts embedded, averaged and
        renormalized -> (num_labels, D)."""
        prompts = [template.format(label) for label in labels for template in templates]
        emb = self.encode_text(prompts).view(len(labels), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def embed_images(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 64,
        report: BatchReport | None = None,
    ) -> tuple[list[Path], Tensor]:
        """Embeddings of image files (N, D); unreadable files go to `report` (or raise)."""
        names: list[Path] = []
        chunks = [torch.empty(0, self.embed_dim)]
        for batch_paths, batch in self._batches(paths, batch_size, report):
            names.extend(batch_paths)
            chunks.append(self.encode_image(batch).float().cpu())
        return names, torch.cat(chunks)

    def zero_shot(
        self,
        paths: Iterable[str | Path],
        labels: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        batch_size: int = 64,
        report: BatchReport | None = None,
    ) -> list[ZeroShotPrediction]:
        """Each image's labels ranked by probability (softmax of the scaled similarities)."""
        check_labels(labels)
        classes = self.class_embeddings(labels, templates).cpu()
        names, images = self.embed_images(paths, batch_size, report)
        probabilities = (self.logit_scale * images @ classes.t()).softmax(dim=1)
        results = []
        for path, row in zip(names, probabilities, strict=True):
            order = row.argsort(descending=True).tolist()
            results.append(ZeroShotPrediction(
                str(path), [labels[i] for i in order], [round(float(row[i]), 6) for i in order]
            ))  # fmt: skip
        return results

    def _batches(
        self, paths: Iterable[str | Path], batch_size: int, report: BatchReport | None
    ) -> Iterator[tuple[list[Path], Tensor]]:
        names: list[Path] = []
        images: list[Image.Image] = []
        for path in map(Path, paths):
            try:
                images.append(load_image(path, "RGB"))
            except LbdlError as error:
                if report is None:
                    raise
                report.failed(path, str(error).removeprefix(f"{path}: "))
                continue
            names.append(path)
            if len(images) == batch_size:
                yield names, self.preprocess(images)
                names, images = [], []
        if images:
            yield names, self.preprocess(images)


def check_labels(labels: Sequence[str]) -> None:
    """Zero-shot classification needs two or more distinct, non-empty labels."""
    if not any(label.strip() for label in labels):
        raise LbdlError("labels: the label list is empty")
    if any(not label.strip() for label in labels):
        raise LbdlError("labels: an empty label in the list")
    if len(labels) < 2:
        raise LbdlError(f"labels: {len(labels)} label(s) given; zero-shot needs at least 2")
    if len(set(labels)) != len(labels):
        raise LbdlError("labels: the same label appears twice")


def _has_lbdl_meta(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except Exception:
        return True  # let the checkpoint reader give its error


def load(
    checkpoint: str | Path, device: str | torch.device = "cpu", act: str = "quick_gelu"
) -> ClipModel:
    """Load a `lbdl clip` checkpoint (a .safetensors file or a run folder), or the state dict
    of an OpenAI CLIP / open_clip ViT model (.pt, .bin, .pth or .safetensors); `act` applies
    to the latter: quick_gelu (OpenAI's weights) or gelu (most of open_clip's)."""
    path = Path(checkpoint)
    if path.is_file() and not _has_lbdl_meta(path):
        state = read_state_dict(path)
        if not is_openai_clip(state):
            raise LbdlError(f"{path}: neither an lbdl checkpoint nor a CLIP ViT state dict")
        model, meta = load_openai_clip(state, str(path), act)
    else:
        model, meta = load_model(path, TASK, build_model)
    return ClipModel(model, meta, resolve_device(device))
