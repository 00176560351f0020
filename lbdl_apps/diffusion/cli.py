"""`lbdl diffusion`: train denoising diffusion models and sample from them (book 7.2)."""

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
    EpochsOption,
    ExistOkOption,
    LrOption,
    NameOption,
    OutOption,
    PatienceOption,
    ResumeOption,
    RunDirOption,
    SavePeriodOption,
    WarmupOption,
    WeightDecayOption,
    WorkersOption,
    from_options,
    verb,
)

app = typer.Typer(
    help="Denoising diffusion (book 7.2): a U-Net trained to remove noise, sampled with DDPM "
    "or DDIM; class or text conditioning with classifier-free guidance, and CLIP guidance."
)
TASK = "diffusion"

StepsOption = Annotated[int, typer.Option(help="Denoising steps (evenly spaced over T).")]
SamplerOption = Annotated[
    str, typer.Option(help="ddpm (ancestral, robust) or ddim (deterministic with --eta 0).")
]
GuidanceOption = Annotated[
    float | None,
    typer.Option(help="Classifier-free guidance scale of a conditional model (default 3)."),
]
ClassOption = Annotated[
    list[str] | None, typer.Option("--class", help="Class name, repeatable (class models).")
]
ScheduleOption = Annotated[str, typer.Option(help="Noise schedule: cosine or linear.")]
TimestepsOption = Annotated[int, typer.Option(min=2, help="Diffusion steps T.")]
ImageSizeOption = Annotated[
    int | None, typer.Option(min=8, help="Image side (default: the data's, 32 for scenes).")
]
BuiltinOption = Annotated[
    int, typer.Option(min=1, help="Number of built-in scenes made (without --data).")
]


@verb(app)
def train(
    data: DataOption = None,
    epochs: EpochsOption = 20,
    batch_size: BatchSizeOption = 64,
    lr: LrOption = 1e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    condition: Annotated[
        str,
        typer.Option(
            help="auto, none, class or text (auto: text with --clip, else class "
            "when the data has classes)."
        ),
    ] = "auto",
    clip: Annotated[
        str | None,
        typer.Option(
            help="A lbdl clip checkpoint: condition on its text embeddings of the "
            "captions (stored with the model)."
        ),
    ] = None,
    image_size: ImageSizeOption = None,
    channels: Annotated[
        int | None, typer.Option(help="1 (gray) or 3 (color); default: from the data.")
    ] = None,
    width: Annotated[int, typer.Option(help="U-Net base width (multiple of 8).")] = 32,
    blocks: Annotated[int, typer.Option(min=1, help="Residual blocks per level.")] = 2,
    schedule: ScheduleOption = "cosine",
    timesteps: TimestepsOption = 1000,
    prediction: Annotated[str, typer.Option(help="eps (the noise) or v.")] = "eps",
    cond_drop: Annotated[
        float, typer.Option(help="Probability of the null condition (for guidance).")
    ] = 0.1,
    hflip: Annotated[bool, typer.Option(help="Random horizontal flips of image files.")] = False,
    scene_label: Annotated[
        str,
        typer.Option(help="Class of a built-in scene without --clip: color, shape or color-shape."),
    ] = "color-shape",
    builtin_count: BuiltinOption = 6000,
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Train on this fraction of the images.")
    ] = 1.0,
    preview: Annotated[
        int, typer.Option(min=0, help="Samples drawn into samples/ after training (0: none).")
    ] = 16,
    init: Annotated[
        str | None, typer.Option(help="Start from this diffusion checkpoint (same model).")
    ] = None,
    ema: Annotated[float | None, typer.Option(help="EMA decay of the weights.")] = 0.999,
    warmup: WarmupOption = 0.5,
    weight_decay: WeightDecayOption = 0.0,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad images and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a denoiser on images, classes, captions or the built-in scenes."""
    from lbdl_apps.diffusion.train import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def sample(
    checkpoint: Annotated[Path, typer.Argument(help="A diffusion .safetensors file.")],
    prompt: Annotated[
        list[str] | None, typer.Option(help="Text prompt, repeatable (text models, CLIP guide).")
    ] = None,
    class_: ClassOption = None,
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 16,
    steps: StepsOption = 50,
    sampler: SamplerOption = "ddpm",
    guidance: GuidanceOption = None,
    eta: Annotated[float, typer.Option(min=0.0, help="DDIM noise (0: deterministic).")] = 0.0,
    batch_size: BatchSizeOption = 64,
    clip_guide: Annotated[
        Path | None, typer.Option(help="A noised CLIP from train-guide, to steer to --prompt.")
    ] = None,
    clip_scale: Annotated[
        float, typer.Option(min=0.0, help="Scale of the CLIP guidance gradient.")
    ] = 100.0,
    out: OutOption = None,
    *,
    common: Common,
) -> None:
    """Generate images: grid.png and one PNG per sample (the same seed gives the same images)."""
    from lbdl_apps.diffusion.api import load, save_samples
    from lbdl_apps.diffusion.guide import load_guide

    diffuser = load(checkpoint, common.torch_device())
    guide = load_guide(clip_guide, common.torch_device()) if clip_guide is not None else None
    samples = diffuser.sample(
        n,
        prompt,
        class_,
        steps,
        sampler,
        guidance,
        eta,
        common.seed,
        batch_size,
        guide,
        clip_scale,
        quiet=common.quiet,
    )
    folder = out or Path("runs") / TASK / "sample"
    save_samples(samples, folder)
    print(f"{n} samples: {folder / 'grid.png'}")


verb(app, name="predict", help="The same as sample (the verb name every app has).")(sample)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A diffusion .safetensors file.")],
    classifier: Annotated[
        Path, typer.Option(help="A lbdl classify checkpoint whose features are compared.")
    ],
    data: Annotated[
        str | None, typer.Option(help="Real images (default: the model's training data).")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Samples to generate.")] = 500,
    n_real: Annotated[int, typer.Option(help="Real images to compare with.")] = 2000,
    class_: ClassOption = None,
    prompt: Annotated[list[str] | None, typer.Option(help="Prompts (text models).")] = None,
    steps: StepsOption = 50,
    sampler: SamplerOption = "ddpm",
    guidance: GuidanceOption = None,
    batch_size: BatchSizeOption = 100,
    out: OutOption = None,
    *,
    common: Common,
) -> None:
    """Fréchet distance and KID on a classifier's features; per-class accuracy of samples."""
    from lbdl_apps.diffusion.evaluate import run_evaluation

    result = run_evaluation(
        checkpoint,
        classifier,
        data,
        out,
        common,
        n,
        n_real,
        class_,
        prompt,
        steps,
        sampler,
        guidance,
        batch_size,
    )
    console = Console(quiet=common.quiet)
    if result.per_class:
        table = Table("class", "classifier accuracy on samples")
        for name, acc in result.per_class.items():
            table.add_row(name, f"{acc:.3f}")
        console.print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in result.scores.items()))
    console.print(f"results: {result.folder}")


@verb(app, name="train-guide")
def train_guide(
    data: DataOption = None,
    clip: Annotated[
        str | None, typer.Option(help="Start from this lbdl clip checkpoint's encoders.")
    ] = None,
    model_size: Annotated[str, typer.Option(help="tiny, small or base (without --clip).")] = "tiny",
    epochs: EpochsOption = 10,
    batch_size: BatchSizeOption = 64,
    lr: LrOption = 5e-4,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    image_size: ImageSizeOption = None,
    schedule: ScheduleOption = "cosine",
    timesteps: TimestepsOption = 1000,
    builtin_count: BuiltinOption = 6000,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad images and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a noised CLIP (noised images, the step as input) for sample --clip-guide."""
    from lbdl_apps.diffusion.guide import GuideArgs, run_train_guide

    args = from_options(GuideArgs, locals())
    run_train_guide(args, common)
