"""Training and evaluation runs of `lbdl clip` (book 6.6), shared by the CLI, the tour and
the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor
from torch.utils.data import DataLoader

from lbdl_apps.clip.api import TASK, ClipModel, load
from lbdl_apps.clip.data import (
    MEAN,
    STD,
    ClipData,
    PairDataset,
    PairSet,
    load_clip_data,
    scene_class_names,
)
from lbdl_apps.clip.loss import clip_loss
from lbdl_apps.clip.metrics import (
    class_embeddings,
    contrastive_step,
    embed_pairs,
    retrieval_recalls,
    scene_attribute_accuracy,
    zero_shot_predictions,
)
from lbdl_apps.clip.model import CLIP, MODEL_SIZES, build_model, default_config
from lbdl_apps.clip.tokenizer import TextTokenizer, train_bpe
from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_run, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.runs import make_run_dir, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions

FILE_IMAGE_SIZE = 64  # default input size for image files (in-memory data keeps its own)


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl clip train` was asked for; saved as the run's config.json."""

    model: str = "small"
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    image_size: int | None = None
    width: int | None = None
    depth: int | None = None
    patch_size: int | None = None
    vocab_size: int = 1000
    context_length: int = 32
    scenes: int = 10000
    fraction: float = 1.0
    init: str | None = None


def _model_config(args: TrainArgs, image_size: int, tokenizer: TextTokenizer) -> dict:
    if args.model not in MODEL_SIZES:
        raise LbdlError(f"--model {args.model}: unknown size; choose {', '.join(MODEL_SIZES)}")
    config = default_config(
        args.model, image_size, tokenizer.vocab_size, tokenizer.context_length, tokenizer.eot_id
    )
    if args.width is not None:
        config.update(vision_width=args.width, text_width=args.width, embed_dim=args.width)
    if args.depth is not None:
        config.update(vision_depth=args.depth, text_depth=args.depth)
    if args.patch_size is not None:
        config["patch_size"] = args.patch_size
    if image_size % config["patch_size"]:
        raise LbdlError(
            f"--patch-size {config['patch_size']}: does not divide the image size {image_size}"
        )
    if config["vision_width"] % config["vision_heads"]:
        raise LbdlError(f"--width {args.width}: must be a multiple of {config['vision_heads']}")
    return config


def _image_size(args: TrainArgs, data: ClipData) -> int:
    if args.image_size is not None:
        return args.image_size
    if isinstance(data.train.images, Tensor):
        return int(data.train.images.shape[-1])
    return FILE_IMAGE_SIZE


def pair_tokens(pairs: PairSet, tokenizer: TextTokenizer) -> list[Tensor]:
    """Token ids of every candidate caption of every pair: one (candidates, context) each."""
    flat = [caption for options in pairs.captions for caption in options]
    ids = tokenizer(flat)
    counts = [len(options) for options in pairs.captions]
    return list(ids.split(counts))


def prompt_tokens(tokenizer: TextTokenizer, classes: Sequence[str], templates: Sequence[str]):
    """Token ids of every (class, template) prompt, class-major."""
    return tokenizer([t.format(c) for c in classes for t in templates])


def pair_metrics(
    model: CLIP,
    loader: DataLoader,
    device: torch.device,
    pairs: PairSet,
    prompts: Tensor | None,
    class_names: Sequence[str] | None,
) -> dict[str, float]:
    """Loss, retrieval recalls and (with labels) zero-shot accuracy of a set of pairs."""
    image_emb, text_emb = embed_pairs(model, loader, device)
    scale = float(model.scale())
    size = loader.batch_size or len(image_emb)
    total = 0.0
    for start in range(0, len(image_emb), size):  # the loss of each batch, as in training
        images, texts = image_emb[start : start + size], text_emb[start : start + size]
        total += float(clip_loss(images, texts, scale)) * len(images)
    scores = {"loss": total / len(image_emb)}
    scores.update(retrieval_recalls(image_emb, text_emb, pairs.image_keys, pairs.first_captions()))
    if prompts is not None and class_names and pairs.labels is not None:
        classes = class_embeddings(model, prompts.to(device), len(class_names))
        predicted = zero_shot_predictions(image_emb, classes)
        truth = torch.tensor(pairs.labels)
        scores["zero_shot_acc"] = (predicted == truth).float().mean().item()
        if list(class_names) == scene_class_names():
            scores.update(scene_attribute_accuracy(predicted, pairs.labels, class_names))
    return scores


def _evaluator(pairs: PairSet, prompts: Tensor | None, class_names: list[str] | None) -> Callable:
    def evaluate(model: CLIP, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return pair_metrics(model, loader, device, pairs, prompts, class_names)

    return evaluate


def _start(args: TrainArgs, data: ClipData) -> tuple[CLIP, TextTokenizer, dict, dict]:
    """The model, tokenizer, config and preprocessing: new, or those of `--init`."""
    if args.init is not None:
        start = load(args.init)
        model = start.model.requires_grad_(True)
        return model, start.tokenizer, start.meta["config"], start.preprocessing
    captions = [c for options in data.train.captions for c in options]
    tokenizer = train_bpe(captions, args.vocab_size, args.context_length)
    image_size = _image_size(args, data)
    config = _model_config(args, image_size, tokenizer)
    preprocessing = {"image_size": image_size, "mean": MEAN, "std": STD}
    return build_model(config), tokenizer, config, preprocessing


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint (by mean validation recall), score it on the test
    split; return the test scores (the best validation scores without a test split)."""
    args, common = start_run(args, common, TASK)
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data = load_clip_data(
        args.data,
        args.image_size or 32,
        args.val_fraction,
        common.seed,
        args.scenes,
        args.skip_bad,
    )
    model, tokenizer, config, preprocessing = _start(args, data)
    train_pairs = data.train
    if args.fraction < 1.0:
        train_pairs = train_pairs.subset(range(max(2, int(len(train_pairs) * args.fraction))))
    console.print(
        f"data: {data.source}; {len(train_pairs)} training pairs, {len(data.val)} validation "
        f"pairs; vocabulary {tokenizer.vocab_size} tokens"
    )
    if len(data.val) < 2:
        raise LbdlError(f"{args.data}: too few validation pairs (raise --val-fraction)")
    prompts = None
    if data.class_names:
        prompts = prompt_tokens(tokenizer, data.class_names, data.templates)
    train_set = PairDataset(train_pairs, pair_tokens(train_pairs, tokenizer), preprocessing, True)
    val_set = PairDataset(data.val, pair_tokens(data.val, tokenizer), preprocessing)
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    meta = {
        "task": TASK,
        "config": config,
        "tokenizer": tokenizer.to_meta(),
        "preprocessing": preprocessing,
        "data": args.data,
        "seed": common.seed,
        "val_fraction": args.val_fraction,
        "scenes": args.scenes,
        "class_names": data.class_names,
        "templates": data.templates,
    }
    trainer = Trainer(
        model,
        train_set,
        val_set,
        loss_fn=contrastive_step,
        evaluate_fn=_evaluator(data.val, prompts, data.class_names),
        config=TrainConfig.from_args(args, common.seed, monitor="val_recall_mean", mode="max"),
        run_dir=run_dir,
        device=device,
        checkpoint_meta=meta,
        quiet=common.quiet,
    )
    scores = trainer.fit(resume=args.resume is not None)
    if data.test is not None and trainer.main:
        clip = load(run_dir / "model.safetensors", device)
        scores = evaluate_pairs(clip, data.test, data.class_names, data.templates, 256)
        console.print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    finish_run(run_dir)
    return scores


def evaluate_pairs(
    clip: ClipModel,
    pairs: PairSet,
    class_names: list[str] | None,
    templates: Sequence[str],
    batch_size: int,
) -> dict[str, float]:
    """The metrics of a loaded model on a set of pairs."""
    dataset = PairDataset(pairs, pair_tokens(pairs, clip.tokenizer), clip.preprocessing)
    loader = DataLoader(dataset, batch_size=batch_size)
    prompts = prompt_tokens(clip.tokenizer, class_names, templates) if class_names else None
    return pair_metrics(clip.model, loader, clip.device, pairs, prompts, class_names)


def run_evaluation(
    checkpoint: Path,
    data: str | None,
    out: Path | None,
    batch_size: int,
    split: str,
    templates: Sequence[str] | None,
    common: Common,
) -> tuple[dict[str, float], Path]:
    """Evaluate a checkpoint on a split of its own data (or of --data); write metrics.json."""
    if split not in ("test", "val"):
        raise LbdlError(f"--split {split}: choose test or val")
    clip = load(checkpoint, common.torch_device())
    meta = clip.meta
    if data is None and "seed" not in meta:
        raise LbdlError(f"{checkpoint}: imported weights have no data of their own; pass --data")
    source = data if data is not None else meta.get("data")
    dataset = load_clip_data(
        source,
        clip.image_size,
        meta.get("val_fraction", 0.1),
        meta.get("seed", 0),
        meta.get("scenes", 10000),
    )
    chosen = dataset.test if split == "test" and dataset.test is not None else dataset.val
    if chosen is None or len(chosen) == 0:
        raise LbdlError(f"{source}: has no {split} pairs to evaluate")
    scores = evaluate_pairs(
        clip, chosen, dataset.class_names, templates or dataset.templates, batch_size
    )
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "metrics.json") as tmp:
        result: dict[str, Any] = {"checkpoint": str(checkpoint), "data": source, "split": split,
                                  "pairs": len(chosen), **scores}  # fmt: skip
        tmp.write_text(json.dumps(result, indent=2))
    return scores, folder
