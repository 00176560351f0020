"""The clip step of `lbdl tour`: train on captioned scenes, zero-shot on PNG files of
color-shape pairs never seen in training, and a text search with its contact sheet."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lbdl_apps.clip.api import load
from lbdl_apps.clip.cli import TrainArgs
from lbdl_apps.clip.outputs import write_search
from lbdl_apps.clip.scenes import SCENE_COLORS, make_scenes
from lbdl_apps.clip.task import train
from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in


@register_tour_step("clip", "Contrastive image-text model (book 6.6)")
def clip_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    size = {"epochs": 1, "scenes": 300} if quick else {"epochs": 4, "scenes": 3000}
    args = TrainArgs(model="tiny", patch_size=8, batch_size=32, lr=2e-3, warmup=0.3, **size)
    checkpoint, scores = train_in(workdir, train, args, common)
    pictures = workdir / "images"
    pictures.mkdir(parents=True, exist_ok=True)
    scenes = make_scenes(12, 32, seed=1234, split="unseen")
    paths = []
    for i, (image, attrs) in enumerate(zip(scenes.images, scenes.attributes, strict=True)):
        path = pictures / f"{i:02d}_{attrs['color']}_{attrs['shape']}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    clip = load(checkpoint)
    colors = list(SCENE_COLORS)
    predictions = clip.zero_shot(paths, colors, ["a {} shape.", "a photo of a {} thing."])
    right = sum(p.labels[0] in Path(p.path).name for p in predictions)
    query = "a large red shape"
    similarity = clip.embed_images(paths)[1] @ clip.encode_text([query]).t()
    similarity = similarity.squeeze(1)  # (N, 1) -> (N,)
    order = similarity.argsort(descending=True)[:8].tolist()
    _, sheet = write_search([(paths[i], float(similarity[i])) for i in order], query, workdir)
    return TourResult(
        metrics={
            "test_zero_shot_color_acc": scores.get("test_zero_shot_color_acc", 0.0),
            "png_zero_shot_color_acc": right / len(predictions),
            "chance": 1 / len(colors),
        },
        images=[sheet, checkpoint.parent / "loss.png"],
        notes=f"tiny CLIP trained {args.epochs} epoch(s) on {args.scenes} captioned scenes; "
        "zero-shot colors of color-shape pairs absent from training"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )
