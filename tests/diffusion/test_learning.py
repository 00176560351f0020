"""A short class-conditional training on the built-in scenes (a class per color) gives
samples that a `lbdl classify` model, trained here on real scenes, assigns to the requested
class far more often than chance (book 7.2)."""

from pathlib import Path

from PIL import Image

from lbdl_apps.classify.cli import TrainArgs as ClassifyArgs
from lbdl_apps.classify.task import train as train_classifier
from lbdl_apps.clip.api import make_scenes
from lbdl_apps.core.options import Common
from lbdl_apps.diffusion.cli import EvaluateArgs
from lbdl_apps.diffusion.evaluate import evaluate

from .conftest import train_tiny


def test_samples_are_of_the_requested_class(tmp_path: Path) -> None:
    common = Common(quiet=True)
    scenes = make_scenes(1000, 8, seed=5)
    for i, (image, attributes) in enumerate(zip(scenes.images, scenes.attributes, strict=True)):
        folder = tmp_path / "colors" / attributes["color"]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    judge = ClassifyArgs(
        data=str(tmp_path / "colors"),
        model="cnn",
        width=16,
        depth=2,
        epochs=3,
        batch_size=32,
        lr=3e-3,
        augment="none",
        warmup=0.2,
        run_dir=tmp_path / "judge",
    )
    assert train_classifier(judge, common)["val_acc"] > 0.9
    model = train_tiny(
        tmp_path / "diffusion",
        width=16,
        timesteps=100,
        builtin_count=1600,
        epochs=8,
        lr=3e-3,
        warmup=0.2,
        scene_label="color",
    )
    args = EvaluateArgs(
        checkpoint=str(model),
        classifier=str(tmp_path / "judge" / "model.safetensors"),
        out=tmp_path / "evaluate",
        n=64,
        n_real=200,
        steps=20,
    )
    result = evaluate(args, common)
    chance = 1 / 8
    assert result.scores["mean_class_acc"] > 3 * chance, result.per_class
    assert len(result.per_class) == 8 and result.samples == 64
    assert (tmp_path / "evaluate" / "metrics.json").is_file()
    assert result.scores["fd"] >= 0 and result.scores["kid"] == result.scores["kid"]
