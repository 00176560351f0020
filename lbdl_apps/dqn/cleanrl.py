"""CleanRL's Atari DQN as it was trained (book 6.7; cleanrl/dqn_atari.py): its Q-network's
weights in our Nature Q-network, and the exact preprocessing it saw, the wrappers of its
make_env on a `<Game>NoFrameskip-v4` environment (no sticky actions, every frame):

    RecordEpisodeStatistics, NoopReset(30), MaxAndSkip(4), EpisodicLife, FireReset (if the
    game has FIRE), ClipReward, Resize(84x84, RGB, INTER_AREA), Grayscale(RGB2GRAY), FrameStack(4)

(Stable-Baselines3's atari_wrappers with gym's observation wrappers, as CleanRL imports them.)
CleanRL's agent met a lost life as the end of an episode, and its vector environment reset
it at once; here `LifeReset` does the same inside one whole-game episode, so that the
observations are the ones the network was trained on, and a game is one episode."""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation, RecordEpisodeStatistics
from torch import Tensor

from lbdl_apps.core.errors import LbdlError

# CleanRL's QNetwork.network (a Sequential) -> our NatureQNetwork
CLEANRL_KEYS = {
    "network.0": "features.0",
    "network.2": "features.2",
    "network.4": "features.4",
    "network.7": "head.advantage.0",
    "network.9": "head.advantage.2",
}
FRAME, STACK = 84, 4


def is_cleanrl_q_network(sd: Any) -> bool:
    """Whether `sd` is the state dict of CleanRL's Atari QNetwork (by keys and shapes)."""
    if not isinstance(sd, dict):
        return False
    names = {f"{k}.{p}" for k in CLEANRL_KEYS for p in ("weight", "bias")}
    if set(sd) != names or not all(isinstance(v, Tensor) for v in sd.values()):
        return False
    conv, fc = sd["network.0.weight"], sd["network.7.weight"]
    return tuple(conv.shape) == (32, STACK, 8, 8) and tuple(fc.shape) == (512, 3136)


def from_cleanrl_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """CleanRL's `network.N.*` keys -> ours; both divide the uint8 frames by 255."""
    return {
        f"{ours}.{p}": sd[f"{theirs}.{p}"].float()
        for theirs, ours in CLEANRL_KEYS.items()
        for p in ("weight", "bias")
    }


class NoopReset(gym.Wrapper):
    """1 to `noop_max` no-ops (action 0) after a reset, drawn from the game's generator."""

    def __init__(self, env: gym.Env, noop_max: int = 30) -> None:
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.unwrapped.np_random.integers(1, self.noop_max + 1)):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


class MaxAndSkip(gym.Wrapper):
    """The action repeated `skip` times, rewards summed, the last two frames max-pooled."""

    def __init__(self, env: gym.Env, skip: int = 4) -> None:
        super().__init__(env)
        self.skip = skip
        self.frames = np.zeros((2, *env.observation_space.shape), dtype=np.uint8)

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        total, terminated, truncated, info = 0.0, False, False, {}
        for i in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            if i >= self.skip - 2:
                self.frames[i - (self.skip - 2)] = obs
            total += float(reward)
            if terminated or truncated:
                break
        return self.frames.max(axis=0), total, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode; only a game over resets the game (a no-op otherwise)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives, self.was_real_done = 0, True

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.was_real_done = terminated or truncated
        lives = self.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        if self.was_real_done:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.unwrapped.ale.lives()
        return obs, info


class FireReset(gym.Wrapper):
    """FIRE (action 1), then action 2, after every reset (the games that wait for FIRE)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self.env.reset(**kwargs)
        obs = None
        for action in (1, 2):
            obs, _, terminated, truncated, _ = self.env.step(action)
            if terminated or truncated:
                obs, _ = self.env.reset(**kwargs)
        return obs, {}


class ClipReward(gym.RewardWrapper):
    """The sign of the reward."""

    def reward(self, reward: float) -> float:
        return float(np.sign(reward))


class ResizeGray(gym.ObservationWrapper):
    """The RGB frame resized to 84x84 (INTER_AREA), then made gray (RGB2GRAY): gym's
    ResizeObservation then GrayScaleObservation, in CleanRL's order."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, (FRAME, FRAME), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        small = cv2.resize(observation, (FRAME, FRAME), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


class LifeReset(gym.Wrapper):
    """After a lost life, what CleanRL's vector environment did when its episode ended: the
    reset of the wrappers below (a no-op, FIRE and action 2, the frame stack refilled), its
    observation returned, and the game going on."""

    def __init__(self, env: gym.Env, life: EpisodicLife) -> None:
        super().__init__(env)
        self.life = life

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated and not truncated and not self.life.was_real_done:
            obs, _ = self.env.reset()
            terminated = False
        return obs, reward, terminated, truncated, info


def cleanrl_env(
    env_id: str, noop_max: int = 30, frame_skip: int = 4, render_mode: str | None = None
) -> gym.Env:
    """CleanRL's dqn_atari make_env for `env_id` (a game over is the episode's end). Every
    frame reaches MaxAndSkip (the emulator skips none, as in the NoFrameskip-v4 ids); sticky
    actions are the id's own (none in v4, 0.25 in v5)."""
    from lbdl_apps.dqn.data import _register_ale

    _register_ale()
    try:
        env = gym.make(env_id, render_mode=render_mode, frameskip=1)
    except gym.error.Error as error:
        raise LbdlError(f"--env {env_id}: unknown environment ({error})") from None
    env = RecordEpisodeStatistics(env)
    env = NoopReset(env, noop_max)
    env = life = EpisodicLife(MaxAndSkip(env, frame_skip))
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    env = FrameStackObservation(ResizeGray(ClipReward(env)), STACK)
    return LifeReset(env, life)
