"""Deploying a CLIP (book 6.6, 8.2): its two towers as two graphs, each exactly what the app
calls (`Towers.image`: preprocessed images (B, 3, S, S) -> unit-norm embeddings;
`Towers.text`: token ids (B, context_length) -> unit-norm embeddings, the end-of-text
pooling inside the graph), any batch; model.json says how to preprocess images and tokenize
texts, and `lbdl clip export` writes the trained tokenizer beside it. Both towers are
transformers (dynamic int8); an image tower whose convolution holds most of the weights
(a tiny ViT with large patches) gets static int8, calibrated on images read as the app
reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbdl_apps.clip.api import TASK, ClipModel, load
from lbdl_apps.clip.data import PairDataset, load_clip_data, pair_tokens, read_pairs
from lbdl_apps.core.errors import report
from lbdl_apps.core.export import CALIBRATION_INPUTS, Deployment, Graph, calibration_batches
from lbdl_apps.core.options import ExportArgs
from lbdl_apps.core.outputs import atomic_path

# the sample captions: of different lengths, so the end-of-text token is read at different
# positions of the batch (the pooling of the text tower is traced with them)
SAMPLE_TEXTS = ("a photo of a small red square on a white background.", "a cat")
TOKENIZER_FILE = "tokenizer.json"
OPENAI_BPE = (
    "OpenAI CLIP's BPE (bpe_simple_vocab_16e6.txt.gz, shipped in open_clip_torch): "
    "open_clip.tokenize(texts, context_length) gives these ids"
)


def deployment(clip: ClipModel, variant: str = "") -> Deployment:
    """The image and text towers, attached back as `clip.towers.image` / `.text`. A
    `variant` (another activation than the checkpoint's) names graphs of its own."""
    suffix = f".{variant}" if variant else ""
    batch = {0: "batch"}
    side = clip.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, side, side, generator=generator).to(clip.device)

    def attach_image(module: nn.Module) -> None:
        clip.towers.image = module

    def attach_text(module: nn.Module) -> None:
        clip.towers.text = module

    image = Graph(
        f"image_encoder{suffix}", clip.towers.image, (images,), ["images"], ["embeddings"],
        dynamic={"images": batch, "embeddings": batch}, attach=attach_image,
        calibration=lambda data: calibration(clip, data),
    )  # fmt: skip
    text = Graph(
        f"text_encoder{suffix}", clip.towers.text, (clip.tokenize(SAMPLE_TEXTS).to(clip.device),),
        ["tokens"], ["embeddings"], dynamic={"tokens": batch, "embeddings": batch},
        attach=attach_text,
    )  # fmt: skip
    return Deployment(TASK, Path(clip.meta["file"]), [image, text], description(clip))


def description(clip: ClipModel) -> dict[str, Any]:
    """What model.json says beside the files: the image preprocessing, the tokenizer, how
    the embeddings are compared, and the checkpoint's classes and prompts."""
    side, pre, tokenizer = clip.image_size, clip.preprocessing, clip.tokenizer
    return {
        "embed_dim": clip.embed_dim,
        "image_preprocessing": {
            "input": f"(B, 3, {side}, {side}) float32, RGB, channels first",
            "resize": f"the shorter side to {side} (bicubic, antialiased), then the center "
            f"{side} x {side} crop",
            "value_range": "[0, 1] (pixel / 255), then (x - mean) / std per channel",
            "mean": pre["mean"],
            "std": pre["std"],
        },
        "tokenizer": {
            "kind": tokenizer.kind,
            "file": TOKENIZER_FILE if tokenizer.kind == "bpe" else OPENAI_BPE,
            "context_length": tokenizer.context_length,
            "sot_id": tokenizer.sot_id,
            "eot_id": tokenizer.eot_id,
            "pad_id": tokenizer.pad_id,
            "ids": "per text: sot_id, its BPE ids (the first context_length - 2), eot_id, "
            "then pad_id up to context_length; int64",
        },
        "text_pooling": "inside the graph: the state at each row's first eot_id",
        "postprocessing": "embeddings are unit norm: similarity = image @ text.T; zero-shot "
        "probabilities = softmax(logit_scale * similarity) over the labels' text embeddings",
        "logit_scale": clip.logit_scale,
        "class_names": clip.meta.get("class_names"),
        "templates": clip.meta.get("templates"),
    }


def calibration(clip: ClipModel, data: str | None) -> list[tuple[Tensor, ...]]:
    """Static int8's calibration images: up to CALIBRATION_INPUTS of --calibrate DATA (any
    format of `lbdl clip train --data`, spread over the whole of it), or built-in scenes,
    preprocessed as the model's."""
    if data is None:
        pairs = load_clip_data(None, clip.image_size, scenes=CALIBRATION_INPUTS).train
    else:
        pairs = read_pairs(data).train
        step = max(1, len(pairs) // CALIBRATION_INPUTS)  # classes folders are sorted by class
        pairs = pairs.subset(range(0, len(pairs), step)[:CALIBRATION_INPUTS])
    dataset = PairDataset(pairs, pair_tokens(pairs, clip.tokenizer), clip.preprocessing)
    return calibration_batches(dataset, lambda batch: (batch[0],))


def run(args: ExportArgs, act: str | None = None) -> Path:
    """`lbdl clip export`: both towers and model.json (core.export.run_export), and the
    trained tokenizer as tokenizer.json beside them (Hugging Face tokenizers' format)."""
    from lbdl_apps.core.export import run_export

    loaded: list[ClipModel] = []

    def deploy(checkpoint: str) -> Deployment:
        loaded.append(load(checkpoint, act=act))
        return deployment(loaded[-1])

    folder = run_export(args, deploy)
    tokenizer = loaded[-1].tokenizer
    if tokenizer.kind == "bpe":
        with atomic_path(folder / TOKENIZER_FILE) as tmp:
            tokenizer.tokenizer.save(str(tmp))
        report(f"wrote {folder / TOKENIZER_FILE}")
    return folder
