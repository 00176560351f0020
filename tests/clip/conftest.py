"""A tiny clip checkpoint trained for one short epoch on built-in scenes, and scene PNGs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lbdl_apps.clip.cli import TrainArgs
from lbdl_apps.clip.data import make_scenes
from lbdl_apps.clip.task import train
from lbdl_apps.core.options import Common


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("clip") / "run"
    args = TrainArgs(model="tiny", epochs=1, scenes=200, batch_size=50, run_dir=run_dir,
                     val_fraction=0.1)  # fmt: skip
    train(args, Common(quiet=True))
    return run_dir


@pytest.fixture(scope="session")
def scene_pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    scenes = make_scenes(6, 32, seed=7)
    for i, image in enumerate(scenes.images):
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder
