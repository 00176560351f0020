"""`lbdl clip` as a task of core's run (book 6.6): its data, model, contrastive loss and
retrieval / zero-shot evaluation for `train`, and `evaluate` on a split of any data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lbdl_apps.clip.api import TASK, load
from lbdl_apps.clip.cli import EvaluateArgs, TrainArgs
from lbdl_apps.clip.data import (
    MEAN,
    STD,
    ClipData,
    PairDataset,
    PairSet,
    load_clip_data,
    pair_tokens,
    prompt_tokens,
)
from lbdl_apps.clip.loss import contrastive_step
from lbdl_apps.clip.metrics import evaluate_pairs, pair_metrics
from lbdl_apps.clip.model import ClipConfig, build_model, default_config, resized
from lbdl_apps.clip.tokenizer import TextTokenizer, train_bpe
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.core.run import Finished, SupervisedTask, TrainingSets, run_training
from lbdl_apps.core.train_state import Monitor

FILE_IMAGE_SIZE = 64  # default input size for image files (in-memory data keeps its own)
SCENES_SIZE = 32  # default size of the built-in scenes


@dataclass
class ClipRun:
    """A run's data and what it is read with: the tokenizer, the model config and the
    preprocessing (new ones, or those of --init)."""

    data: ClipData
    train: PairSet  # the training pairs (a --fraction of them)
    tokenizer: TextTokenizer
    config: ClipConfig
    preprocessing: dict[str, Any]
    weights: dict[str, torch.Tensor] | None = None  # --init's, to start from


class ClipTask(SupervisedTask[TrainArgs, ClipRun]):
    """The symmetric contrastive loss on image-caption pairs; the best epoch has the best
    mean validation recall."""

    name = TASK
    monitor = Monitor("val_recall_mean", "max")

    def check(self, args: TrainArgs) -> None:
        if args.init is None:
            default_config(args.model, SCENES_SIZE, 8, 8, 3)  # an unknown --model

    def load_data(self, args: TrainArgs, seed: int) -> ClipRun:
        data = load_clip_data(
            args.data, args.image_size or SCENES_SIZE, args.val_fraction, seed, args.scenes,
            args.skip_bad,
        )  # fmt: skip
        run = self._start(args, data)
        if args.fraction < 1.0:
            run.train = run.train.subset(range(max(2, int(len(run.train) * args.fraction))))
        assert data.val is not None
        self.say(
            f"data: {data.source}; {len(run.train)} training pairs, {len(data.val)} validation "
            f"pairs; vocabulary {run.tokenizer.vocab_size} tokens"
        )
        if len(data.val) < 2:
            raise LbdlError(f"{args.data}: too few validation pairs (raise --val-fraction)")
        return run

    def _start(self, args: TrainArgs, data: ClipData) -> ClipRun:
        """New tokenizer, config and preprocessing, or those (and the weights) of --init."""
        if args.init is not None:
            start = load(args.init)
            weights = start.model.state_dict()
            return ClipRun(
                data, data.train, start.tokenizer, start.config, start.preprocessing, weights
            )
        captions = [c for options in data.train.captions for c in options]
        tokenizer = train_bpe(captions, args.vocab_size, args.context_length)
        image_size = args.image_size or (
            int(data.train.images.shape[-1])
            if isinstance(data.train.images, torch.Tensor)
            else FILE_IMAGE_SIZE
        )
        config = default_config(
            args.model, image_size, tokenizer.vocab_size, tokenizer.context_length,
            tokenizer.eot_id,
        )  # fmt: skip
        config = resized(config, args.width, args.depth, args.patch_size)
        preprocessing = {"image_size": image_size, "mean": MEAN, "std": STD}
        return ClipRun(data, data.train, tokenizer, config, preprocessing)

    def model_config(self, args: TrainArgs, data: ClipRun) -> ClipConfig:
        return data.config

    build_model = staticmethod(build_model)

    def initialize(self, model: nn.Module, args: TrainArgs, data: ClipRun) -> None:
        if data.weights is not None:
            model.load_state_dict(data.weights)

    def datasets(self, args: TrainArgs, data: ClipRun, model: nn.Module) -> TrainingSets:
        val = data.data.val
        assert val is not None
        tokenizer, pre = data.tokenizer, data.preprocessing
        train_set = PairDataset(data.train, pair_tokens(data.train, tokenizer), pre, True)
        return TrainingSets(train_set, PairDataset(val, pair_tokens(val, tokenizer), pre))

    def loss(self, args: TrainArgs, data: ClipRun):
        return contrastive_step

    def evaluator(self, args: TrainArgs, data: ClipRun, model: nn.Module):
        names, val = data.data.class_names, data.data.val
        prompts = prompt_tokens(data.tokenizer, names, data.data.templates) if names else None

        def evaluate(model: nn.Module, loader: DataLoader, device: torch.device):
            return pair_metrics(model, loader, device, val, prompts, names)  # type: ignore[arg-type]

        return evaluate

    def metadata(self, args: TrainArgs, data: ClipRun) -> dict[str, Any]:
        return {
            "tokenizer": data.tokenizer.to_meta(),
            "preprocessing": data.preprocessing,
            "scenes": args.scenes,
            "class_names": data.data.class_names,
            "templates": data.data.templates,
        }

    def finish(self, args: TrainArgs, data: ClipRun, run: Finished) -> dict[str, float]:
        """The best checkpoint on the test split, when the data has one."""
        found = data.data
        if found.test is None:
            return {}
        clip = load(run.run_dir / "model.safetensors", run.device)
        test = evaluate_pairs(clip, found.test, found.class_names, found.templates, 256)
        self.say("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        return {f"test_{k}": v for k, v in test.items()}


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint (by mean validation recall), score it on the test
    split; return the best epoch's validation scores and the test scores ("test_*")."""
    return run_training(ClipTask(), args, common)


@dataclass
class Evaluation:
    """The scores of `evaluate` and where they were written."""

    scores: dict[str, float]
    folder: Path


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """Evaluate a checkpoint on a split (core.evaluation.split_names) of its own data or of
    --data (read whole: only the data's own splits are kept apart); write metrics.json."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    clip = load(args.checkpoint, common.torch_device(), args, args.act)
    meta, given = clip.meta, args.data is not None
    if not given and "seed" not in meta:
        raise LbdlError(
            f"{args.checkpoint}: imported weights have no data of their own; pass --data"
        )
    source = args.data if given else meta.get("data")
    dataset = load_clip_data(
        source,
        clip.image_size,
        0.0 if given else meta.get("val_fraction", 0.1),
        meta.get("seed", 0),
        meta.get("scenes", 10000),
    )
    splits = dataset.splits()
    names = split_names(args.split, given, splits, source or "the built-in scenes")
    chosen = PairSet.concat({name: splits[name] for name in names})  # type: ignore[misc]
    templates = args.templates() or dataset.templates
    scores = evaluate_pairs(clip, chosen, dataset.class_names, templates, args.batch_size)
    write_json(folder / "metrics.json", {"checkpoint": str(args.checkpoint), "data": source,
               "split": split_label(names, splits), "pairs": len(chosen), **scores})  # fmt: skip
    return Evaluation(scores, folder)
