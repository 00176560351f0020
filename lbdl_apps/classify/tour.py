"""The classify step of `lbdl tour`: train on the built-in shapes, evaluate, predict PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lbdl_apps.classify.api import load
from lbdl_apps.classify.builtin import make_shapes
from lbdl_apps.classify.cli import EvaluateArgs, TrainArgs
from lbdl_apps.classify.task import evaluate, train
from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in


@register_tour_step("classify", "Image classification (book 6.2)")
def classify_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    sizes = {"epochs": 2, "fraction": 0.15, "batch_size": 32} if quick else {"epochs": 6}
    args = TrainArgs(model="cnn", warmup=0.2, **sizes)
    checkpoint, _ = train_in(workdir, train, args, common)
    chosen = EvaluateArgs(checkpoint=str(checkpoint), out=workdir / "evaluate")
    scores = evaluate(chosen, common).scores
    pictures = workdir / "images"
    pictures.mkdir(parents=True, exist_ok=True)
    images, labels, names = make_shapes(12, 32, seed=1234)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = pictures / f"{i:02d}_{names[label]}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    predictions = load(checkpoint).predict(paths, top_k=1)
    grid = workdir / "predictions.png"
    _draw_predictions(paths, [p.labels[0] for p in predictions], [names[y] for y in labels], grid)
    return TourResult(
        metrics={"test_acc": scores["acc"], "chance": 1 / len(names)},
        images=[
            grid,
            checkpoint.parent / "loss.png",
            workdir / "evaluate" / "confusion_matrix.png",
        ],
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
