"""The denoise step of `lbdl tour`: train on built-in dead leaves at sigma 25, evaluate on full
images against OpenCV non-local means, restore PNG files and show noisy | restored | clean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in
from lbdl_apps.denoise.api import load
from lbdl_apps.denoise.cli import EvaluateArgs, TrainArgs
from lbdl_apps.denoise.data import dead_leaves
from lbdl_apps.denoise.task import evaluate, train

SIGMA = 25


@register_tour_step("denoise", "Image denoising (book 6.1)")
def denoise_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    size = (
        {"epochs": 1, "patches_per_epoch": 64} if quick else {"epochs": 6, "patches_per_epoch": 512}
    )
    args = TrainArgs(model="unet", width=16, depth=3, degrade=[f"gaussian:{SIGMA}"],
                     patch_size=48, batch_size=16, lr=2e-3, warmup=0.2, **size)  # fmt: skip
    checkpoint, _ = train_in(workdir, train, args, common)
    chosen = EvaluateArgs(checkpoint=str(checkpoint), out=workdir / "evaluate")
    result = evaluate(chosen, common)
    clean_dir = workdir / "clean"
    clean_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(dead_leaves(3, 96, seed=4321)):
        path = clean_dir / f"leaves{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    restorer = load(checkpoint)
    restored = restorer.predict(
        paths, workdir / "restored", degrade=[f"gaussian:{SIGMA}"], seed=common.seed
    )
    noisy = [restorer.prepare(p, [f"gaussian:{SIGMA}"], common.seed) for p in paths]
    grid = workdir / "restorations.png"
    _draw(noisy, [Path(r.output) for r in restored], paths, grid)
    scores = result.scores
    return TourResult(
        metrics={
            "input_psnr": scores["input"]["psnr"],
            "nlm_psnr": scores.get("opencv-nlm", scores["input"])["psnr"],
            "model_psnr": scores["model"]["psnr"],
        },
        images=[grid, checkpoint.parent / "loss.png"],
        notes=f"U-Net (width 16, 3 levels, attention at the lowest) trained {args.epochs} "
        f"epochs of {args.patches_per_epoch} patches on built-in dead leaves at sigma {SIGMA}; "
        f"PSNR on {result.images} full validation images; rows: noisy | restored | clean"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )


def _draw(noisy: list[np.ndarray], restored: list[Path], clean: list[Path], out: Path) -> None:
    fig = Figure(figsize=(6, 2 * len(clean)))
    axes = fig.subplots(len(clean), 3, squeeze=False)
    for row, (before, after, truth) in enumerate(zip(noisy, restored, clean, strict=True)):
        pictures = [np.clip(before, 0, 1), np.asarray(Image.open(after)),
                    np.asarray(Image.open(truth))]  # fmt: skip
        for ax, picture, title in zip(
            axes[row], pictures, ("noisy", "restored", "clean"), strict=True
        ):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
