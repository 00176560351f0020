"""`lbdl denoise`: train, evaluate and apply image restoration models (book 6.1). Each verb's
options are the fields of its dataclass below."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from lbdl_apps.core import options
from lbdl_apps.core.options import Common, Options, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(
    help="Image restoration (book 6.1): denoising, low light, colorization, super-resolution, "
    "JPEG artefacts; a U-Net with attention or DnCNN."
)
DEFAULT_DEGRADE = ("gaussian:25",)


@dataclass(kw_only=True)
class TrainArgs(options.TrainArgs):
    """Everything `lbdl denoise train` was asked for; saved as the run's config.json."""

    model: str = "unet"
    """unet (with attention) or dncnn."""
    batch_size: int = 16
    warmup: float = 0.5
    degrade: list[str] = option(factory=lambda: list(DEFAULT_DEGRADE))
    """Degradation, repeatable (applied in order): gaussian:25 (sigma, 0-255), gaussian:5-50
    (blind), lowlight:0.2-0.5[:PHOTONS], gray, downscale:2|3|4, jpeg:10-40. Default gaussian:25."""
    patch_size: int = option(64, min=8)
    """Training patch size."""
    patches_per_epoch: int | None = option(None, min=1)
    """Patches per epoch (default 16 per image, >= 1024)."""
    width: int | None = option(None, min=1)
    """Base width (channels)."""
    depth: int | None = option(None, min=1)
    """U-Net levels or DnCNN layers."""
    channels: int | None = None
    """1 (gray) or 3 (color); default: from the data."""
    loss: str = "mse"
    """mse or l1."""
    skip_bad: bool = False
    """Warn about bad images and train on the rest."""


@dataclass(kw_only=True)
class Tiles(Options):
    """How images of any size go through the model: overlapping, blended tiles."""

    tile: int = option(256, min=16)
    """Tile size for large images."""
    overlap: int = option(32, min=0)
    """Overlap of neighbouring tiles."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlap >= self.tile // 2:
            from lbdl_apps.core.errors import LbdlError

            raise LbdlError(f"--overlap {self.overlap}: must be below half the tile ({self.tile})")


@dataclass(kw_only=True)
class EvaluateArgs(Tiles, options.Inference, options.EvaluateArgs):
    """The options of `lbdl denoise evaluate`."""

    degrade: list[str] | None = None
    """Degradation(s) instead of the checkpoint's."""
    baseline: bool = True
    """Also measure the classical baseline."""


@dataclass(kw_only=True)
class PredictArgs(Tiles, options.Inference, options.PredictArgs):
    """The options of `lbdl denoise predict`."""

    degrade: list[str] | None = None
    """Degrade the images first (seeded), to see the model undo it."""
    compare: bool = False
    """Also write input | output side by side."""


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train a restoration model on an image folder or the built-in dead leaves."""
    from lbdl_apps.denoise.task import train as run

    run(args, common)


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """PSNR/SSIM on full images: degraded input, classical baseline (OpenCV NLM for noise) and
    the model, each image degraded with a fixed seed."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.denoise.task import evaluate as run

    result = run(args, common)
    console = Console(quiet=common.quiet)
    table = Table("method", "PSNR (dB)", "SSIM", "s / image",
                  title=f"{result.images} images ({result.split})")  # fmt: skip
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
def predict(args: PredictArgs, common: Common) -> int:
    """Restore image files of any size (overlapping tiles); writes NAME_restored.png."""
    from rich.console import Console

    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.outputs import batch_folder
    from lbdl_apps.denoise.api import TASK, load
    from lbdl_apps.denoise.degrade import parse_specs

    folder = batch_folder(TASK, "predict", args.out, args.exist_ok)
    restorer = load(args.checkpoint, common.torch_device(), args)
    specs = parse_specs(args.degrade) if args.degrade else None
    paths = expand_inputs(args.inputs)
    report = BatchReport(strict=args.strict)
    results = restorer.predict(
        paths, folder, specs, args.compare, args.tile, args.overlap, common.seed, report=report
    )
    console = Console(quiet=common.quiet)
    for r in results[:20]:
        console.print(f"{r.path} -> {r.output}", highlight=False)
    if len(results) > 20:
        console.print(f"... {len(results) - 20} more in {folder}")
    return report.finish("images", folder)


@verb(app)
def export(args: options.ExportArgs, common: Common) -> None:
    """Export the network to ONNX (int8 with --quantize), TorchScript or an ExportedProgram,
    checked against PyTorch, with model.json beside it."""
    from lbdl_apps.core.export import run_export
    from lbdl_apps.denoise.api import load
    from lbdl_apps.denoise.export import deployment

    run_export(args, lambda checkpoint: deployment(load(checkpoint)))
