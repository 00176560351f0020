"""Training and evaluation runs of `lbdl detect`, shared by the CLI, the tour and the
benchmarks."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from torch.utils.data import DataLoader

from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_run, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.runs import make_run_dir, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions
from lbdl_apps.detect.api import TASK, load
from lbdl_apps.detect.data import (
    AUGMENTS,
    SCENE_SIZE,
    eval_collate,
    load_detect_data,
    parse_classes,
)
from lbdl_apps.detect.loss import SSDLoss
from lbdl_apps.detect.metrics import evaluate_detector, per_class_ap, plot_pr_curves, summary
from lbdl_apps.detect.model import BACKBONES, PRETRAINABLE, build_model, default_config


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl detect train` was asked for; saved as the run's config.json."""

    backbone: str = "resnet-small"
    pretrained: str | None = None
    freeze_epochs: int | None = None
    format: str | None = None
    classes: str | None = None
    image_size: int | None = None
    width: int | None = None
    scales: str | None = None
    aspect_ratios: str = "2"
    iou_threshold: float = 0.5
    neg_ratio: float = 3.0
    zoom_out: float | None = None
    augment: str | None = None
    scenes: int = 2000
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    val_fraction: float = 0.2


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LbdlError(f"--{option} {text}: give numbers separated by commas") from None
    if not values or any(v <= 0 for v in values):
        raise LbdlError(f"--{option} {text}: give positive numbers separated by commas")
    return values


def input_size(args: TrainArgs) -> int:
    """The square input side: --image-size, or 64 for the built-in scenes, 128 for the small
    backbone and 300 (as SSD300) for the ImageNet ones."""
    small = args.backbone == "resnet-small"
    return args.image_size or (SCENE_SIZE if args.data is None else 128 if small else 300)


def model_config(args: TrainArgs, num_classes: int) -> dict[str, Any]:
    if args.backbone not in BACKBONES:
        raise LbdlError(f"--backbone {args.backbone}: choose one of {', '.join(BACKBONES)}")
    config = default_config(num_classes, args.backbone, input_size(args))
    if args.width is not None:
        config["width"] = args.width
    config["scales"] = _floats(args.scales, "scales")
    config["aspect_ratios"] = _floats(args.aspect_ratios, "aspect-ratios")
    if any(v > 1 for v in config["scales"] or []):
        raise LbdlError(f"--scales {args.scales}: scales are fractions of the image side (<= 1)")
    return config


def _check(args: TrainArgs) -> None:
    if args.pretrained and args.backbone not in PRETRAINABLE:
        raise LbdlError(
            f"--pretrained: only the {', '.join(PRETRAINABLE)} backbones have ImageNet weights"
        )
    if args.freeze_epochs is not None and args.freeze_epochs >= args.epochs:
        raise LbdlError(f"--freeze-epochs {args.freeze_epochs}: must be below --epochs")
    if not 0 < args.iou_threshold < 1:
        raise LbdlError(f"--iou-threshold {args.iou_threshold}: must be in (0, 1)")
    if args.augment is not None and args.augment not in AUGMENTS:
        raise LbdlError(f"--augment {args.augment}: choose one of {', '.join(AUGMENTS)}")
    if args.zoom_out is not None and args.zoom_out < 1:
        raise LbdlError(f"--zoom-out {args.zoom_out}: must be >= 1 (1: no zoom-out)")


def frozen_epochs(args: TrainArgs) -> int:
    """Epochs of the first fine-tuning phase: a fifth of them with --pretrained, else none."""
    if args.freeze_epochs is not None:
        return args.freeze_epochs
    return max(1, args.epochs // 5) if args.pretrained else 0


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train (after a frozen-backbone phase when fine-tuning), keep the best checkpoint by
    validation mAP@[.5:.95] and return its validation scores."""
    args, common = start_run(args, common, TASK)
    _check(args)
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data = load_detect_data(
        args.data,
        args.format,
        args.val_fraction,
        common.seed,
        args.skip_bad,
        args.scenes,
        parse_classes(args.classes),
        scene_size=input_size(args),
    )
    config = model_config(args, len(data.labels))
    console.print(
        f"data: {data.source}; {data.train_count} train, {data.val_count} val images, "
        f"{len(data.labels)} classes; input {config['image_size']}px"
    )
    model = build_model(config)
    if args.pretrained and args.resume is None:
        from lbdl_apps.core.backbones.resnet import load_torchvision_weights

        name = args.pretrained if args.pretrained != "DEFAULT" else args.backbone
        load_torchvision_weights(model.backbone, name)
    console.print(
        f"SSD on {args.backbone}: maps {model.feature_sizes}, {len(model.priors)} default boxes, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
    )
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    zoom = args.zoom_out or (1.5 if args.data is None else 4.0)
    augment = args.augment or ("light" if args.data is None else "ssd")
    train_set = data.train_set(
        config["image_size"], model.priors, zoom, args.iou_threshold, augment
    )
    val_set = data.val_set(config["image_size"]) if data.val_count else None
    meta = {
        "task": TASK,
        "config": config,
        "labels": data.labels,
        "preprocessing": {"image_size": config["image_size"], "resize": "square"},
        "data": args.data,
        "format": data.format,
        "seed": common.seed,
        "val_fraction": args.val_fraction,
        "scenes": args.scenes,
    }

    def evaluate(model, loader, dev):  # no objects to find at all: an mAP of 0
        return {k: v or 0.0 for k, v in summary(evaluate_detector(model, loader, dev)).items()}

    base = TrainConfig.from_args(args, common.seed, monitor="val_map", mode="max")
    phases = []
    frozen = frozen_epochs(args)
    if frozen and args.resume is None:
        phases.append((run_dir / "frozen", replace(base, epochs=frozen, patience=None), True))
    phases.append((run_dir, replace(base, epochs=args.epochs - frozen), False))
    best: dict[str, Any] = {}
    for folder, train_config, freeze in phases:
        model.freeze_backbone(freeze)
        if freeze:
            console.print(f"phase 1: backbone frozen for {frozen} epochs ({folder})")
        elif frozen:
            console.print(f"phase 2: whole model, {train_config.epochs} epochs")
        folder.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(
            model,
            train_set,
            val_set,
            loss_fn=SSDLoss(args.neg_ratio),
            evaluate_fn=evaluate,
            config=train_config,
            run_dir=folder,
            device=device,
            checkpoint_meta=meta,
            val_collate_fn=eval_collate,
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
    fmt: str | None,
    out: Path | None,
    split: str,
    common: Common,
    batch_size: int = 16,
) -> tuple[dict[str, Any], dict[str, float | None], Path]:
    """mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP of a checkpoint on the validation part
    of its data (or of --data), or on all of --data with split "all"; writes metrics.json
    and pr_curve.png."""
    if split not in ("val", "all"):
        raise LbdlError(f"--split {split}: choose val or all")
    detector = load(checkpoint, common.torch_device())
    meta = detector.meta
    source = data if data is not None else meta.get("data")
    if split == "all" and source is None:
        raise LbdlError("--split all: needs --data (the built-in scenes are endless)")
    dataset = load_detect_data(
        source,
        fmt if data is not None else (meta.get("format") if source is not None else None),
        0.0 if split == "all" else meta.get("val_fraction", 0.2),
        meta.get("seed", 0),
        scenes=meta.get("scenes", 2000),
        classes=detector.labels if source is not None else None,
        scene_size=detector.image_size,
    )
    if dataset.labels != detector.labels:
        raise LbdlError(
            f"{source}: its classes {dataset.labels[:5]} differ from the checkpoint's "
            f"{detector.labels[:5]}"
        )
    if split == "all":
        dataset.val_load, dataset.val_count = dataset.train_load, dataset.train_count
    if dataset.val_count == 0:
        raise LbdlError(f"{source}: has no {split} images to evaluate")
    loader = DataLoader(
        dataset.val_set(detector.image_size), batch_size=batch_size, collate_fn=eval_collate
    )
    result = evaluate_detector(detector.model, loader, detector.device, per_class=True)
    scores = summary(result)
    per_class = per_class_ap(result, detector.labels)
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).resolve().parent
    folder = out or run / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    plot_pr_curves(result, detector.labels, folder / "pr_curve.png")
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "data": source,
                    "split": split,
                    "images": dataset.val_count,
                    **scores,
                    "mar_100": float(result["mar_100"]),
                    "ap_per_class": per_class,
                },
                indent=2,
            )
        )
    return scores, per_class, folder
