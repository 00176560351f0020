"""The Python API of `lbdl dqn`: load a trained agent, act, evaluate (book 6.7).

from lbdl_apps.dqn import load
agent = load("runs/dqn/train/model.safetensors")
returns = agent.evaluate(episodes=10, epsilon=0.05)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Inference
from lbdl_apps.core.runtime import deploy
from lbdl_apps.dqn.data import EnvSettings, make_env
from lbdl_apps.dqn.model import QNetworkConfig, build_q_network
from lbdl_apps.dqn.policy import evaluate_policy

TASK = "dqn"


@dataclass
class Agent:
    """A trained Q-network and the environment settings it was trained with; meta["config"]
    is the network's QNetworkConfig."""

    q_network: nn.Module
    settings: EnvSettings
    meta: dict[str, Any]
    device: torch.device

    @property
    def n_actions(self) -> int:
        return int(self.meta["config"].n_actions)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(s, a) for every action of one observation."""
        with torch.inference_mode():
            batch = torch.as_tensor(np.asarray(obs)[None], device=self.device)  # (1, *obs)
            q = self.q_network(batch)  # (1, A)
        return q[0].float().cpu().numpy()

    def act(
        self, obs: np.ndarray, epsilon: float = 0.0, rng: np.random.Generator | None = None
    ) -> int:
        """Epsilon-greedy action for one observation (greedy by default)."""
        rng = rng or np.random.default_rng()
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions))
        return int(self.q_values(obs).argmax())

    def evaluate(self, episodes: int = 10, epsilon: float = 0.05, seed: int = 0) -> list[float]:
        """Returns of whole episodes played epsilon-greedily (epsilon 0: greedy)."""
        return evaluate_policy(self.q_network, self.settings, episodes, epsilon, seed, self.device)


def load(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    env: str | None = None,
    inference: Inference | None = None,
) -> Agent:
    """An agent from a dqn checkpoint: a file or run folder, a registry name (`cleanrl:Pong`,
    `lbdl models`) or a CleanRL Q-network file (its game given by `env`). `env` plays another
    environment id with the same preprocessing; its actions and observations must match the
    network's. Its Q-network runs as `inference` says (default: PyTorch; book 8.2)."""
    from lbdl_apps.dqn.export import deployment

    model, meta = load_model(checkpoint, TASK, build_q_network, QNetworkConfig)
    device = resolve_device(device)
    model.to(device).eval()
    try:
        settings = EnvSettings.from_dict(meta["env"])
    except (KeyError, TypeError) as error:
        raise LbdlError(f"{checkpoint}: incomplete dqn metadata ({error})") from None
    if not settings.env_id and env is None:
        raise LbdlError(
            f"{checkpoint}: a CleanRL Q-network file does not say which game it plays; give it "
            "with --env, e.g. --env PongNoFrameskip-v4"
        )
    if env is not None and env != settings.env_id:
        settings = other_env(settings, env, meta["config"], checkpoint)
    agent = Agent(model, settings, meta, device)
    deployed = deployment(agent, describe=False)
    deploy(deployed, inference, agent.device)
    return agent


def other_env(
    settings: EnvSettings,
    env_id: str,
    config: QNetworkConfig,
    checkpoint: str | Path,
    flag: str = "--env",
) -> EnvSettings:
    """The checkpoint's preprocessing applied to `env_id` (given by `flag`: --env, or
    --calibrate ENV), checked against the network."""
    try:
        other = EnvSettings.for_env(env_id)
        if other.atari != settings.atari:
            kind = "an Atari game" if settings.atari else "a classic-control task"
            raise LbdlError(f"--env {env_id}: the checkpoint {checkpoint} was trained on {kind}")
        other = replace(settings, env_id=env_id)
        probe = make_env(other)
    except LbdlError as error:
        raise LbdlError(str(error).replace("--env", flag, 1)) from None
    try:
        actions = int(probe.action_space.n)
        shape = tuple(probe.observation_space.shape)
    finally:
        probe.close()
    if actions != config.n_actions:
        raise LbdlError(
            f"{flag} {env_id}: has {actions} actions but the checkpoint's Q-network has "
            f"{config.n_actions} (trained on {settings.env_id})"
        )
    if config.kind == "mlp" and shape != (config.obs_dim,):
        raise LbdlError(
            f"{flag} {env_id}: observations of shape {shape}, the checkpoint's Q-network takes "
            f"({config.obs_dim},) (trained on {settings.env_id})"
        )
    return other
