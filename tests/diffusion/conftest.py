"""Tiny trained models shared by the diffusion tests (each trained once per session)."""

from pathlib import Path

import pytest

from lbdl_apps.clip.model import build_model as build_clip
from lbdl_apps.clip.model import default_config as clip_config
from lbdl_apps.clip.scenes import make_scenes
from lbdl_apps.clip.tokenizer import train_bpe
from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.cli_common import Common
from lbdl_apps.diffusion.train import TrainArgs, run_training

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
    run_training(TrainArgs(run_dir=run_dir, **{**TINY, **overrides}), Common(quiet=True))
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
    tokenizer = train_bpe(captions, 120, 24)
    config = clip_config(
        "tiny", 8, tokenizer.vocab_size, tokenizer.context_length, tokenizer.eot_id
    )
    config.update(vision_width=16, text_width=16, embed_dim=16, vision_heads=2, text_heads=2)
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    meta = {
        "task": "clip",
        "config": config,
        "tokenizer": tokenizer.to_meta(),
        "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_checkpoint(path, build_clip(config).state_dict(), meta)
    return path
