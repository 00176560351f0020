"""Training and evaluation runs of `lbdl segment`, shared by the CLI, the tour and the
benchmark."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from torch.utils.data import Subset

from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_run, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.runs import make_run_dir, plot_confusion, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions
from lbdl_apps.segment.api import TASK, load
from lbdl_apps.segment.data import list_collate, load_segment_data
from lbdl_apps.segment.loss import SegmentationLoss, parse_class_weights
from lbdl_apps.segment.metrics import evaluate_segmenter
from lbdl_apps.segment.model import BACKBONES, build_model, default_config, size_multiple


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl segment train` was asked for; saved as the run's config.json."""

    model: str = "unet"
    backbone: str = "resnet18"
    pretrained: str | None = None
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    image_size: int | None = None
    width: int | None = None
    depth: int | None = None
    blocks: int | None = None
    mask_mode: str | None = None
    class_weights: str | None = None
    dice: float = 0.0
    scenes: int = 400
    repeat: int = 1
    vflip: bool = False
    elastic: float = 0.0
    val_fraction: float = 0.2


def model_config(args: TrainArgs, num_classes: int, in_channels: int) -> dict[str, Any]:
    config = default_config(args.model, num_classes, in_channels)
    if args.model == "pspnet":
        if args.backbone not in BACKBONES:
            raise LbdlError(f"--backbone {args.backbone}: choose one of {', '.join(BACKBONES)}")
        config["backbone"] = args.backbone
    for key, value in {"width": args.width, "depth": args.depth, "blocks": args.blocks}.items():
        if value is not None:
            if key not in config:
                raise LbdlError(f"--{key}: not an option of --model {args.model}")
            config[key] = value
    return config


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint (val mIoU) and return its validation scores."""
    args, common = start_run(args, common, TASK)
    if args.pretrained and (args.model != "pspnet" or args.backbone == "resnet-small"):
        raise LbdlError(
            "--pretrained: only --model pspnet with a resnet18/34/50 backbone has ImageNet weights"
        )
    if args.dice < 0:
        raise LbdlError(f"--dice {args.dice}: must be >= 0")
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data = load_segment_data(
        args.data,
        args.image_size,
        val_fraction=args.val_fraction,
        seed=common.seed,
        mask_mode=args.mask_mode,
        skip_bad=args.skip_bad,
        scenes=args.scenes,
        announce=console.print,
        vflip=args.vflip,
        elastic=args.elastic,
    )
    console.print(
        f"data: {data.source}; {len(data.train)} train, {len(data.val)} val images, "
        f"{len(data.labels)} classes, training crops {data.image_size}px"
    )
    train_set: Any = data.train
    if args.repeat > 1:  # a few large images: several random crops of each per epoch
        train_set = Subset(data.train, list(range(len(data.train))) * args.repeat)
    config = model_config(args, len(data.labels), data.in_channels)
    multiple = size_multiple(config)
    if data.image_size % multiple:
        raise LbdlError(
            f"--image-size {data.image_size}: must be a multiple of {multiple} for this model"
        )
    weights = parse_class_weights(args.class_weights, data.class_counts)
    if weights is not None:
        console.print("class weights: " + ", ".join(f"{w:.3g}" for w in weights))
    model = build_model(config)
    if args.pretrained and args.resume is None:
        from lbdl_apps.core.backbones.resnet import load_torchvision_weights

        name = args.pretrained if args.pretrained != "DEFAULT" else args.backbone
        load_torchvision_weights(model.backbone, name)
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
        "scenes": args.scenes,
    }
    num_classes = len(data.labels)

    def evaluate(model, loader, dev):
        scores, _, _ = evaluate_segmenter(
            model, loader, dev, num_classes, data.image_size, multiple
        )
        return {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"]}

    trainer = Trainer(
        model,
        train_set,
        data.val,
        loss_fn=SegmentationLoss(weights, args.dice),
        evaluate_fn=evaluate,
        config=TrainConfig.from_args(args, common.seed, monitor="val_miou", mode="max"),
        run_dir=run_dir,
        device=device,
        checkpoint_meta=meta,
        val_collate_fn=list_collate,
        quiet=common.quiet,
    )
    best = trainer.fit(resume=args.resume is not None)
    if is_main_process():
        shown = {k: v for k, v in best.items() if k.startswith("val_")}
        console.print("best: " + ", ".join(f"{k} {float(v):.4f}" for k, v in shown.items()))
    finish_run(run_dir)
    return {k: float(v) for k, v in best.items() if isinstance(v, (int, float))}


def run_evaluation(
    checkpoint: Path,
    data: str | None,
    out: Path | None,
    split: str,
    common: Common,
    tile: int | None = None,
    tta: bool = False,
) -> tuple[dict[str, float], list[float], list[str], Path]:
    """Evaluate a checkpoint on the validation part of its data (or of --data), or on all of
    --data with split "all"; full-size images, sliding window (with `tta`, averaged over
    flips); write metrics.json."""
    if split not in ("val", "all"):
        raise LbdlError(f"--split {split}: choose val or all")
    segmenter = load(checkpoint, common.torch_device())
    meta = segmenter.meta
    source = data if data is not None else meta.get("data")
    dataset = load_segment_data(
        source,
        val_fraction=meta.get("val_fraction", 0.2),
        seed=meta.get("seed", 0),
        labels=segmenter.labels if source is not None else None,
        preprocessing=segmenter.preprocessing,
        scenes=meta.get("scenes", 400),
    )
    if dataset.labels != segmenter.labels:
        raise LbdlError(
            f"{source}: its classes {dataset.labels[:5]} differ from the checkpoint's "
            f"{segmenter.labels[:5]}"
        )
    if split == "all":
        from torch.utils.data import ConcatDataset

        dataset.train.transform = dataset.val.transform  # type: ignore[attr-defined]
        chosen: Any = ConcatDataset([dataset.train, dataset.val])
    else:
        chosen = dataset.val
    if len(chosen) == 0:
        raise LbdlError(f"{source}: has no {split} images to evaluate")
    num_classes = len(segmenter.labels)
    scores, iou, confusion = evaluate_segmenter(
        segmenter.model,
        (chosen[i] for i in range(len(chosen))),
        segmenter.device,
        num_classes,
        tile or segmenter.preprocessing["image_size"],
        segmenter.multiple,
        flips=tta,
    )
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        confusion,
        segmenter.labels,
        folder / "confusion_matrix.png",
        show="rate",
        title="pixels, normalised per true class",
    )
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "data": source,
                    "split": split,
                    "tta": tta,
                    "images": len(chosen),
                    **scores,
                    "iou": {
                        label: (None if value != value else value)
                        for label, value in zip(segmenter.labels, iou, strict=True)
                    },
                    "confusion": confusion.tolist(),
                },
                indent=2,
            )
        )
    return scores, iou, segmenter.labels, folder
