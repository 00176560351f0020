"""`lbdl detect` as a task of core's run (book 6.3): its data, SSD, loss, mAP evaluation and
the frozen-backbone phase of fine-tuning for `train`, and `evaluate` on a split of any data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.core.run import Phase, SupervisedTask, TrainingSets, run_training
from lbdl_apps.core.train_state import Monitor
from lbdl_apps.detect.api import TASK, load
from lbdl_apps.detect.cli import EvaluateArgs, TrainArgs
from lbdl_apps.detect.data import (
    AUGMENTS,
    SCENE_SIZE,
    DetectData,
    Preprocessing,
    eval_collate,
    load_detect_data,
    parse_classes,
)
from lbdl_apps.detect.loss import SSDLoss
from lbdl_apps.detect.metrics import evaluate_detector, per_class_ap, plot_pr_curves, summary
from lbdl_apps.detect.model import (
    BACKBONES,
    PRETRAINABLE,
    SSDConfig,
    build_model,
    default_config,
)


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


def frozen_epochs(args: TrainArgs) -> int:
    """Epochs of the first fine-tuning phase: a fifth of them with --pretrained or --init
    (none for a one-epoch run), else none."""
    if args.freeze_epochs is not None:
        return args.freeze_epochs
    fine_tuning = args.pretrained or args.init
    return min(max(1, args.epochs // 5), args.epochs - 1) if fine_tuning else 0


@dataclass
class Start:
    """What --init gives a new run: the detector's config, weights and preprocessing."""

    name: str
    config: SSDConfig
    weights: dict[str, torch.Tensor]
    preprocessing: Preprocessing


ARCHITECTURE = ("image_size", "width", "scales")  # options --init decides (with --backbone)


def read_start(args: TrainArgs) -> Start:
    """The detector --init names (any CHECKPOINT: a name, a file, a run folder, a
    torchvision SSD state dict), read through core's checkpoint resolution."""
    from lbdl_apps.core.checkpoint import config_from_dict, read_any

    assert args.init is not None
    path, weights, meta = read_any(args.init, TASK)
    if not isinstance(meta.get("config"), dict):
        raise LbdlError(f"{path}: incomplete detect metadata (no model config)")
    config = config_from_dict(SSDConfig, meta["config"], path)
    return Start(args.init, config, weights, Preprocessing.of(meta, config.image_size))


class DetectTask(SupervisedTask[TrainArgs, DetectData]):
    """The SSD loss on annotated images; the best epoch has the best validation
    mAP@[.5:.95]. Fine-tuning a pretrained backbone starts with it frozen (in frozen/)."""

    name = TASK
    monitor = Monitor("val_map", "max")
    start: Start | None = None  # what --init gives (read by load_data)

    def check(self, args: TrainArgs) -> None:
        if args.backbone not in BACKBONES:
            raise LbdlError(f"--backbone {args.backbone}: choose one of {', '.join(BACKBONES)}")
        if args.pretrained and args.backbone not in PRETRAINABLE:
            raise LbdlError(
                f"--pretrained: only the {', '.join(PRETRAINABLE)} backbones have ImageNet weights"
            )
        if args.init is not None:
            self._check_init(args)
        if args.freeze_epochs is not None and args.freeze_epochs >= args.epochs:
            raise LbdlError(f"--freeze-epochs {args.freeze_epochs}: must be below --epochs")
        if not 0 < args.iou_threshold < 1:
            raise LbdlError(f"--iou-threshold {args.iou_threshold}: must be in (0, 1)")
        if args.augment is not None and args.augment not in AUGMENTS:
            raise LbdlError(f"--augment {args.augment}: choose one of {', '.join(AUGMENTS)}")
        _floats(args.aspect_ratios, "aspect-ratios")
        if any(v > 1 for v in _floats(args.scales, "scales") or []):
            raise LbdlError(
                f"--scales {args.scales}: scales are fractions of the image side (<= 1)"
            )

    def _check_init(self, args: TrainArgs) -> None:
        given = [f"--{name.replace('_', '-')}" for name in ARCHITECTURE if getattr(args, name)]
        if args.backbone != TrainArgs.backbone:
            given.insert(0, "--backbone")
        if args.aspect_ratios != TrainArgs.aspect_ratios:
            given.append("--aspect-ratios")
        if args.pretrained:
            given.append("--pretrained")
        if given:
            raise LbdlError(
                f"--init {args.init}: keeps that detector's architecture and weights; "
                f"drop {', '.join(given)}"
            )

    def size(self, args: TrainArgs) -> int:
        """The input side: --init's, or `input_size`."""
        return self.start.config.image_size if self.start else input_size(args)

    def preprocessing(self, args: TrainArgs) -> Preprocessing:
        return self.start.preprocessing if self.start else Preprocessing(self.size(args))

    def load_data(self, args: TrainArgs, seed: int) -> DetectData:
        self.start = read_start(args) if args.init is not None else None
        data = load_detect_data(
            args.data,
            args.format,
            args.val_fraction,
            seed,
            args.skip_bad,
            args.scenes,
            parse_classes(args.classes),
            scene_size=self.size(args),
        )
        self.say(
            f"data: {data.source}; {data.train_count} train, {data.val_count} val images, "
            f"{len(data.labels)} classes; input {self.size(args)}px"
        )
        return data

    def model_config(self, args: TrainArgs, data: DetectData) -> SSDConfig:
        if self.start is not None:  # its layout, new heads: the data's classes, no folding
            return replace(self.start.config, num_classes=len(data.labels), head_labels=None)
        config = default_config(len(data.labels), args.backbone, input_size(args))
        if args.width is not None:
            config = replace(config, width=args.width)
        return replace(
            config,
            scales=_floats(args.scales, "scales"),
            aspect_ratios=_floats(args.aspect_ratios, "aspect-ratios"),
        )

    build_model = staticmethod(build_model)

    def initialize(self, model: nn.Module, args: TrainArgs, data: DetectData) -> None:
        if self.start is not None:
            kept = {k: v for k, v in self.start.weights.items()
                    if k.startswith(("backbone.", "extras."))}  # fmt: skip
            missing, unexpected = model.load_state_dict(kept, strict=False)
            wrong = unexpected + [k for k in missing if not k.startswith(("loc_", "cls_"))]
            if wrong:
                raise LbdlError(f"--init {args.init}: weights do not fit ({', '.join(wrong[:3])})")
            self.say(
                f"init: backbone and extra layers of {args.init}; new heads for "
                f"{len(data.labels)} classes"
            )
        if args.pretrained:
            from lbdl_apps.core.backbones.resnet import load_pretrained

            load_pretrained(model.backbone, args.pretrained, args.backbone)  # type: ignore[arg-type]

    def datasets(self, args: TrainArgs, data: DetectData, model: nn.Module) -> TrainingSets:
        backbone = self.start.config.backbone if self.start else args.backbone
        self.say(
            f"SSD on {backbone}: maps {model.feature_sizes}, {len(model.priors)} default "
            f"boxes, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
        )
        zoom = args.zoom_out or (1.5 if args.data is None else 4.0)
        augment = args.augment or ("light" if args.data is None else "ssd")
        size, pre = self.size(args), self.preprocessing(args)
        train_set = data.train_set(size, model.priors, zoom, args.iou_threshold, augment, pre)
        val_set = data.val_set(size, pre) if data.val_count else None
        return TrainingSets(train_set, val_set, None, eval_collate)

    def loss(self, args: TrainArgs, data: DetectData):
        return SSDLoss(args.neg_ratio)

    def evaluator(self, args: TrainArgs, data: DetectData, model: nn.Module):
        def evaluate(model: nn.Module, loader: DataLoader, device: torch.device):
            scores = summary(evaluate_detector(model, loader, device))
            return {k: v or 0.0 for k, v in scores.items()}  # no object to find: an mAP of 0

        return evaluate

    def metadata(self, args: TrainArgs, data: DetectData) -> dict[str, Any]:
        return {
            "labels": data.labels,
            "preprocessing": self.preprocessing(args).to_meta(),
            "format": data.format,
            "scenes": args.scenes,
            "init": args.init,
        }

    def phases(self, args: TrainArgs, model: nn.Module) -> list[Phase]:
        """Fine-tuning (book 6.3): `frozen_epochs` with the backbone (and, from --init, the
        extra layers) frozen, in frozen/, then the whole model in the run folder (the part
        --resume continues)."""
        frozen = frozen_epochs(args)
        if not frozen:
            return [Phase(args)]
        rest = args.epochs - frozen
        extras = args.init is not None

        def freeze(model: nn.Module) -> None:
            what = "backbone and extra layers" if extras else "backbone"
            self.say(f"phase 1: {what} frozen for {frozen} epochs (in frozen/)")
            model.freeze_backbone(True, extras)

        def unfreeze(model: nn.Module) -> None:
            self.say(f"phase 2: whole model, {rest} epochs")
            model.freeze_backbone(False)

        return [
            Phase(replace(args, epochs=frozen, patience=None), "frozen", freeze),
            Phase(replace(args, epochs=rest), "", unfreeze),
        ]


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train (after a frozen-backbone phase when fine-tuning), keep the best checkpoint by
    validation mAP@[.5:.95] and return its validation scores."""
    return run_training(DetectTask(), args, common)


@dataclass
class Evaluation:
    """The scores of `evaluate` (None where there was nothing to score), per class too, and
    where they were written."""

    scores: dict[str, float | None]
    per_class: dict[str, float | None]
    folder: Path
    split: str  # as metrics.json records it: one split's name, or "all"


def _evaluation_data(args: EvaluateArgs, meta: dict[str, Any], labels: list[str]) -> DetectData:
    """--data whole (no held-out part), or the checkpoint's own data split as in training."""
    given = args.data is not None
    if not given and meta.get("publisher"):
        raise LbdlError(
            f"{args.checkpoint}: {meta['publisher']} holds no data of its own; give --data "
            "(e.g. COCO val2017: a folder with annotations/instances_val2017.json and images/)"
        )
    source = args.data if given else meta.get("data")
    fmt = args.format if given else (meta.get("format") if source is not None else None)
    data = load_detect_data(
        source,
        fmt,
        0.0 if given else meta.get("val_fraction", 0.2),
        meta.get("seed", 0),
        scenes=meta.get("scenes", 2000),
        classes=labels if source is not None else None,
        scene_size=meta["config"].image_size,
    )
    if data.labels != labels:
        raise LbdlError(
            f"{source}: its classes {data.labels[:5]} differ from the checkpoint's {labels[:5]}"
        )
    return data


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP of a checkpoint on a split
    (core.evaluation.split_names) of its own data or of --data; writes metrics.json and
    pr_curve.png."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    detector = load(args.checkpoint, common.torch_device(), args)
    data = _evaluation_data(args, detector.meta, detector.labels)
    source = args.data if args.data is not None else detector.meta.get("data")
    described = source or "the built-in scenes"
    names = split_names(args.split, args.data is not None, data.splits(), described)
    pre = detector.preprocessing
    chosen = ConcatDataset([data.eval_set(detector.image_size, name, pre) for name in names])
    loader = DataLoader(chosen, batch_size=args.batch_size, collate_fn=eval_collate)
    result = evaluate_detector(
        detector.network, loader, detector.device, True, detector.postprocessing
    )
    scores = summary(result)
    per_class = per_class_ap(result, detector.labels)
    plot_pr_curves(result, detector.labels, folder / "pr_curve.png")
    split = split_label(names, data.splits())
    summary_json = {"checkpoint": str(args.checkpoint), "data": source, "split": split,
                    "images": len(chosen), **scores, "mar_100": float(result["mar_100"]),
                    "ap_per_class": per_class}  # fmt: skip
    write_json(folder / "metrics.json", summary_json)
    return Evaluation(scores, per_class, folder, split)
