"""Fixtures of the dqn tests: untrained checkpoints written with the real checkpoint code."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.dqn.data import EnvSettings
from lbdl_apps.dqn.model import build_q_network, q_network_config


def write_checkpoint(path: Path, env_id: str, obs_shape: tuple, n_actions: int) -> Path:
    """A dqn checkpoint of a freshly initialised Q-network for `env_id`."""
    torch.manual_seed(0)
    config = q_network_config(obs_shape, n_actions, [32, 32], dueling=False)
    meta = {"task": "dqn", "config": asdict(config), "env": EnvSettings.for_env(env_id).to_dict()}
    save_checkpoint(path, build_q_network(config).state_dict(), meta)
    return path


@pytest.fixture
def pong_checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "pong.safetensors", "ALE/Pong-v5", (4, 84, 84), 6)


@pytest.fixture
def cartpole_checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "cartpole.safetensors", "CartPole-v1", (4,), 2)
