"""`lbdl diffusion`: train denoising diffusion models and sample from them (book 7.2). Each
verb's options are the fields of its dataclass below."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from lbdl_apps.core import options
from lbdl_apps.core.options import Common, Options, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(
    help="Denoising diffusion (book 7.2): a U-Net trained to remove noise, sampled with DDPM "
    "or DDIM; class or text conditioning with classifier-free guidance, and CLIP guidance."
)


@dataclass(kw_only=True)
class NoisedTraining(options.TrainArgs):
    """What the two training verbs (`train`, `train-guide`) share: the data, the noise
    schedule, and no validation split (every image is trained on)."""

    batch_size: int = 64
    warmup: float = 0.5
    val_fraction: float = 0.0
    image_size: int | None = option(None, min=8)
    """Image side (default: the data's, 32 for scenes)."""
    schedule: str = "cosine"
    """Noise schedule: cosine or linear."""
    timesteps: int = option(1000, min=2)
    """Diffusion steps T."""
    builtin_count: int = option(6000, min=1)
    """Number of built-in scenes made (without --data)."""
    skip_bad: bool = False
    """Warn about bad images and train on the rest."""


@dataclass(kw_only=True)
class TrainArgs(NoisedTraining):
    """Everything `lbdl diffusion train` was asked for; saved as the run's config.json."""

    epochs: int = 20
    weight_decay: float = 0.0
    ema: float | None = 0.999
    condition: str = "auto"
    """auto, none, class or text (auto: text with --clip, else class when the data has
    classes)."""
    clip: str | None = None
    """A clip checkpoint or model name (openai:ViT-B-32): condition on its text embeddings of
    the captions (stored with the model)."""
    channels: int | None = None
    """1 (gray) or 3 (color); default: from the data."""
    width: int = 32
    """U-Net base width (multiple of 8)."""
    blocks: int = option(2, min=1)
    """Residual blocks per level."""
    prediction: str = "eps"
    """eps (the noise) or v."""
    cond_drop: float = 0.1
    """Probability of the null condition (for guidance)."""
    hflip: bool = False
    """Random horizontal flips of image files."""
    scene_label: str = "color-shape"
    """Class of a built-in scene without --clip: color, shape or color-shape."""
    fraction: float = option(1.0, min=0.0, max=1.0)
    """Train on this fraction of the images."""
    preview: int = option(16, min=0)
    """Samples drawn into samples/ after training (0: none)."""
    init: str | None = None
    """Start from this diffusion checkpoint (same model)."""


@dataclass(kw_only=True)
class GuideArgs(NoisedTraining):
    """Everything `lbdl diffusion train-guide` was asked for; saved as config.json."""

    epochs: int = 10
    lr: float = 5e-4
    weight_decay: float = 0.05
    clip: str | None = None
    """Start from this clip checkpoint's (or model name's) encoders."""
    model_size: str = "tiny"
    """tiny, small or base (without --clip)."""
    vocab_size: int = option(1000, min=32)
    """BPE vocabulary size (without --clip)."""


@dataclass(kw_only=True)
class Sampling(Options):
    """How samples are drawn, for `sample` and `evaluate`."""

    prompt: list[str] | None = None
    """Text prompt, repeatable (text models, CLIP guide)."""
    classes: list[str] | None = option(None, flags=("--class",))
    """Class name, repeatable (class models)."""
    n: int = option(16, min=1)
    """Number of samples."""
    steps: int = 50
    """Denoising steps (evenly spaced over T)."""
    sampler: str = "ddpm"
    """ddpm (ancestral, robust) or ddim (deterministic with --eta 0)."""
    guidance: float | None = None
    """Classifier-free guidance scale of a conditional model (default 3)."""
    batch_size: int = option(64, min=1)
    """Samples per batch."""


# --calibrate DATA (core's options.Quantization): images read as `train --data` reads them,
# noised over the schedule, calibrate static int8 of the U-Net; default: the model's
# training data when it is still there, else the built-in scenes (diffusion/export.py).


@dataclass(kw_only=True)
class SampleArgs(options.Inference, Sampling, options.OutputArgs):
    """The options of `lbdl diffusion sample` (and `predict`)."""

    checkpoint: str = option(argument=True)
    """A diffusion .safetensors file or a run folder."""
    eta: float = option(0.0, min=0.0)
    """DDIM noise (0: deterministic)."""
    clip_guide: Path | None = None
    """A noised CLIP from train-guide, to steer to --prompt."""
    clip_scale: float = option(100.0, min=0.0)
    """Scale of the CLIP guidance gradient."""
    out: Path | None = None
    """Output folder (default: a new runs/diffusion/sample, sample2, ... folder)."""


@dataclass(kw_only=True)
class EvaluateArgs(options.Inference, Sampling, options.EvaluateArgs):
    """The options of `lbdl diffusion evaluate`."""

    checkpoint: str = option(argument=True)
    """A diffusion .safetensors file or a run folder."""
    data: str | None = None
    """Real images (default: the model's training data, or fresh built-in scenes)."""
    split: str | None = None
    """Which real images: all, train, val or test. Default: the data's test split if it
    has one, else its val split, else all of it (the built-in scenes: fresh ones)."""
    classifier: str
    """A lbdl classify checkpoint whose features are compared."""
    n: int = 500
    n_real: int = option(2000, min=2)
    """Real images to compare with."""
    batch_size: int = 100


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train a denoiser on images, classes, captions or the built-in scenes."""
    from lbdl_apps.diffusion.task import train as run

    run(args, common)


@verb(app, "train-guide")
def train_guide(args: GuideArgs, common: Common) -> None:
    """Train a noised CLIP (noised images, the step as input) for sample --clip-guide."""
    from lbdl_apps.diffusion.task import train_guide as run

    run(args, common)


@verb(app, aliases=("predict",))
def sample(args: SampleArgs, common: Common) -> None:
    """Generate images: grid.png and one PNG per sample (the same seed gives the same images)."""
    from lbdl_apps.core.outputs import batch_folder
    from lbdl_apps.diffusion.api import load, save_samples
    from lbdl_apps.diffusion.guide import load_guide

    device = common.torch_device()
    folder = batch_folder("diffusion", "sample", args.out, args.exist_ok)
    diffuser = load(args.checkpoint, device, args)
    guide = load_guide(args.clip_guide, device) if args.clip_guide is not None else None
    samples = diffuser.sample(
        args.n,
        args.prompt,
        args.classes,
        args.steps,
        args.sampler,
        args.guidance,
        args.eta,
        common.seed,
        args.batch_size,
        guide,
        args.clip_scale,
        quiet=common.quiet,
    )
    save_samples(samples, folder)
    print(f"{args.n} samples: {folder / 'grid.png'}")


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """Fréchet distance and KID on a classifier's features; per-class accuracy of samples."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.diffusion.evaluate import evaluate as run

    result = run(args, common)
    console = Console(quiet=common.quiet)
    if result.per_class:
        table = Table("class", "classifier accuracy on samples")
        for name, acc in result.per_class.items():
            table.add_row(name, f"{acc:.3f}")
        console.print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in result.scores.items()))
    console.print(f"results: {result.folder}")


@verb(app)
def export(args: options.ExportArgs, common: Common) -> None:
    """Export the denoiser for one step to ONNX (int8 with --quantize), TorchScript or an
    ExportedProgram, checked against PyTorch, with model.json saying the schedule, the
    prediction, the conditioning inputs and the image range."""
    from lbdl_apps.core.export import Deployment, run_export
    from lbdl_apps.diffusion.api import load
    from lbdl_apps.diffusion.export import calibration_note, deployment

    def deployed(checkpoint: str) -> Deployment:
        diffuser = load(checkpoint)
        found = deployment(diffuser)
        found.description["calibration"] = calibration_note(diffuser, args)
        return found

    run_export(args, deployed)
