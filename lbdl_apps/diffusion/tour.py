"""The diffusion step of `lbdl tour`: train a class-conditional denoiser on the built-in scenes
(a class per color), then sample each class with DDPM and classifier-free guidance."""

from __future__ import annotations

from pathlib import Path

from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.tour import TourResult, register_tour_step
from lbdl_apps.diffusion.api import load, save_samples
from lbdl_apps.diffusion.train import TrainArgs, run_training


@register_tour_step("diffusion", "Denoising diffusion (book 7.2)")
def diffusion_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    run_dir = workdir / "train"
    args = TrainArgs(
        image_size=8 if quick else 16,
        width=8 if quick else 32,
        blocks=1,
        timesteps=100 if quick else 1000,
        builtin_count=128 if quick else 4000,
        epochs=1 if quick else 10,
        batch_size=32 if quick else 64,
        lr=3e-3 if quick else 2e-3,
        warmup=0.2,
        scene_label="color",
        preview=0,
        run_dir=run_dir,
        exist_ok=True,
    )
    last = run_training(args, common)
    diffuser = load(run_dir / "model.safetensors")
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
        images=[workdir / "samples" / "grid.png", run_dir / "loss.png"],
        notes=f"U-Net (width {args.width}) trained {args.epochs} epochs on "
        f"{args.builtin_count} built-in scenes of {args.image_size} px, a class per color; "
        "columns: the classes in order ("
        + ", ".join(diffuser.labels)
        + "), DDPM (50 steps) with classifier-free guidance 3"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )
