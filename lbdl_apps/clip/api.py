"""The clip Python API (book 6.6): `load(checkpoint)` gives a model that embeds images and
texts in one space; zero-shot classification, embedding and search use it.

    from lbdl_apps.clip import load
    clip = load("model.safetensors")
    images = clip.preprocess(pil_images)          # (N, 3, S, S), the model's preprocessing
    clip.encode_image(images)                     # (N, D), unit norm
    clip.encode_text(["a red circle."])           # (N, D), unit norm
    load("model.safetensors", inference=Inference(runtime="onnxruntime", quantize="int8"))

Both towers run where `inference` says (book 8.2; lbdl_apps.clip.export): PyTorch, PyTorch
int8, or ONNX Runtime in fp32 or int8; `clip.towers.image` and `clip.towers.text` are the
modules every embedding goes through.

It is also what other apps use of clip (the diffusion app: text conditioning, CLIP guidance
and the built-in scenes): `TextEncoder` / `ClipModel.text_encoder()`, `caption_pairs`,
`has_captions`, `make_scenes`, `new_config` (of `MODEL_SIZES`), `build_model`, `clip_loss`,
`TextTokenizer`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from lbdl_apps.clip.data import PairSet, image_transform, load_clip_data
from lbdl_apps.clip.formats import has_captions
from lbdl_apps.clip.loss import clip_loss
from lbdl_apps.clip.model import (
    CLIP,
    MODEL_SIZES,
    ClipConfig,
    Normalized,
    TextTransformer,
    build_model,
    default_config,
)
from lbdl_apps.clip.scenes import make_scenes
from lbdl_apps.clip.tokenizer import TextTokenizer, train_bpe
from lbdl_apps.core.batch import BatchReport, read_batches
from lbdl_apps.core.checkpoint import checkpoint_file, is_lbdl_checkpoint, load_model
from lbdl_apps.core.data import load_image
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Inference
from lbdl_apps.core.runtime import deploy
from lbdl_apps.core.zoo import publisher_format

__all__ = [
    "MODEL_SIZES",
    "ClipConfig",
    "ClipModel",
    "PairSet",
    "TextEncoder",
    "TextEncoderSpec",
    "TextTokenizer",
    "Towers",
    "ZeroShotPrediction",
    "build_model",
    "caption_pairs",
    "check_labels",
    "clip_loss",
    "has_captions",
    "load",
    "make_scenes",
    "new_config",
]

TASK = "clip"
ACTIVATIONS = ("quick_gelu", "gelu")
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class ZeroShotPrediction:
    """The labels of one image ranked by probability."""

    path: str
    labels: list[str]
    probabilities: list[float]


@dataclass
class TextEncoderSpec:
    """What rebuilds the text encoder of a CLIP model elsewhere (a diffusion checkpoint
    stores it): the model's config, its tokenizer (`TextTokenizer.to_meta()`) and the
    checkpoint it came from. A dict `config` (as read from JSON) becomes the typed one."""

    config: ClipConfig
    tokenizer: dict[str, Any]
    source: str = ""


class TextEncoder(nn.Module):
    """The text half of a CLIP model with its tokenizer: texts -> unit-norm embeddings."""

    def __init__(self, spec: TextEncoderSpec) -> None:
        super().__init__()
        self.tokenizer = TextTokenizer.from_meta(spec.tokenizer)
        self.embed_dim: int = spec.config.embed_dim
        self.text = TextTransformer(spec.config)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Texts -> (N, embed_dim), unit norm, on the encoder's device."""
        tokens = self.tokenizer(list(texts)).to(next(self.parameters()).device)
        return F.normalize(self.text(tokens), dim=-1)


class Towers:
    """The two networks inference runs, as the app calls them: `image` (preprocessed images
    (B, 3, S, S) -> unit-norm embeddings) and `text` (token ids (B, context_length) -> unit-
    norm embeddings), which core.runtime may replace (ONNX Runtime, int8; book 8.2), and the
    temperature. It is what the metrics call of a model: `encode_image`, `encode_text` of
    token ids, `scale`."""

    def __init__(self, model: CLIP) -> None:
        self.image: nn.Module = Normalized(model.visual)
        self.text: nn.Module = Normalized(model.text)
        self.scale = model.scale

    def encode_image(self, images: Tensor) -> Tensor:
        """Preprocessed images (B, 3, S, S) -> (B, D), unit norm."""
        return self.image(images)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids (B, context_length) -> (B, D), unit norm."""
        return self.text(tokens)


class ClipModel:
    """A CLIP model with its tokenizer and image preprocessing, ready for inference.

    `encode_image` and `encode_text` return unit-norm (N, embed_dim) embeddings; gradients
    flow through `encode_image` (and `prepare`) to the pixels, for guidance."""

    def __init__(
        self, model: CLIP, meta: dict[str, Any], device: torch.device, source: str = ""
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.meta = meta
        self.config: ClipConfig = meta["config"]
        self.device = device
        self.source = source
        self.tokenizer = TextTokenizer.from_meta(meta["tokenizer"])
        self.preprocessing: dict[str, Any] = meta["preprocessing"]
        self.image_size: int = self.preprocessing["image_size"]
        self.embed_dim: int = self.config.embed_dim
        self._transform = image_transform(self.preprocessing)
        self.towers = Towers(self.model)

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
        # the (3,) statistics viewed as (1, 3, 1, 1), to broadcast over (N, 3, S, S)
        mean = torch.tensor(self.preprocessing["mean"], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing["std"], device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_image(self, images: Tensor) -> Tensor:
        """Preprocessed images (N, 3, S, S) -> unit-norm embeddings (N, D)."""
        return self.towers.encode_image(images.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(N, context_length) token ids, truncated to the context."""
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Texts -> unit-norm embeddings (N, D)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.towers.encode_text(self.tokenize(texts).to(self.device))

    @torch.no_grad()
    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> Tensor:
        """Prompt ensembling (as open_clip): each label's prompts embedded, averaged and
        renormalized -> (num_labels, D)."""
        prompts = [template.format(label) for label in labels for template in templates]
        emb = self.encode_text(prompts)  # (labels x templates, D)
        emb = emb.view(len(labels), len(templates), -1)  # -> (labels, templates, D)
        emb = emb.mean(dim=1)  # -> (labels, D)
        return F.normalize(emb, dim=-1)

    def text_encoder(self) -> TextEncoder:
        """This model's text encoder and tokenizer as a module of their own (on the CPU),
        e.g. to condition another model on its text embeddings."""
        encoder = TextEncoder(self.text_encoder_spec()).eval()
        encoder.text.load_state_dict(self.model.text.state_dict())
        return encoder

    def text_encoder_spec(self) -> TextEncoderSpec:
        """What `TextEncoder` needs to rebuild this model's text encoder."""
        return TextEncoderSpec(self.config, self.tokenizer.to_meta(), self.source)

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
        read = functools.partial(load_image, mode="RGB")
        for names, images in read_batches(paths, read, batch_size, report):
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


def caption_pairs(data: str, seed: int = 0, skip_bad: bool = False) -> tuple[PairSet, str]:
    """Every image-caption pair of `data` (a format of `lbdl clip train --data`; none held
    out for validation) under the bad-record rule, and a description of where they are."""
    read = load_clip_data(data, val_fraction=0.0, seed=seed, skip_bad=skip_bad)
    return read.train, read.source


def new_config(
    size: str,
    image_size: int,
    captions: Iterable[str],
    vocab_size: int = 1000,
    context_length: int = 32,
) -> tuple[ClipConfig, TextTokenizer]:
    """The config of a new CLIP of a size ("tiny", "small", "base") for images of
    `image_size`, and a BPE tokenizer trained on `captions`."""
    tokenizer = train_bpe(captions, vocab_size, context_length)
    config = default_config(
        size, image_size, tokenizer.vocab_size, tokenizer.context_length, tokenizer.eot_id
    )
    return config, tokenizer


def load(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    inference: Inference | None = None,
    act: str | None = None,
) -> ClipModel:
    """Load a clip model: a `lbdl clip` checkpoint (a .safetensors file or a run folder), a
    registry name (`openai:ViT-B-32`, `laion:ViT-B-32`, ...; `lbdl models`), or an OpenAI /
    open_clip file (TorchScript archive, .pt, .bin or .safetensors state dict) recognised by
    its keys; its towers run as `inference` says (default: PyTorch). `act` (quick_gelu or
    gelu) overrides the activation the model came with (a name's, or the one read off a
    publisher's file)."""
    from lbdl_apps.clip.export import deployment

    path = checkpoint_file(checkpoint, TASK)
    if path.is_file() and not is_lbdl_checkpoint(path) and publisher_format(path, TASK) is None:
        raise LbdlError(
            f"{path}: neither an lbdl checkpoint nor the state dict of an OpenAI / open_clip "
            "CLIP ViT"
        )
    check_act(act)

    def build(config: ClipConfig) -> CLIP:
        return build_model(replace(config, act=act) if act else config)

    model, meta = load_model(path, TASK, build, ClipConfig)
    own = meta["config"].act
    if act:
        meta["config"] = replace(meta["config"], act=act)
    clip = ClipModel(model, meta, resolve_device(device), str(checkpoint))
    # another activation is another network: its exports are cached under names of their own
    deploy(deployment(clip, act if act and act != own else ""), inference, clip.device)
    return clip


def check_act(act: str | None) -> None:
    """None (the model's own), quick_gelu or gelu."""
    if act not in (None, *ACTIVATIONS):
        raise LbdlError(f"--act {act}: use {' or '.join(ACTIVATIONS)}")
