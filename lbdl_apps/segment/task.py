"""`lbdl segment` as a task of core's run (book 6.4): its data, model, loss and evaluation
for `train`, and `evaluate`: mIoU, per-class IoU and pixel accuracy on full-size images of a
split of any data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import ConcatDataset, Subset

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.core.plots import plot_confusion
from lbdl_apps.core.run import SupervisedTask, TrainingSets, override_config, run_training
from lbdl_apps.core.state_dicts import keep_all_but
from lbdl_apps.core.train_state import Monitor
from lbdl_apps.segment.api import TASK, Segmenter, load
from lbdl_apps.segment.cli import EvaluateArgs, TrainArgs
from lbdl_apps.segment.data import SegData, load_segment_data
from lbdl_apps.segment.loss import SegmentationLoss, parse_class_weights
from lbdl_apps.segment.metrics import evaluate_segmenter
from lbdl_apps.segment.model import (
    BACKBONES,
    RESNET_HEADS,
    SegmenterConfig,
    build_model,
    default_config,
    final_layers,
    size_multiple,
    with_backbone,
)
from lbdl_apps.segment.transforms import list_collate


class SegmentTask(SupervisedTask[TrainArgs, SegData]):
    """Per-pixel cross-entropy (+ Dice) on image/mask crops; the best epoch has the best
    validation mIoU on the full-size validation images."""

    name = TASK
    monitor = Monitor("val_miou", "max")
    start: Segmenter | None = None
    """The model a fine-tuning run starts from (--init)."""

    def check(self, args: TrainArgs) -> None:
        if args.init is not None:
            given = {"--pretrained": args.pretrained, "--width": args.width,
                     "--depth": args.depth, "--blocks": args.blocks}  # fmt: skip
            for flag, value in given.items():
                if value is not None:
                    raise LbdlError(f"{flag}: not with --init (the model is {args.init}'s)")
            return
        if args.pretrained and (args.model not in RESNET_HEADS or args.backbone == "resnet-small"):
            raise LbdlError(
                "--pretrained: only --model pspnet, fcn or deeplabv3 with a resnet18/34/50 "
                "backbone has ImageNet weights"
            )
        default_config(args.model, 2, 3)  # an unknown --model, before any data is read
        if args.model in RESNET_HEADS and args.backbone not in BACKBONES:
            raise LbdlError(f"--backbone {args.backbone}: choose one of {', '.join(BACKBONES)}")

    def load_data(self, args: TrainArgs, seed: int) -> SegData:
        if args.init is not None:
            self.start = load(args.init)
            self.say(f"fine-tuning {args.init} ({self.start.config.name}): a new last layer")
        data = load_segment_data(
            args.data,
            args.image_size,
            val_fraction=args.val_fraction,
            seed=seed,
            mask_mode=args.mask_mode,
            skip_bad=args.skip_bad,
            scenes=args.scenes,
            announce=self.say,
            vflip=args.vflip,
            elastic=args.elastic,
            start=self.start.preprocessing if self.start is not None else None,
        )
        self.say(
            f"data: {data.source}; {len(data.train)} train, {len(data.val)} val images, "
            f"{len(data.labels)} classes, training crops {data.image_size}px"
        )
        weights = parse_class_weights(args.class_weights, data.class_counts)
        if weights is not None:
            self.say("class weights: " + ", ".join(f"{w:.3g}" for w in weights))
        return data

    def model_config(self, args: TrainArgs, data: SegData) -> SegmenterConfig:
        if self.start is not None:
            config = replace(self.start.config, num_classes=len(data.labels))
        else:
            config = default_config(args.model, len(data.labels), data.in_channels)
            if args.model == "pspnet":
                config = replace(config, backbone=args.backbone)
            config = with_backbone(config, args.backbone)
            overrides = {"width": args.width, "depth": args.depth, "blocks": args.blocks}
            config = override_config(config, overrides, args.model)
        multiple = size_multiple(config)
        if data.image_size % multiple:
            raise LbdlError(
                f"--image-size {data.image_size}: must be a multiple of {multiple} for this model"
            )
        return config

    build_model = staticmethod(build_model)

    def initialize(self, model: nn.Module, args: TrainArgs, data: SegData) -> None:
        if self.start is not None:
            start = self.start.model.state_dict()
            keep_all_but(model, start, final_layers(self.start.config), args.init or "")
        if args.pretrained:
            from lbdl_apps.core.backbones.resnet import load_pretrained

            load_pretrained(model.backbone, args.pretrained, args.backbone)  # type: ignore[arg-type]

    def datasets(self, args: TrainArgs, data: SegData, model: nn.Module) -> TrainingSets:
        train_set: Any = data.train
        if args.repeat > 1:  # a few large images: several random crops of each per epoch
            train_set = Subset(data.train, list(range(len(data.train))) * args.repeat)
        return TrainingSets(train_set, data.val, None, list_collate)

    def loss(self, args: TrainArgs, data: SegData) -> SegmentationLoss:
        return SegmentationLoss(
            parse_class_weights(args.class_weights, data.class_counts), args.dice
        )

    def evaluator(self, args: TrainArgs, data: SegData, model: nn.Module):
        num_classes, size = len(data.labels), data.image_size
        multiple = size_multiple(self.model_config(args, data))

        def evaluate(model: nn.Module, loader, device) -> dict[str, float]:
            scores, _, _ = evaluate_segmenter(model, loader, device, num_classes, size, multiple)
            return {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"]}

        return evaluate

    def metadata(self, args: TrainArgs, data: SegData) -> dict[str, Any]:
        return {"labels": data.labels, "preprocessing": data.preprocessing(), "scenes": args.scenes,
                "init": args.init}  # fmt: skip


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint (val mIoU) and return its validation scores."""
    return run_training(SegmentTask(), args, common)


@dataclass
class Evaluation:
    """The scores of `evaluate`, the IoU of each class (nan: a class that appears nowhere),
    the class names, and where they were written."""

    scores: dict[str, float]
    iou: list[float]
    labels: list[str]
    folder: Path
    split: str = "val"


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """Evaluate a checkpoint on a split (core.evaluation.split_names) of its own data or of
    --data: full-size images, sliding window (with --tta, averaged over flips); write
    metrics.json and confusion_matrix.png."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    segmenter = load(args.checkpoint, common.torch_device(), args)
    meta, given = segmenter.meta, args.data is not None
    if not given and meta.get("source"):
        raise LbdlError(
            f"{args.checkpoint}: a pretrained model of its publisher, with no data of lbdl's; "
            "give --data (for the VOC classes: VOCdevkit/VOC2012, --split val)"
        )
    source = args.data if given else meta.get("data")
    dataset = load_segment_data(
        source,
        val_fraction=0.0 if given else meta.get("val_fraction", 0.2),
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
    splits = dataset.splits()
    names = split_names(args.split, given, splits, source or "the built-in scenes")
    chosen = ConcatDataset([splits[name] for name in names])  # type: ignore[misc]
    scores, iou, confusion = evaluate_segmenter(
        segmenter.model,
        (chosen[i] for i in range(len(chosen))),
        segmenter.device,
        len(segmenter.labels),
        segmenter.tile(args.tile),
        segmenter.multiple,
        flips=args.tta,
        resize=segmenter.resize,
    )
    plot_confusion(confusion, segmenter.labels, folder / "confusion_matrix.png", show="rate",
                   title="pixels, normalised per true class")  # fmt: skip
    per_class = dict(zip(segmenter.labels, iou, strict=True))
    split = split_label(names, splits)
    summary = {"checkpoint": str(args.checkpoint), "data": source, "split": split,
               "tta": args.tta, "images": len(chosen), **scores, "iou": per_class,
               "confusion": confusion.tolist()}  # fmt: skip
    write_json(folder / "metrics.json", summary)
    return Evaluation(scores, iou, segmenter.labels, folder, split)
