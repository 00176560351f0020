"""The diffusion step of `lbdl tour`: train a class-conditional denoiser on the built-in scenes
(a class per color), then sample each class with DDPM and classifier-free guidance."""

from __future__ import annotations

from pathlib import Path

from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in
from lbdl_apps.diffusion.api import load, save_samples
from lbdl_apps.diffusion.cli import TrainArgs
from lbdl_apps.diffusion.task import train


@register_tour_step("diffusion", "Denoising diffusion (book 7.2)")
def diffusion_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    names = ("image_size", "width", "timesteps", "builtin_count", "epochs", "batch_size", "lr")
    sizes = (8, 8, 100, 128, 1, 32, 3e-3) if quick else (16, 32, 1000, 4000, 10, 64, 2e-3)
    size = dict(zip(names, sizes, strict=True))
    args = TrainArgs(blocks=1, warmup=0.2, scene_label="color", preview=0, **size)
    checkpoint, last = train_in(workdir, train, args, common)
    diffuser = load(checkpoint)
    per_class = 2 if quick else 6
    samples = diffuser.sample(
        per_class * len(diffuser.labels),
        steps=10 if quick else 50,
        guidance=3.0,
        seed=common.seed,
        quiet=common.quiet,
    )
    save_samples(samples, workdir / "samples")
    return TourResult(
        metrics={"final_train_loss": float(last.get("train_loss", float("nan")))},
        images=[workdir / "samples" / "grid.png", checkpoint.parent / "loss.png"],
        notes=f"U-Net (width {args.width}) trained {args.epochs} epochs on "
        f"{args.builtin_count} built-in scenes of {args.image_size} px, a class per color; "
        "columns: the classes in order ("
        + ", ".join(diffuser.labels)
        + "), DDPM (50 steps) with classifier-free guidance 3"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )
