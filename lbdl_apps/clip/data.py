"""CLIP data (book 6.6): image-caption pairs from the formats people keep them in (the
registry of formats.py), the built-in captioned shape scenes, the validation split, the
bad-record rule, and the preprocessing and tokens a checkpoint's model reads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lbdl_apps.clip.formats import (
    CLASS_TEMPLATES,
    FASHION_MNIST_LABELS,
    READERS,
    ClipData,
    PairSet,
)
from lbdl_apps.clip.scenes import (
    SCENE_COLORS,
    SCENE_SHAPES,
    Scenes,
    caption_for,
    is_unseen_pair,
    make_scenes,
)
from lbdl_apps.clip.tokenizer import TextTokenizer
from lbdl_apps.core.data import center_transform, check_records, load_image, split_indices
from lbdl_apps.core.errors import LbdlError

__all__ = [
    "CLASS_TEMPLATES",
    "FASHION_MNIST_LABELS",
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
    "pair_tokens",
    "prompt_tokens",
    "scene_class_names",
]  # fmt: skip

MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's normalization
STD = [0.26862954, 0.26130258, 0.27577711]
SCENE_TEMPLATES = ("a {}.", "a photo of a {}.", "a small {}.", "a large {}.")


def image_transform(preprocessing: dict[str, Any]) -> v2.Compose:
    """PIL image or uint8 tensor -> normalized (3, S, S) float tensor: shorter side resized
    to S (bicubic), center crop, mean/std normalization."""
    size, bicubic = preprocessing["image_size"], v2.InterpolationMode.BICUBIC
    return center_transform(size, 3, preprocessing["mean"], preprocessing["std"], None, bicubic)


def scene_class_names() -> list[str]:
    """The zero-shot classes of the built-in scenes: every "{color} {shape}" pair."""
    return [f"{color} {shape}" for color in SCENE_COLORS for shape in SCENE_SHAPES]


def pair_tokens(pairs: PairSet, tokenizer: TextTokenizer) -> list[Tensor]:
    """Token ids of every candidate caption of every pair: one (candidates, context) each."""
    flat = [caption for options in pairs.captions for caption in options]
    ids = tokenizer(flat)  # (all captions, context)
    counts = [len(options) for options in pairs.captions]
    return list(ids.split(counts))


def prompt_tokens(
    tokenizer: TextTokenizer, classes: Sequence[str], templates: Sequence[str]
) -> Tensor:
    """Token ids (classes x templates, context) of every (class, template) prompt,
    class-major."""
    return tokenizer([t.format(c) for c in classes for t in templates])


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
            image = image.expand(3, -1, -1) if image.shape[0] == 1 else image  # gray -> RGB
        else:
            image = load_image(images[index], "RGB")
        options = self.tokens[index]
        choice = int(torch.randint(len(options), ())) if self.random_caption else 0
        return self.transform(image), options[choice]


def _scenes_pairs(scenes: Scenes) -> PairSet:
    names = scene_class_names()
    images = torch.from_numpy(scenes.images).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
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


def read_pairs(data: str, format_name: str | None = None) -> ClipData:
    """The pairs of each split a file or folder has, in the format it is in (or
    `format_name`); the splits it lacks are None."""
    path = Path(data).expanduser()
    if not path.exists():
        raise LbdlError(f"{data}: no such file or folder")
    return READERS.find(path, format_name).read(path)


def load_clip_data(
    data: str | None,
    image_size: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
    scenes: int = 10000,
    skip_bad: bool = False,
) -> ClipData:
    """The pairs of `--data`: None (built-in scenes of `image_size`), a CSV/JSONL manifest, a
    COCO captions JSON, a folder of images with .txt sidecars, an ImageFolder tree or idx
    files. Data without a validation split of its own has `val_fraction` of it held out
    (seeded): by image for captions, stratified by class for labelled images."""
    if data is None:
        return builtin_data(scenes, image_size, seed)
    result = read_pairs(data)
    if result.val is None:
        result = _hold_out(result, val_fraction, seed)
    _check_images(result.train, skip_bad)
    return result


def _hold_out(result: ClipData, val_fraction: float, seed: int) -> ClipData:
    """A seeded validation split of the training pairs: by image (the captions of one image
    stay together) when they have no labels, else stratified by label."""
    train = result.train
    if train.labels is not None:
        train_idx, val_idx = split_indices(len(train), val_fraction, seed, train.labels)
    else:
        keys = sorted(set(train.image_keys))
        held = {keys[i] for i in split_indices(len(keys), val_fraction, seed)[1]}
        val_idx = [i for i, k in enumerate(train.image_keys) if k in held]
        train_idx = [i for i, k in enumerate(train.image_keys) if k not in held]
        if not train_idx:
            raise LbdlError(f"{result.source}: too few images to train on")
    return ClipData(
        train.subset(train_idx),
        train.subset(val_idx),
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
