"""The detect step of `lbdl tour`: train a small SSD on the built-in scenes, evaluate it
(mAP, precision-recall curves) and detect objects in a few PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.tour import TourResult, register_tour_step
from lbdl_apps.detect.api import draw, load
from lbdl_apps.detect.scenes import make_scene
from lbdl_apps.detect.train import TrainArgs, run_evaluation, run_training


@register_tour_step("detect", "Object detection (book 6.3)")
def detect_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    run_dir = workdir / "train"
    args = TrainArgs(
        width=8 if quick else 16,
        epochs=1 if quick else 6,
        scenes=48 if quick else 2000,
        batch_size=16 if quick else 32,
        lr=4e-3,
        warmup=0.3,
        run_dir=run_dir,
        exist_ok=True,
    )
    run_training(args, common)
    checkpoint = run_dir / "model.safetensors"
    scores, _, folder = run_evaluation(checkpoint, None, None, workdir / "evaluate", "val", common)
    pictures = workdir / "images"
    pictures.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        path = pictures / f"scene{i}.png"
        Image.fromarray(make_scene(i, 128, seed=4321)[0]).save(path)
        paths.append(path)
    detector = load(checkpoint)
    grid = workdir / "detections.png"
    fig = Figure(figsize=(10, 2.8))
    for ax, (found, image) in zip(fig.subplots(1, 4), detector.iter_predict(paths), strict=True):
        ax.imshow(draw(np.asarray(image), found, len(detector.labels)))
        ax.set_title(f"{len(found.boxes)} objects", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(grid, dpi=90)
    return TourResult(
        metrics={k: v or 0.0 for k, v in scores.items()},
        images=[grid, run_dir / "loss.png", folder / "pr_curve.png"],
        notes=f"SSD (small ResNet backbone, 64 px) trained {args.epochs} epochs on {args.scenes} "
        "built-in scenes of circles, squares and triangles among distractors; larger PNG "
        "files detected at the model's input size"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )
