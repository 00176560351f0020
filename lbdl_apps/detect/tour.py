"""The detect step of `lbdl tour`: train a small SSD on the built-in scenes, evaluate it
(mAP, precision-recall curves) and detect objects in a few PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in
from lbdl_apps.detect.api import draw, load
from lbdl_apps.detect.cli import EvaluateArgs, TrainArgs
from lbdl_apps.detect.scenes import make_scene
from lbdl_apps.detect.task import evaluate, train


@register_tour_step("detect", "Object detection (book 6.3)")
def detect_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    sizes = (8, 1, 48, 16) if quick else (16, 6, 2000, 32)
    size = dict(zip(("width", "epochs", "scenes", "batch_size"), sizes, strict=True))
    checkpoint, _ = train_in(workdir, train, TrainArgs(lr=4e-3, warmup=0.3, **size), common)
    chosen = EvaluateArgs(checkpoint=str(checkpoint), out=workdir / "evaluate")
    evaluation = evaluate(chosen, common)
    grid = _draw_detections(checkpoint, _scene_files(workdir / "images"), workdir)
    return TourResult(
        metrics={k: v or 0.0 for k, v in evaluation.scores.items()},
        images=[grid, checkpoint.parent / "loss.png", evaluation.folder / "pr_curve.png"],
        notes=f"SSD (small ResNet backbone, 64 px) trained {size['epochs']} epochs on "
        f"{size['scenes']} built-in scenes of circles, squares and triangles among "
        "distractors; larger PNG files detected at the model's input size"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )


def _scene_files(folder: Path) -> list[Path]:
    """Four built-in scenes at 128 px (twice the model's input) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        path = folder / f"scene{i}.png"
        Image.fromarray(make_scene(i, 128, seed=4321)[0]).save(path)
        paths.append(path)
    return paths


def _draw_detections(checkpoint: Path, paths: list[Path], workdir: Path) -> Path:
    """detections.png: what the detector finds in the files, drawn side by side."""
    detector = load(checkpoint)
    grid = workdir / "detections.png"
    fig = Figure(figsize=(10, 2.8))
    found_all = detector.iter_predict(paths)
    for ax, (found, image) in zip(fig.subplots(1, len(paths)), found_all, strict=True):
        ax.imshow(draw(np.asarray(image), found, len(detector.labels)))
        ax.set_title(f"{len(found.boxes)} objects", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(grid, dpi=90)
    return grid
