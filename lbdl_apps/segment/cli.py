"""`lbdl segment`: train, evaluate and predict semantic segmentation models (book 6.4)."""

from __future__ import annotations

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

app = typer.Typer(help="Semantic segmentation (book 6.4): U-Net or PSPNet.")
TASK = "segment"
TileOption = Annotated[
    int | None,
    typer.Option(min=8, help="Sliding-window tile size (default: the training size)."),
]
TtaOption = Annotated[
    bool, typer.Option(help="Average over the four flips of each image (4x slower).")
]


@verb(app)
def train(
    data: DataOption = None,
    model: Annotated[
        str, typer.Option(help="unet, unet-res (residual, GroupNorm) or pspnet.")
    ] = "unet",
    backbone: Annotated[
        str, typer.Option(help="PSPNet backbone: resnet18, resnet34, resnet50 or resnet-small.")
    ] = "resnet18",
    pretrained: Annotated[
        str | None,
        typer.Option(help="PSPNet backbone ImageNet weights: 'DEFAULT' (download) or a .pth."),
    ] = None,
    epochs: EpochsOption = 20,
    batch_size: BatchSizeOption = 8,
    lr: LrOption = 2e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            min=16,
            help="Training crop size (default: 256 or the images' side; 64 "
            "for the built-in scenes).",
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="U-Net base width / PSPNet head width.")
    ] = None,
    depth: Annotated[int | None, typer.Option(min=1, help="U-Net levels.")] = None,
    blocks: Annotated[
        int | None, typer.Option(min=1, help="U-Net residual blocks per level.")
    ] = None,
    mask_mode: Annotated[
        str | None,
        typer.Option(help="index, binary (0/255 -> 0/1) or voc (default: detected)."),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option(help="'auto' (inverse frequency) or one weight per class, comma separated."),
    ] = None,
    dice: Annotated[float, typer.Option(min=0.0, help="Weight of the soft Dice loss.")] = 0.0,
    scenes: Annotated[int, typer.Option(min=4, help="Built-in scenes to make.")] = 400,
    repeat: Annotated[
        int, typer.Option(min=1, help="Random crops of each training image per epoch.")
    ] = 1,
    vflip: Annotated[
        bool, typer.Option(help="Also flip vertically (microscopy, aerial images).")
    ] = False,
    elastic: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Elastic deformation of about this many pixels (0: off; microscopy: 2-4).",
        ),
    ] = 0.0,
    weight_decay: WeightDecayOption = 1e-4,
    warmup: WarmupOption = 1.0,
    ema: EmaOption = None,
    val_fraction: ValFractionOption = 0.2,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad image/mask pairs and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a segmentation model on image + mask folders, Pascal VOC or built-in scenes."""
    from lbdl_apps.segment.train import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A segment .safetensors file.")],
    data: DataOption = None,
    out: OutOption = None,
    split: Annotated[str, typer.Option(help="val (held-out part) or all of the data.")] = "val",
    tile: TileOption = None,
    tta: TtaOption = False,
    *,
    common: Common,
) -> None:
    """mIoU, per-class IoU, pixel accuracy and a confusion matrix on full-size images."""
    from lbdl_apps.segment.train import run_evaluation

    scores, iou, labels, folder = run_evaluation(checkpoint, data, out, split, common, tile, tta)
    console = Console(quiet=common.quiet)
    table = Table("class", "IoU", title="per class")
    for label, value in zip(labels, iou, strict=True):
        table.add_row(label, "-" if value != value else f"{value:.4f}")
    console.print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    console.print(f"results: {folder}")


@verb(app)
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A segment .safetensors file.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: OutOption = None,
    raw: Annotated[
        bool, typer.Option(help="Also write the class index masks (palette PNGs).")
    ] = False,
    tile: TileOption = None,
    overlap: Annotated[
        int | None, typer.Option(min=0, help="Tile overlap in pixels (default: tile / 8).")
    ] = None,
    tta: TtaOption = False,
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Colorized masks and overlays of image files (<stem>_mask.png, <stem>_overlay.png)."""
    from lbdl_apps.core.data import expand_inputs, save_image
    from lbdl_apps.core.errors import BatchReport, LbdlError
    from lbdl_apps.segment.api import colorize, index_png, load
    from lbdl_apps.segment.api import overlay as draw_overlay

    segmenter = load(checkpoint, common.torch_device(), tta)
    size = tile or segmenter.preprocessing["image_size"]
    if overlap is not None and overlap >= size // 2 + 1:
        raise LbdlError(f"--overlap {overlap}: must be below half the tile ({size})")
    paths = expand_inputs(inputs)
    report = BatchReport(strict=strict)
    folder = out or Path("runs") / TASK / "predict"
    folder.mkdir(parents=True, exist_ok=True)
    console = Console(quiet=common.quiet)
    used: set[str] = set()
    for result in segmenter.iter_predict(paths, report, tile, overlap):
        stem = Path(result.path).stem
        while stem in used:  # same name in two folders
            stem += "_"
        used.add(stem)
        save_image(colorize(result.mask, segmenter.palette), folder / f"{stem}_mask.png")
        save_image(
            draw_overlay(result.image, result.mask, segmenter.palette),
            folder / f"{stem}_overlay.png",
        )
        if raw:
            save_image(index_png(result.mask, segmenter.palette), folder / f"{stem}_raw.png")
        counts = result.mask.ravel()
        shares = [(segmenter.labels[c], (counts == c).mean()) for c in set(counts.tolist())]
        shares.sort(key=lambda item: -item[1])
        console.print(f"{result.path}: " + ", ".join(f"{n} {s:.1%}" for n, s in shares[:4]))
        report.ok()
    print(f"{report.summary('images')}; results: {folder}")
    raise typer.Exit(report.exit_code)
