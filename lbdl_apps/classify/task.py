"""`lbdl classify` as a task of core's run (book 6.2): its data, model, loss and
evaluation for `train`, and `evaluate` on a split of any data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, default_collate

from lbdl_apps.classify.api import TASK, Classifier, load
from lbdl_apps.classify.cli import EvaluateArgs, TrainArgs
from lbdl_apps.classify.data import ClassifyData, load_classify_data
from lbdl_apps.classify.loss import classification_loss
from lbdl_apps.classify.metrics import evaluate_classifier
from lbdl_apps.classify.model import ClassifierConfig, build_model, default_config, final_layers
from lbdl_apps.classify.transforms import mix_collate
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.core.plots import plot_confusion
from lbdl_apps.core.run import (
    Finished,
    SupervisedTask,
    TrainingSets,
    override_config,
    run_training,
)
from lbdl_apps.core.state_dicts import keep_all_but
from lbdl_apps.core.train_state import Monitor

PRETRAINABLE = ("resnet18", "resnet34", "resnet50")
CONFUSION_PLOT_MAX = 100  # classes; a larger confusion matrix is in no picture one can read


class ClassifyTask(SupervisedTask[TrainArgs, ClassifyData]):
    """Cross-entropy on labelled images; the best epoch has the best validation accuracy."""

    name = TASK
    monitor = Monitor("val_acc", "max")
    start: Classifier | None = None
    """The model a fine-tuning run starts from (--init)."""

    def check(self, args: TrainArgs) -> None:
        if args.init is not None:
            given = {"--pretrained": args.pretrained, "--image-size": args.image_size,
                     "--width": args.width, "--depth": args.depth,
                     "--patch-size": args.patch_size, "--conv-stem": args.conv_stem}  # fmt: skip
            for flag, value in given.items():
                if value is not None:
                    raise LbdlError(f"{flag}: not with --init (the model is {args.init}'s)")
            return
        if args.pretrained and args.model not in PRETRAINABLE:
            raise LbdlError(
                f"--pretrained: only resnet18/34/50 have ImageNet weights, not {args.model}"
            )
        default_config(args.model, 2, 3, 32)  # an unknown --model, before any data is read

    def load_data(self, args: TrainArgs, seed: int) -> ClassifyData:
        if args.init is not None:
            self.start = load(args.init)
            self.say(
                f"fine-tuning {args.init} ({self.start.meta['config'].name}): a new classifier"
            )
        data = load_classify_data(
            args.data,
            args.image_size,
            val_fraction=args.val_fraction,
            seed=seed,
            download=args.download,
            skip_bad=args.skip_bad,
            augment=args.augment,
            start=self.start.preprocessing if self.start is not None else None,
        )
        self.say(
            f"data: {data.source}; {len(data.train)} train, {len(data.val)} val images, "
            f"{len(data.labels)} classes"
        )
        return data

    def model_config(self, args: TrainArgs, data: ClassifyData) -> ClassifierConfig:
        if self.start is not None:
            return replace(self.start.meta["config"], num_classes=len(data.labels))
        config = default_config(args.model, len(data.labels), data.in_channels, data.image_size)
        overrides = {"width": args.width, "depth": args.depth, "patch_size": args.patch_size,
                     "conv_stem": args.conv_stem}  # fmt: skip
        return override_config(config, overrides, args.model)

    build_model = staticmethod(build_model)

    def initialize(self, model: nn.Module, args: TrainArgs, data: ClassifyData) -> None:
        if self.start is not None:
            final = final_layers(self.start.meta["config"])
            keep_all_but(model, self.start.model.state_dict(), final, args.init or "")
        if args.pretrained:
            from lbdl_apps.core.backbones.resnet import load_pretrained

            load_pretrained(model, args.pretrained, args.model)  # type: ignore[arg-type]

    def datasets(self, args: TrainArgs, data: ClassifyData, model: nn.Module) -> TrainingSets:
        train_set = data.train
        if args.fraction < 1.0:
            train_set = Subset(train_set, range(max(1, int(len(train_set) * args.fraction))))
        collate = None
        if args.mixup > 0 or args.cutmix > 0:
            collate = mix_collate(len(data.labels), args.mixup, args.cutmix)
        return TrainingSets(train_set, data.val, collate, default_collate)

    def loss(self, args: TrainArgs, data: ClassifyData):
        return partial(classification_loss, label_smoothing=args.label_smoothing)

    def evaluator(self, args: TrainArgs, data: ClassifyData, model: nn.Module):
        def evaluate(model: nn.Module, loader: DataLoader, device: torch.device):
            scores = evaluate_classifier(model, loader, device, len(data.labels))[0]
            return {f"val_{k}": v for k, v in scores.items()}

        return evaluate

    def metadata(self, args: TrainArgs, data: ClassifyData) -> dict[str, Any]:
        return {"labels": data.labels, "preprocessing": data.preprocessing(), "init": args.init}

    def finish(self, args: TrainArgs, data: ClassifyData, run: Finished) -> dict[str, float]:
        """The best checkpoint on the test split, when the data has one."""
        if data.test is None:
            return {}
        classifier = load(run.run_dir / "model.safetensors", run.device)
        loader = DataLoader(data.test, batch_size=256, num_workers=args.workers)
        test, per_class = evaluate_classifier(
            classifier.model, loader, run.device, len(data.labels)
        )
        if len(data.labels) <= CONFUSION_PLOT_MAX:
            plot_confusion(
                per_class["confusion"], data.labels, run.run_dir / "confusion_matrix.png"
            )
        self.say("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        return {f"test_{k}": v for k, v in test.items()}


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint, evaluate it on the test split; return the best
    epoch's validation scores and the test scores."""
    return run_training(ClassifyTask(), args, common)


@dataclass
class Evaluation:
    """The scores of `evaluate`, per class too, and where they were written."""

    scores: dict[str, float]
    per_class: dict[str, dict[str, Any]]
    folder: Path


def class_indices(
    found: list[str], labels: list[str], folders: list[str] | None, source: str | None
) -> list[int] | None:
    """The checkpoint's index of each class of the data (None: the very same classes). The
    data may hold only some of the checkpoint's classes, named as its labels or by the
    folder names it keeps beside them (ImageNet's WordNet IDs, as in ImageNet's and
    Imagenette's class folders)."""
    for names in (labels, folders or []):
        if found == names:
            return None
        index = {name: i for i, name in enumerate(names)}
        if all(name in index for name in found):
            return [index[name] for name in found]
    raise LbdlError(
        f"{source}: its classes {found[:5]}... are not the checkpoint's {labels[:5]}..."
    )


class Relabelled(Dataset):
    """(image, label) items whose labels become the checkpoint's indices `remap[label]`."""

    def __init__(self, dataset: Dataset, remap: list[int]) -> None:
        self.dataset, self.remap = dataset, remap

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return image, self.remap[int(label)]


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """Evaluate a checkpoint on a split (core.evaluation.split_names) of its own data or of
    --data; write metrics.json and confusion_matrix.png."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    classifier = load(args.checkpoint, common.torch_device(), args)
    meta, pre = classifier.meta, classifier.preprocessing
    if args.data is None and meta.get("source"):
        raise LbdlError(
            f"{args.checkpoint}: a pretrained model of its publisher, with no data of lbdl's; "
            "give --data (for ImageNet: its val/ folder of class folders)"
        )
    source = args.data if args.data is not None else meta.get("data")
    dataset = load_classify_data(
        source,
        pre["image_size"],
        val_fraction=0.0 if args.data is not None else meta.get("val_fraction", 0.1),
        seed=meta.get("seed", 0),
        preprocessing=pre,
    )
    remap = class_indices(dataset.labels, classifier.labels, meta.get("label_folders"), source)
    described = source or "the built-in shapes"
    names = split_names(args.split, args.data is not None, dataset.splits(), described)
    chosen: Dataset = ConcatDataset([dataset.splits()[name] for name in names])
    if remap is not None:
        chosen = Relabelled(chosen, remap)
    loader = DataLoader(chosen, batch_size=args.batch_size)
    labels = classifier.labels
    scores, tables = evaluate_classifier(classifier.model, loader, classifier.device, len(labels))
    if len(labels) <= CONFUSION_PLOT_MAX:
        plot_confusion(tables["confusion"], labels, folder / "confusion_matrix.png")
    per_class = {
        label: {
            **{name: float(tables[name][i]) for name in ("precision", "recall", "f1")},
            "support": int(tables["confusion"][i].sum()),
        }
        for i, label in enumerate(labels)
    }
    table = {
        label: {k: row[k] for k in ("precision", "recall", "f1")}
        for label, row in per_class.items()
    }
    split = split_label(names, dataset.splits())
    summary = {"checkpoint": str(args.checkpoint), "data": source, "split": split,
               "images": len(chosen), **scores, "per_class": table}  # fmt: skip
    write_json(folder / "metrics.json", summary)
    return Evaluation(scores, per_class, folder)
