"""`lbdl denoise`: train, evaluate and apply image restoration models (book 6.1)."""

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

app = typer.Typer(
    help="Image restoration (book 6.1): denoising, low light, colorization, super-resolution, "
    "JPEG artefacts; a U-Net with attention or DnCNN."
)
TASK = "denoise"
DEGRADE_HELP = (
    "Degradation, repeatable (applied in order): gaussian:25 (sigma, 0-255), gaussian:5-50 "
    "(blind), lowlight:0.2-0.5[:PHOTONS], gray, downscale:2|3|4, jpeg:10-40. Default gaussian:25."
)
TileOption = Annotated[int, typer.Option(min=16, help="Tile size for large images.")]
OverlapOption = Annotated[int, typer.Option(min=0, help="Overlap of neighbouring tiles.")]


@verb(app)
def train(
    data: DataOption = None,
    model: Annotated[str, typer.Option(help="unet (with attention) or dncnn.")] = "unet",
    epochs: EpochsOption = 10,
    batch_size: BatchSizeOption = 16,
    lr: LrOption = 1e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    degrade: Annotated[list[str] | None, typer.Option(help=DEGRADE_HELP)] = None,
    patch_size: Annotated[int, typer.Option(min=8, help="Training patch size.")] = 64,
    patches_per_epoch: Annotated[
        int | None, typer.Option(min=1, help="Patches per epoch (default 16 per image, >= 1024).")
    ] = None,
    width: Annotated[int | None, typer.Option(min=1, help="Base width (channels).")] = None,
    depth: Annotated[int | None, typer.Option(min=1, help="U-Net levels or DnCNN layers.")] = None,
    channels: Annotated[
        int | None, typer.Option(help="1 (gray) or 3 (color); default: from the data.")
    ] = None,
    loss: Annotated[str, typer.Option(help="mse or l1.")] = "mse",
    weight_decay: WeightDecayOption = 1e-4,
    warmup: WarmupOption = 0.5,
    ema: EmaOption = None,
    val_fraction: ValFractionOption = 0.1,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad images and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a restoration model on an image folder or the built-in dead leaves."""
    from lbdl_apps.denoise.train import DEFAULT_DEGRADE, TrainArgs, run_training

    if not degrade:
        degrade = list(DEFAULT_DEGRADE)
    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A denoise .safetensors file.")],
    data: DataOption = None,
    out: OutOption = None,
    degrade: Annotated[
        list[str] | None, typer.Option(help="Degradation(s) instead of the checkpoint's.")
    ] = None,
    baseline: Annotated[bool, typer.Option(help="Also measure the classical baseline.")] = True,
    tile: TileOption = 256,
    overlap: OverlapOption = 32,
    *,
    common: Common,
) -> None:
    """PSNR/SSIM on full images: degraded input, classical baseline (OpenCV NLM for noise) and
    the model, each image degraded with a fixed seed."""
    from lbdl_apps.denoise.train import run_evaluation

    result = run_evaluation(checkpoint, data, out, degrade, common, tile, overlap, baseline)
    console = Console(quiet=common.quiet)
    table = Table("method", "PSNR (dB)", "SSIM", "s / image",
                  title=f"{result.images} images")  # fmt: skip
    for method, score in result.scores.items():
        table.add_row(
            method,
            f"{score['psnr']:.2f}",
            f"{score['ssim']:.4f}",
            f"{score['seconds_per_image']:.3f}" if method != "input" else "",
        )
    console.print(table)
    print(" ".join(f"{m}_psnr {s['psnr']:.4f}" for m, s in result.scores.items()))
    console.print(f"results: {result.folder}")


@verb(app)
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A denoise .safetensors file.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: OutOption = None,
    degrade: Annotated[
        list[str] | None,
        typer.Option(help="Degrade the images first (seeded), to see the model undo it."),
    ] = None,
    compare: Annotated[bool, typer.Option(help="Also write input | output side by side.")] = False,
    tile: TileOption = 256,
    overlap: OverlapOption = 32,
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Restore image files of any size (overlapping tiles); writes NAME_restored.png."""
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import BatchReport, LbdlError
    from lbdl_apps.denoise.api import load
    from lbdl_apps.denoise.degrade import parse_specs

    if overlap >= tile // 2:
        raise LbdlError(f"--overlap {overlap}: must be below half the tile ({tile})")
    restorer = load(checkpoint, common.torch_device())
    specs = parse_specs(degrade) if degrade else None
    paths = expand_inputs(inputs)
    folder = out or Path("runs") / TASK / "predict"
    report = BatchReport(strict=strict)
    results = restorer.predict(
        paths, folder, specs, compare, tile, overlap, common.seed, report=report
    )
    console = Console(quiet=common.quiet)
    for r in results[:20]:
        console.print(f"{r.path} -> {r.output}", highlight=False)
    if len(results) > 20:
        console.print(f"... {len(results) - 20} more in {folder}")
    print(f"{report.summary('images')}; results: {folder}")
    raise typer.Exit(report.exit_code)
