"""`lbdl segment`: train, evaluate and predict semantic segmentation models (book 6.4). Each
verb's options are the fields of its dataclass below."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from lbdl_apps.core import options
from lbdl_apps.core.options import Common, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(
    help="Semantic segmentation (book 6.4): U-Net, PSPNet, FCN, DeepLabV3 or LR-ASPP."
)


@dataclass(kw_only=True)
class TrainArgs(options.TrainArgs):
    """Everything `lbdl segment train` was asked for; saved as the run's config.json."""

    model: str = "unet"
    """unet, unet-res (residual, GroupNorm), pspnet, fcn, deeplabv3 or lraspp."""
    backbone: str = "resnet18"
    """PSPNet / FCN / DeepLabV3 backbone: resnet18, resnet34, resnet50 or resnet-small."""
    pretrained: str | None = None
    """Backbone ImageNet weights (PSPNet, FCN, DeepLabV3): 'DEFAULT' (the backbone's,
    imagenet:resnet18 ...), a model name or a .pth file."""
    init: str | None = None
    """Fine-tune this model (voc:deeplabv3, a segment checkpoint or a torchvision file): all
    its weights but a new last layer for the data's classes (--model, --backbone and the
    normalization are its own)."""
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    val_fraction: float = 0.2
    image_size: int | None = option(None, min=16)
    """Training crop size (default: 256 or the images' side; 64 for the built-in scenes)."""
    width: int | None = option(None, min=1)
    """U-Net base width / PSPNet head width."""
    depth: int | None = option(None, min=1)
    """U-Net levels."""
    blocks: int | None = option(None, min=1)
    """U-Net residual blocks per level."""
    mask_mode: str | None = None
    """index, binary (0/255 -> 0/1) or voc (default: detected)."""
    class_weights: str | None = None
    """'auto' (inverse frequency) or one weight per class, comma separated."""
    dice: float = option(0.0, min=0.0)
    """Weight of the soft Dice loss."""
    scenes: int = option(400, min=4)
    """Built-in scenes to make."""
    repeat: int = option(1, min=1)
    """Random crops of each training image per epoch."""
    vflip: bool = False
    """Also flip vertically (microscopy, aerial images)."""
    elastic: float = option(0.0, min=0.0)
    """Elastic deformation of about this many pixels (0: off; microscopy: 2-4)."""
    skip_bad: bool = False
    """Warn about bad image/mask pairs and train on the rest."""


@dataclass(kw_only=True)
class EvaluateArgs(options.Inference, options.EvaluateArgs):
    """The options of `lbdl segment evaluate`."""

    tile: int | None = option(None, min=8)
    """Sliding-window tile size (default: the training size)."""
    tta: bool = False
    """Average over the four flips of each image (4x slower)."""


@dataclass(kw_only=True)
class PredictArgs(options.Inference, options.PredictArgs):
    """The options of `lbdl segment predict`."""

    raw: bool = False
    """Also write the class index masks (palette PNGs)."""
    tile: int | None = option(None, min=8)
    """Sliding-window tile size (default: the training size)."""
    overlap: int | None = option(None, min=0)
    """Tile overlap in pixels (default: tile / 8)."""
    tta: bool = False
    """Average over the four flips of each image (4x slower)."""


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train a segmentation model on image + mask folders, Pascal VOC or built-in scenes."""
    from lbdl_apps.segment.task import train as run

    run(args, common)


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """mIoU, per-class IoU, pixel accuracy and a confusion matrix on full-size images."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.segment.task import evaluate as run

    result = run(args, common)
    console = Console(quiet=common.quiet)
    table = Table("class", "IoU", title=f"per class ({result.split})")
    for label, value in zip(result.labels, result.iou, strict=True):
        table.add_row(label, "-" if value != value else f"{value:.4f}")
    console.print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in result.scores.items()))
    console.print(f"results: {result.folder}")


@verb(app)
def predict(args: PredictArgs, common: Common) -> int:
    """Colorized masks and overlays of image files (<stem>_mask.png, <stem>_overlay.png)."""
    from rich.console import Console

    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import LbdlError
    from lbdl_apps.core.outputs import OutputNames, batch_folder
    from lbdl_apps.segment.api import TASK, load

    folder = batch_folder(TASK, "predict", args.out, args.exist_ok)
    segmenter = load(args.checkpoint, common.torch_device(), args, tta=args.tta)
    size = args.tile or segmenter.preprocessing["image_size"]
    if args.overlap is not None and args.overlap >= size // 2 + 1:
        raise LbdlError(f"--overlap {args.overlap}: must be below half the tile ({size})")
    paths = expand_inputs(args.inputs)
    report = BatchReport(strict=args.strict)
    console = Console(quiet=common.quiet)
    names = OutputNames()
    for result in segmenter.iter_predict(paths, report, args.tile, args.overlap):
        segmenter.save(result, folder, names(result.path), args.raw)
        shares = segmenter.shares(result.mask)[:4]
        console.print(f"{result.path}: " + ", ".join(f"{n} {s:.1%}" for n, s in shares))
        report.ok()
    return report.finish("images", folder)


@verb(app)
def export(args: options.ExportArgs, common: Common) -> None:
    """Export the segmenter to ONNX (int8 with --quantize), TorchScript or an
    ExportedProgram, checked against PyTorch, with model.json beside it."""
    from lbdl_apps.core.export import run_export
    from lbdl_apps.segment.api import load
    from lbdl_apps.segment.export import deployment

    run_export(args, lambda checkpoint: deployment(load(checkpoint)))
