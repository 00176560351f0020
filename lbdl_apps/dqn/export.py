"""Deploying a DQN agent (book 8.2; 6.7): its Q-network as one graph taking the observations
exactly as the agent feeds them (uint8 (B, 4, 84, 84) stacked Atari frames, or the float
(B, obs_dim) state of a classic-control task) and giving Q(s, a) for every action (B, A).

int8 follows where the multiply-adds are (`Graph.convolutional`): the Nature CNN's convolutions
do 83% of them on 84x84 frames (its 3136 x 512 layer holds 1.6M of its 1.7M weights, but
does 1.6M of its 9.4M multiply-adds), so it takes static int8 through ONNX Runtime,
calibrated on the observations the loaded agent meets in its own environment (or
--calibrate ENV) with its preprocessing, epsilon 0.05, seeded; the MLPs of classic control
take dynamic int8 of their linear layers (torchao, or ONNX Runtime), without calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lbdl_apps.core.export import CALIBRATION_INPUTS, Deployment, Graph
from lbdl_apps.core.options import Quantization
from lbdl_apps.dqn.api import TASK, Agent, other_env
from lbdl_apps.dqn.data import EnvSettings, make_env
from lbdl_apps.dqn.policy import select_actions

CALIBRATION_EPSILON = 0.05  # the agent's evaluation epsilon: the states it meets when playing
CALIBRATION_BATCH = 32
CLASSIC_ACTIONS = {  # gymnasium's classic-control docs; their envs do not name their actions
    "CartPole-v1": ["push cart to the left", "push cart to the right"],
    "Acrobot-v1": ["torque -1", "torque 0", "torque +1"],
    "MountainCar-v0": ["accelerate left", "don't accelerate", "accelerate right"],
}


def deployment(agent: Agent, describe: bool = True) -> Deployment:
    """The agent's Q-network, attached back as `agent.q_network` (where `act`, `play` and
    `evaluate` call it). `describe`: model.json's description (it opens the environment once
    to read the names of its actions)."""
    network = agent.q_network

    def attach(module: nn.Module) -> None:
        agent.q_network = module

    graph = Graph(
        "q_network",
        network,
        (sample_observations(agent).to(agent.device),),  # where the network is
        ["observations"],
        ["q_values"],
        dynamic={"observations": {0: "batch"}, "q_values": {0: "batch"}},
        attach=attach,
        calibration=lambda env_id: calibration(agent, network, env_id),
    )
    description = describe_agent(agent) if describe else {}
    return Deployment(TASK, Path(agent.meta["file"]), [graph], description)


def calibration_note(agent: Agent, graph: Graph, quantization: Quantization) -> str | None:
    """model.json's `calibration`: what calibrated int8 (None without int8).
    TODO(core): core writes "built-in data" for every default; let the deployment say."""
    if not quantization.quantize:
        return None
    if not graph.convolutional:
        return "none: dynamic int8"
    env = quantization.calibrate or agent.settings.env_id
    return (
        f"{CALIBRATION_INPUTS} observations of {env} met by the agent (epsilon "
        f"{CALIBRATION_EPSILON:g}, seeded), with the checkpoint's preprocessing"
    )


def sample_observations(agent: Agent) -> Tensor:
    """Two observations as the environment gives them: uint8 frames or a float state."""
    config, generator = agent.meta["config"], torch.Generator().manual_seed(0)
    if config.kind == "nature":
        shape = (2, config.in_channels, config.frame_size, config.frame_size)
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.randn(2, config.obs_dim, generator=generator)


def calibration(agent: Agent, network: nn.Module, env_id: str | None) -> list[tuple[Tensor]]:
    """Static int8's calibration inputs: the observations of CALIBRATION_INPUTS steps that the
    agent (`network`, epsilon 0.05, seeded) plays in `env_id` (--calibrate ENV; default: the
    checkpoint's own environment) with the checkpoint's preprocessing."""
    settings = agent.settings
    if env_id is not None and env_id != settings.env_id:
        settings = other_env(
            settings, env_id, agent.meta["config"], agent.meta["file"], "--calibrate"
        )
    seen = rollout(network, settings, CALIBRATION_INPUTS, CALIBRATION_EPSILON, agent.device)
    return [(batch,) for batch in torch.from_numpy(seen).split(CALIBRATION_BATCH)]


def rollout(
    network: nn.Module,
    settings: EnvSettings,
    steps: int,
    epsilon: float,
    device: torch.device,
    seed: int = 0,
) -> np.ndarray:
    """The observations (steps, *obs) met by `network` acting epsilon-greedily for `steps`
    steps from seeded resets (a new episode when one ends)."""
    env = make_env(settings)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    seen: list[np.ndarray] = []
    try:
        obs, _ = env.reset(seed=seed)
        while len(seen) < steps:
            seen.append(np.asarray(obs))
            action = select_actions(network, np.asarray(obs)[None], epsilon, n_actions, rng, device)
            obs, _, terminated, truncated, _ = env.step(int(action[0]))
            if terminated or truncated:
                obs, _ = env.reset(seed=seed + len(seen))
    finally:
        env.close()
    return np.stack(seen)


def action_names(settings: EnvSettings, n_actions: int) -> list[str]:
    """The meaning of each action index: the ALE's names for a game, gymnasium's docs for
    the classic-control tasks, else the index."""
    if settings.atari:
        env = make_env(settings)
        try:
            return list(env.unwrapped.get_action_meanings())
        finally:
            env.close()
    return CLASSIC_ACTIONS.get(settings.env_id, [str(i) for i in range(n_actions)])


def describe_agent(agent: Agent) -> dict[str, Any]:
    """model.json's description: the environment, the observations (how they are made, their
    dtype and scale) and the actions, and what to do with the Q-values."""
    settings, config = agent.settings, agent.meta["config"]
    if config.kind == "nature":
        observations = {
            "dtype": "uint8",
            "shape": ["batch", config.in_channels, config.frame_size, config.frame_size],
            "value_range": "raw 0..255 gray pixels; the network divides by 255 itself",
            "frame_stack": f"{settings.stack} frames, oldest first",
            "preprocessing": atari_preprocessing(settings),
        }
    else:
        observations = {
            "dtype": "float32",
            "shape": ["batch", config.obs_dim],
            "value_range": "the environment's state vector as it comes, unscaled",
            "preprocessing": f"none: gymnasium.make({settings.env_id!r}) observations",
        }
    return {
        "environment": settings.env_id,
        "observations": observations,
        "env_settings": settings.to_dict(),
        "actions": action_names(settings, config.n_actions),
        "output": "q_values (batch, actions): Q(s, a); act with argmax over the actions "
        "(lbdl dqn evaluate plays epsilon-greedily, epsilon 0.05 by default)",
        "dueling": config.dueling,
    }


def atari_preprocessing(settings: EnvSettings) -> str:
    """The wrappers that turn the emulator's screens into the network's observations."""
    if settings.wrappers == "cleanrl":
        return (
            f"CleanRL dqn_atari's make_env on {settings.env_id} (frameskip 1, no sticky "
            f"actions): NoopReset({settings.noop_max}), MaxAndSkip({settings.frame_skip}: "
            "the action repeated, the last two RGB frames max-pooled), EpisodicLife (a lost "
            "life resets the wrappers below, the game goes on), FireReset (FIRE then action 2 "
            "after a reset, games with FIRE), ClipReward, cv2.resize of the RGB frame to "
            f"{settings.screen_size}x{settings.screen_size} (INTER_AREA) then cv2 RGB2GRAY, "
            f"FrameStack({settings.stack}) (lbdl_apps/dqn/cleanrl.py)"
        )
    return (
        f"gymnasium.make({settings.env_id!r}, frameskip=1, repeat_action_probability="
        f"{settings.sticky_actions}, full_action_space={settings.full_action_space}); "
        f"AtariPreprocessing(noop_max={settings.noop_max}, frame_skip={settings.frame_skip}: "
        "the last two frames max-pooled, the ALE's grayscale, cv2.resize to "
        f"{settings.screen_size}x{settings.screen_size} INTER_AREA)"
        + ("; FIRE after a reset and a lost life" if settings.fire_reset else "")
        + f"; FrameStackObservation({settings.stack}) (lbdl_apps/dqn/data.py make_env)"
    )
