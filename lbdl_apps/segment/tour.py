"""The segment step of `lbdl tour`: train a small U-Net on the built-in scenes, evaluate it,
segment a few PNG files (image | prediction overlay | ground truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in
from lbdl_apps.segment.api import colorize, load, overlay
from lbdl_apps.segment.builtin import make_scenes
from lbdl_apps.segment.cli import EvaluateArgs, TrainArgs
from lbdl_apps.segment.task import evaluate, train


@register_tour_step("segment", "Semantic segmentation (book 6.4)")
def segment_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    size = {"epochs": 1, "scenes": 48} if quick else {"epochs": 10, "scenes": 400}
    args = TrainArgs(model="unet", width=16, depth=3, blocks=1, batch_size=8, lr=1e-2,
                     warmup=0.3, **size)  # fmt: skip
    checkpoint, _ = train_in(workdir, train, args, common)
    evaluation = EvaluateArgs(checkpoint=str(checkpoint), out=workdir / "evaluate", split="val")
    scores = evaluate(evaluation, common).scores
    pictures = workdir / "images"
    pictures.mkdir(parents=True, exist_ok=True)
    images, masks = make_scenes(4, 96, seed=4321)  # larger than training: sliding window
    paths = []
    for i, image in enumerate(images):
        path = pictures / f"scene{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    segmenter = load(checkpoint)
    results = segmenter.predict(paths)
    grid = workdir / "predictions.png"
    fig = Figure(figsize=(7.5, 2.5 * len(paths)))
    axes = fig.subplots(len(paths), 3, squeeze=False)
    for row, result, truth in zip(axes, results, masks, strict=True):
        row[0].imshow(np.asarray(result.image))
        row[1].imshow(np.asarray(overlay(result.image, result.mask, segmenter.palette)))
        row[2].imshow(colorize(truth, segmenter.palette))
        for ax, title in zip(row, ("image", "prediction", "ground truth"), strict=True):
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(grid, dpi=80)
    return TourResult(
        metrics={
            "val_miou": scores["miou"],
            "val_pixel_acc": scores["pixel_acc"],
            "constant_miou": scores["constant_miou"],
        },
        images=[
            grid,
            checkpoint.parent / "loss.png",
            workdir / "evaluate" / "confusion_matrix.png",
        ],
        notes=f"U-Net trained {args.epochs} epochs on {args.scenes} built-in scenes "
        "(background, disk, square, triangle); PNG files segmented with a sliding window; "
        "constant_miou: always predicting the most frequent class"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )
