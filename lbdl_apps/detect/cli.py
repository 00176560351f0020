"""`lbdl detect`: train, evaluate, predict and export single-shot detectors (book 6.3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lbdl_apps.core.cli_common import (
    AmpOption,
    BatchSizeOption,
    Common,
    CompileOption,
    ConfigOption,
    DataOption,
    EmaOption,
    EpochsOption,
    ExistOkOption,
    LrOption,
    NameOption,
    OutOption,
    PatienceOption,
    ResumeOption,
    RunDirOption,
    SavePeriodOption,
    StrictOption,
    ValFractionOption,
    WarmupOption,
    WeightDecayOption,
    WorkersOption,
    from_options,
    verb,
)

app = typer.Typer(help="Object detection (book 6.3): SSD on a ResNet backbone.")
TASK = "detect"
FormatOption = Annotated[
    str | None, typer.Option("--format", help="voc, coco or yolo (default: detected).")
]


@verb(app)
def train(
    data: DataOption = None,
    format: FormatOption = None,
    backbone: Annotated[
        str, typer.Option(help="resnet-small (small images), resnet18, resnet34 or resnet50.")
    ] = "resnet-small",
    pretrained: Annotated[
        str | None,
        typer.Option(help="Backbone ImageNet weights: a torchvision name, 'DEFAULT' or a .pth."),
    ] = None,
    freeze_epochs: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Epochs with the backbone frozen (default: epochs/5 with --pretrained, else 0).",
        ),
    ] = None,
    epochs: EpochsOption = 30,
    batch_size: BatchSizeOption = 32,
    lr: LrOption = 2e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names, comma separated (default: the data's).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            min=32,
            help="Square input size (default: 64 built-in, 128 resnet-small, 300 otherwise).",
        ),
    ] = None,
    width: Annotated[int | None, typer.Option(min=4, help="Backbone base width.")] = None,
    scales: Annotated[
        str | None,
        typer.Option(
            help="Default-box scales: 'smallest,largest' or one per map + 1 (default 0.1,0.9)."
        ),
    ] = None,
    aspect_ratios: Annotated[
        str, typer.Option(help="Default-box aspect ratios besides 1, e.g. '2,3'.")
    ] = "2",
    iou_threshold: Annotated[
        float, typer.Option(help="IoU from which a default box is matched to an object.")
    ] = 0.5,
    neg_ratio: Annotated[
        float, typer.Option(min=0.0, help="Hard negatives per matched box in the loss.")
    ] = 3.0,
    zoom_out: Annotated[
        float | None,
        typer.Option(help="Largest zoom-out of the augmentation (default 4; 1.5 built-in)."),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help="ssd (photometric, zoom-out, IoU crop, flip), light (photometric, "
            "flip) or none; default: ssd, light on the built-in scenes."
        ),
    ] = None,
    scenes: Annotated[int, typer.Option(min=8, help="Built-in training scenes.")] = 2000,
    weight_decay: WeightDecayOption = 1e-4,
    warmup: WarmupOption = 1.0,
    ema: EmaOption = None,
    val_fraction: ValFractionOption = 0.2,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad annotations and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train an SSD on VOC, COCO or YOLO data, or on built-in scenes of shapes."""
    from lbdl_apps.detect.train import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A detect .safetensors file or run folder.")],
    data: DataOption = None,
    format: FormatOption = None,
    out: OutOption = None,
    split: Annotated[str, typer.Option(help="val (held-out part) or all of the data.")] = "val",
    batch_size: BatchSizeOption = 16,
    *,
    common: Common,
) -> None:
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75, per-class AP and precision-recall curves."""
    from lbdl_apps.detect.train import run_evaluation

    scores, per_class, folder = run_evaluation(
        checkpoint, data, format, out, split, common, batch_size
    )
    console = Console(quiet=common.quiet)
    table = Table("class", "AP@[.5:.95]", title="per class")
    for label, value in per_class.items():
        table.add_row(label, "-" if value is None else f"{value:.4f}")
    console.print(table)
    print(" ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in scores.items()))
    console.print(f"results: {folder}")


@verb(app)
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A detect .safetensors file or run folder.")],
    inputs: Annotated[list[str], typer.Argument(help="Image or video files, folders or globs.")],
    out: OutOption = None,
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score threshold.")] = 0.25,
    iou: Annotated[float, typer.Option(min=0.0, max=1.0, help="NMS IoU threshold.")] = 0.45,
    max_det: Annotated[int, typer.Option(min=1, help="Most detections per image.")] = 100,
    classes: Annotated[
        str | None, typer.Option(help="Only these classes (names or indices, comma separated).")
    ] = None,
    save_txt: Annotated[bool, typer.Option(help="Also write YOLO txt labels (labels/).")] = False,
    save_images: Annotated[bool, typer.Option(help="Write images with drawn boxes.")] = True,
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Detect objects: drawn images (videos: drawn videos), predictions.json in the COCO
    results format, and with --save-txt YOLO txt files."""
    from lbdl_apps.detect.predict import run_prediction

    names = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    code = run_prediction(
        checkpoint, inputs, out, conf, iou, max_det, names, save_txt, save_images, strict, common
    )
    raise typer.Exit(code)


@verb(app)
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A detect .safetensors file or run folder.")],
    out: OutOption = None,
    format: Annotated[
        list[str], typer.Option("--format", help="torchscript and/or onnx (repeat the option).")
    ] = ["torchscript"],  # noqa: B006 - typer needs a literal default
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the example input.")] = 1,
    *,
    common: Common,
) -> None:
    """Export the network and box decoding (TorchScript, or ONNX with the onnx package);
    thresholding and NMS stay outside the graph, as the .json beside the file says."""
    from lbdl_apps.detect.api import load
    from lbdl_apps.detect.export import export as write

    detector = load(checkpoint, "cpu")
    run = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).resolve().parent
    folder = out or run / "export"
    for path in write(detector, folder, format, batch):
        print(f"wrote {path} and {path.with_suffix('.json').name}")
    print(json.dumps(detector.labels))
