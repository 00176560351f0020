"""The classify step of `lbdl tour`: train on the built-in shapes, evaluate, predict PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lbdl_apps.classify.api import load
from lbdl_apps.classify.data import make_shapes
from lbdl_apps.classify.train import TrainArgs, run_evaluation, run_training
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.tour import TourResult, register_tour_step


@register_tour_step("classify", "Image classification (book 6.2)")
def classify_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    run_dir = workdir / "train"
    args = TrainArgs(
        model="cnn",
        epochs=2 if quick else 6,
        fraction=0.15 if quick else 1.0,
        batch_size=32 if quick else 64,
        warmup=0.2,
        run_dir=run_dir,
        exist_ok=True,
    )
    run_training(args, common)
    scores, _, _, _ = run_evaluation(
        run_dir / "model.safetensors", None, workdir / "evaluate", 256, "test", common
    )
    pictures = workdir / "images"
    pictures.mkdir(parents=True, exist_ok=True)
    images, labels, names = make_shapes(12, 32, seed=1234)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = pictures / f"{i:02d}_{names[label]}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    predictions = load(run_dir / "model.safetensors").predict(paths, top_k=1)
    grid = workdir / "predictions.png"
    _draw_predictions(paths, [p.labels[0] for p in predictions], [names[y] for y in labels], grid)
    return TourResult(
        metrics={"test_acc": scores["acc"], "chance": 1 / len(names)},
        images=[grid, run_dir / "loss.png", workdir / "evaluate" / "confusion_matrix.png"],
        notes=f"cnn trained {args.epochs} epochs on {args.fraction:.0%} of the built-in shapes; "
        "predictions on PNG files"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )


def _draw_predictions(paths: list[Path], predicted: list[str], true: list[str], out: Path) -> None:
    fig = Figure(figsize=(2 * len(paths) / 2, 4.6))
    axes = fig.subplots(2, len(paths) // 2)
    for ax, path, guess, truth in zip(axes.flat, paths, predicted, true, strict=True):
        ax.imshow(np.asarray(Image.open(path)))
        ax.set_title(guess, fontsize=8, color="green" if guess == truth else "red")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
