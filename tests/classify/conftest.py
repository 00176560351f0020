"""Fixtures of the classify tests: small checkpoints written with the real checkpoint code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from lbdl_apps.classify.model import ClassifierConfig, build_model, default_config
from lbdl_apps.core.checkpoint import save_checkpoint

LABELS = ["circle", "square", "triangle"]


def classify_meta(config: ClassifierConfig, labels: list[str]) -> dict:
    """The metadata `lbdl classify train` puts in a checkpoint (task, config, preprocessing)."""
    channels = config.in_channels
    return {
        "task": "classify",
        "config": asdict(config),
        "labels": labels,
        "preprocessing": {
            "image_size": config.image_size,
            "in_channels": channels,
            "mean": [0.5] * channels,
            "std": [0.25] * channels,
            "resize": config.image_size,
        },
        "data": None,
        "seed": 0,
        "val_fraction": 0.1,
    }


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., tuple[Path, torch.nn.Module]]:
    """Write an untrained classify checkpoint; returns (path, the model it holds)."""

    def make(
        name: str = "cnn",
        in_channels: int = 3,
        image_size: int = 16,
        labels: list[str] = LABELS,
        file: str = "tiny.safetensors",
        **overrides: object,
    ) -> tuple[Path, torch.nn.Module]:
        config = default_config(name, len(labels), in_channels, image_size)
        if name == "cnn":
            config = replace(config, width=4, depth=1)
        config = replace(config, **overrides)
        torch.manual_seed(0)
        model = build_model(config).eval()
        path = tmp_path / file
        save_checkpoint(path, model.state_dict(), classify_meta(config, labels))
        return path, model

    return make
