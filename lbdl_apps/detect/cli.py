"""`lbdl detect`: train, evaluate, predict and export single-shot detectors (book 6.3). Each
verb's options are the fields of its dataclass below."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from lbdl_apps.core import options
from lbdl_apps.core.options import Common, Options, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(
    help="Object detection (book 6.3): SSD on a ResNet backbone, or torchvision's COCO SSDs "
    "by name (coco:ssd300, coco:ssdlite320)."
)


@dataclass(kw_only=True)
class TrainArgs(options.TrainArgs):
    """Everything `lbdl detect train` was asked for; saved as the run's config.json."""

    format: str | None = None
    """voc, yolo or coco (default: detected)."""
    backbone: str = "resnet-small"
    """resnet-small (small images), resnet18, resnet34 or resnet50."""
    pretrained: str | None = None
    """Backbone ImageNet weights: a torchvision name, 'DEFAULT' or a .pth."""
    init: str | None = None
    """Start from a detector (a name such as coco:ssd300, a checkpoint, a run folder or a
    torchvision SSD .pth): its backbone and extra layers, new heads for the data's classes."""
    freeze_epochs: int | None = option(None, min=0)
    """Epochs with the backbone frozen (default: epochs/5 with --pretrained or --init)."""
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    classes: str | None = None
    """Class names, comma separated (default: the data's)."""
    image_size: int | None = option(None, min=32)
    """Square input size (default: 64 built-in, 128 resnet-small, 300 otherwise)."""
    width: int | None = option(None, min=4)
    """Backbone base width."""
    scales: str | None = None
    """Default-box scales: 'smallest,largest' or one per map + 1 (default 0.1,0.9)."""
    aspect_ratios: str = "2"
    """Default-box aspect ratios besides 1, e.g. '2,3'."""
    iou_threshold: float = 0.5
    """IoU from which a default box is matched to an object."""
    neg_ratio: float = option(3.0, min=0.0)
    """Hard negatives per matched box in the loss."""
    zoom_out: float | None = option(None, min=1.0)
    """Largest zoom-out of the augmentation (default 4; 1.5 built-in; 1: none)."""
    augment: str | None = None
    """ssd (photometric, zoom-out, IoU crop, flip), light (photometric, flip) or none;
    default: ssd, light on the built-in scenes."""
    scenes: int = option(2000, min=8)
    """Built-in training scenes."""
    val_fraction: float = 0.2
    skip_bad: bool = False
    """Warn about bad annotations and train on the rest."""


@dataclass(kw_only=True)
class EvaluateArgs(options.Inference, options.EvaluateArgs):
    """The options of `lbdl detect evaluate`."""

    format: str | None = None
    """voc, yolo or coco (default: detected)."""
    batch_size: int = option(16, min=1)
    """Batch size."""


@dataclass(kw_only=True)
class Selection(Options):
    """Which detections are kept of the network's boxes (book 6.3): score threshold, per-class
    non-maximum suppression, the best per image."""

    conf: float = option(0.25, min=0.0, max=1.0, panel="Selection")
    """Score threshold."""
    iou: float = option(0.45, min=0.0, max=1.0, panel="Selection")
    """NMS IoU threshold."""
    max_det: int = option(100, min=1, panel="Selection")
    """Most detections per image."""


@dataclass(kw_only=True)
class PredictArgs(options.Inference, Selection, options.PredictArgs):
    """The options of `lbdl detect predict`."""

    inputs: list[str] = option(argument=True)
    """Image or video files, folders or globs."""
    classes: str | None = None
    """Only these classes (names or indices, comma separated)."""
    save_txt: bool = False
    """Also write YOLO txt labels (labels/)."""
    save_images: bool = True
    """Write images with drawn boxes."""


@dataclass(kw_only=True)
class ExportArgs(Selection, options.ExportArgs):
    """The options of `lbdl detect export` (--conf, --iou and --max-det: with --nms, the
    selection inside the graph)."""

    nms: bool = False
    """Also put the selection in the graph (--conf, per-class NMS at --iou, the best
    --max-det): outputs boxes, scores, labels padded to --max-det and their count."""


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train an SSD on VOC, COCO or YOLO data, or on built-in scenes of shapes."""
    from lbdl_apps.detect import task

    task.train(args, common)


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75, per-class AP and precision-recall curves."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.detect import task

    result = task.evaluate(args, common)
    table = Table("class", "AP@[.5:.95]", title=f"per class ({result.split})")
    for label, value in result.per_class.items():
        table.add_row(label, "-" if value is None else f"{value:.4f}")
    console = Console(quiet=common.quiet)
    console.print(table)
    print(" ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in result.scores.items()))
    console.print(f"results: {result.folder}")


@verb(app)
def predict(args: PredictArgs, common: Common) -> int:
    """Detect objects: drawn images (videos: drawn videos), predictions.json in the COCO
    results format, and with --save-txt YOLO txt files."""
    from lbdl_apps.detect.predict import run_prediction

    return run_prediction(args, common)


@verb(app)
def export(args: ExportArgs, common: Common) -> None:
    """Export the network and its box decoding (with --nms the whole selection too) to ONNX
    (int8 with --quantize), TorchScript or an ExportedProgram, checked against PyTorch, with
    model.json beside it."""
    from lbdl_apps.core.export import run_export
    from lbdl_apps.detect.api import load
    from lbdl_apps.detect.export import deployment

    nms = args if args.nms else None
    run_export(args, lambda checkpoint: deployment(load(checkpoint), nms))
