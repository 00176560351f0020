"""Tiny trained models shared by the diffusion tests (each trained once per session)."""

from dataclasses import asdict, replace
from pathlib import Path

import pytest

from lbdl_apps.clip.api import build_model as build_clip
from lbdl_apps.clip.api import make_scenes, new_config
from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.options import Common
from lbdl_apps.diffusion.cli import TrainArgs
from lbdl_apps.diffusion.task import train

TINY = {
    "image_size": 8,
    "width": 8,
    "blocks": 1,
    "timesteps": 50,
    "builtin_count": 64,
    "epochs": 1,
    "batch_size": 32,
    "preview": 0,
    "exist_ok": True,
}


def train_tiny(run_dir: Path, **overrides) -> Path:
    train(TrainArgs(run_dir=run_dir, **{**TINY, **overrides}), Common(quiet=True))
    return run_dir / "model.safetensors"


@pytest.fixture(scope="session")
def class_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-conditional (a class per color of the built-in scenes)."""
    return train_tiny(tmp_path_factory.mktemp("class") / "run", scene_label="color")


@pytest.fixture(scope="session")
def unconditional_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("none") / "run", condition="none")


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny `lbdl clip` checkpoint (untrained weights, BPE trained on scene captions)."""
    captions = make_scenes(200, 8, seed=0).captions
    config, tokenizer = new_config("tiny", 8, captions, 120, 24)
    config = replace(
        config, vision_width=16, text_width=16, embed_dim=16, vision_heads=2, text_heads=2
    )
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    meta = {
        "task": "clip",
        "config": asdict(config),
        "tokenizer": tokenizer.to_meta(),
        "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_checkpoint(path, build_clip(config).state_dict(), meta)
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `lbdl classify` cnn trained for one epoch on a few built-in scenes (a class per
    color): features for the Fréchet distance."""
    from PIL import Image

    from lbdl_apps.classify.cli import TrainArgs as ClassifyArgs
    from lbdl_apps.classify.task import train as train_classifier

    root = tmp_path_factory.mktemp("judge")
    scenes = make_scenes(40, 8, seed=3)
    for i, (image, attributes) in enumerate(zip(scenes.images, scenes.attributes, strict=True)):
        folder = root / "colors" / attributes["color"]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    args = ClassifyArgs(data=str(root / "colors"), model="cnn", width=4, depth=1, epochs=1,
                        augment="none", run_dir=root / "run")  # fmt: skip
    train_classifier(args, Common(quiet=True))
    return root / "run" / "model.safetensors"
