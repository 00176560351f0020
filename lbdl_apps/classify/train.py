"""Training and evaluation runs of `lbdl classify`, shared by the CLI and the tour."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from torch.utils.data import DataLoader, Subset, default_collate

from lbdl_apps.classify.api import TASK, load
from lbdl_apps.classify.data import load_classify_data, mix_collate
from lbdl_apps.classify.metrics import classification_loss, evaluate_classifier
from lbdl_apps.classify.model import build_model, default_config
from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_run, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.runs import make_run_dir, plot_confusion, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl classify train` was asked for; saved as the run's config.json."""

    model: str = "resnet-small"
    batch_size: int = 128
    lr: float = 2e-3
    image_size: int | None = None
    width: int | None = None
    depth: int | None = None
    patch_size: int | None = None
    conv_stem: int | None = None
    pretrained: str | None = None
    augment: str = "basic"
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.05
    fraction: float = 1.0
    download: bool = False


def _model_config(args: TrainArgs, num_classes: int, in_channels: int, image_size: int) -> dict:
    config = default_config(args.model, num_classes, in_channels, image_size)
    overrides = {
        "width": args.width,
        "depth": args.depth,
        "patch_size": args.patch_size,
        "conv_stem": args.conv_stem,
    }
    for key, value in overrides.items():
        if value is not None:
            if key not in config:
                raise LbdlError(f"--{key.replace('_', '-')}: not an option of --model {args.model}")
            config[key] = value
    return config


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint, evaluate it on the test split; return the test scores."""
    args, common = start_run(args, common, TASK)
    if args.pretrained and args.model not in ("resnet18", "resnet34", "resnet50"):
        raise LbdlError(
            f"--pretrained: only resnet18/34/50 have ImageNet weights, not {args.model}"
        )
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data = load_classify_data(
        args.data,
        args.image_size,
        val_fraction=args.val_fraction,
        seed=common.seed,
        download=args.download,
        skip_bad=args.skip_bad,
        augment=args.augment,
    )
    console.print(
        f"data: {data.source}; {len(data.train)} train, {len(data.val)} val images, "
        f"{len(data.labels)} classes"
    )
    train_set = data.train
    if args.fraction < 1.0:
        keep = max(1, int(len(train_set) * args.fraction))
        train_set = Subset(train_set, range(keep))
    config = _model_config(args, len(data.labels), data.in_channels, data.image_size)
    model = build_model(config)
    if args.pretrained and args.resume is None:
        from lbdl_apps.core.backbones.resnet import load_torchvision_weights

        load_torchvision_weights(
            model, args.pretrained if args.pretrained != "DEFAULT" else args.model
        )
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    meta = {
        "task": TASK,
        "config": config,
        "labels": data.labels,
        "preprocessing": data.preprocessing(),
        "data": args.data,
        "seed": common.seed,
        "val_fraction": args.val_fraction,
    }
    num_classes = len(data.labels)
    collate = None
    if args.mixup > 0 or args.cutmix > 0:
        collate = mix_collate(num_classes, args.mixup, args.cutmix)
    trainer = Trainer(
        model,
        train_set,
        data.val,
        loss_fn=partial(classification_loss, label_smoothing=args.label_smoothing),
        evaluate_fn=lambda m, loader, dev: {
            f"val_{k}": v for k, v in evaluate_classifier(m, loader, dev, num_classes)[0].items()
        },
        config=TrainConfig.from_args(args, common.seed, monitor="val_acc", mode="max"),
        run_dir=run_dir,
        device=device,
        checkpoint_meta=meta,
        collate_fn=collate,
        val_collate_fn=default_collate,
        quiet=common.quiet,
    )
    best = trainer.fit(resume=args.resume is not None)
    scores = best
    if data.test is not None and trainer.main:
        classifier = load(run_dir / "model.safetensors", device)
        loader = DataLoader(data.test, batch_size=256, num_workers=args.workers)
        test, per_class = evaluate_classifier(classifier.model, loader, device, num_classes)
        scores = {f"test_{k}": v for k, v in test.items()}
        plot_confusion(per_class["confusion"], data.labels, run_dir / "confusion_matrix.png")
        console.print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    finish_run(run_dir)
    return scores


def run_evaluation(
    checkpoint: Path,
    data: str | None,
    out: Path | None,
    batch_size: int,
    split: str,
    common: Common,
) -> tuple[dict[str, float], dict[str, Any], list[str], Path]:
    """Evaluate a checkpoint on a split of its own data (or of --data); write metrics.json."""
    classifier = load(checkpoint, common.torch_device())
    meta = classifier.meta
    pre = classifier.preprocessing
    source = data if data is not None else meta.get("data")
    dataset = load_classify_data(
        source,
        pre["image_size"],
        val_fraction=meta.get("val_fraction", 0.1),
        seed=meta.get("seed", 0),
        preprocessing=pre,
    )
    if dataset.labels != classifier.labels:
        raise LbdlError(
            f"{source}: its classes {dataset.labels[:5]}... differ from the checkpoint's "
            f"{classifier.labels[:5]}..."
        )
    if split not in ("test", "val"):
        raise LbdlError(f"--split {split}: choose test or val")
    chosen = dataset.test if split == "test" and dataset.test is not None else dataset.val
    if chosen is None or len(chosen) == 0:
        raise LbdlError(f"{source}: has no {split} images to evaluate")
    loader = DataLoader(chosen, batch_size=batch_size)
    num_classes = len(classifier.labels)
    scores, per_class = evaluate_classifier(
        classifier.model, loader, classifier.device, num_classes
    )
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    plot_confusion(per_class["confusion"], classifier.labels, folder / "confusion_matrix.png")
    table = {
        label: {name: float(per_class[name][i]) for name in ("precision", "recall", "f1")}
        for i, label in enumerate(classifier.labels)
    }
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "data": source,
                    "split": split,
                    "images": len(chosen),
                    **scores,
                    "per_class": table,
                },
                indent=2,
            )
        )
    return scores, per_class, classifier.labels, folder
