"""Where the data of `lbdl dqn` comes from (book 6.7): the environments the agent plays,
Atari through gymnasium + ale-py with the standard DQN preprocessing, or a classic-control
task (CartPole-v1, Acrobot-v1); the replay memory that keeps their transitions is replay.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import (
    AtariPreprocessing,
    ClipReward,
    FrameStackObservation,
    RecordEpisodeStatistics,
)

from lbdl_apps.core.errors import LbdlError

_registered = False


def _register_ale() -> None:
    global _registered
    if not _registered:
        import ale_py

        gym.register_envs(ale_py)
        _registered = True


def is_atari(env_id: str) -> bool:
    """Whether `env_id` is an ALE game (ALE/<Game>-v5 and the like)."""
    _register_ale()
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise LbdlError(f"--env {env_id}: unknown environment ({error})") from None
    return "ale_py" in str(spec.entry_point)


@dataclass
class EnvSettings:
    """Everything that defines what the agent sees; stored in the checkpoint.

    Atari defaults follow Machado et al. 2018 / ALE v5: emulator frame skip off, frame skip 4
    (max-pooled) in the preprocessing, sticky actions 0.25, minimal action set. With
    `wrappers` "cleanrl", the game (a NoFrameskip-v4 id: no sticky actions) is wrapped as
    CleanRL's dqn_atari trained its published networks (cleanrl.py).
    """

    env_id: str = "CartPole-v1"
    atari: bool = False
    frame_skip: int = 4
    noop_max: int = 30
    screen_size: int = 84
    stack: int = 1
    sticky_actions: float = 0.25
    full_action_space: bool = False
    episodic_life: bool = True
    fire_reset: bool = True
    clip_rewards: bool = True
    wrappers: str = "gymnasium"  # "cleanrl": CleanRL's own (cleanrl.py), for its networks

    @classmethod
    def for_env(cls, env_id: str, **atari_options: Any) -> EnvSettings:
        """Atari preprocessing for an ALE game, none for a classic-control task."""
        if is_atari(env_id):
            return cls(env_id=env_id, atari=True, stack=4, **atari_options)
        return cls(
            env_id=env_id, stack=1, episodic_life=False, fire_reset=False, clip_rewards=False
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EnvSettings:
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    @property
    def frames_per_step(self) -> int:
        """Emulator frames per agent step (the x axis of Atari learning curves)."""
        return self.frame_skip if self.atari else 1


class FireReset(gym.Wrapper):
    """Press FIRE after a reset and after a life is lost, for games that wait for it
    (Breakout, ...); a no-op wrapper for the others."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self.fire = meanings.index("FIRE") if "FIRE" in meanings else None
        self.lives = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self.lives = info.get("lives", 0)
        if self.fire is not None:
            obs, _, terminated, truncated, info = self.env.step(self.fire)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = info.get("lives", 0)
        if self.fire is not None and 0 < lives < self.lives and not (terminated or truncated):
            obs, more, terminated, truncated, info = self.env.step(self.fire)
            reward += more
        self.lives = lives
        return obs, reward, terminated, truncated, info


def make_env(settings: EnvSettings, render_mode: str | None = None) -> gym.Env:
    """One environment with the preprocessing of `settings`, using gymnasium's wrappers.

    Episode returns are recorded (info["episode"]) before reward clipping. Episodic life is
    applied by the agent (a lost life ends the transition, not the game), so the recorded
    episodes are whole games.
    """
    _register_ale()
    if settings.wrappers == "cleanrl":
        from lbdl_apps.dqn.cleanrl import cleanrl_env

        return cleanrl_env(settings.env_id, settings.noop_max, settings.frame_skip, render_mode)
    try:
        if settings.atari:
            env = gym.make(
                settings.env_id,
                frameskip=1,
                repeat_action_probability=settings.sticky_actions,
                full_action_space=settings.full_action_space,
                render_mode=render_mode,
            )
            env = AtariPreprocessing(
                env,
                noop_max=settings.noop_max,
                frame_skip=settings.frame_skip,
                screen_size=settings.screen_size,
            )
            if settings.fire_reset:
                env = FireReset(env)
        else:
            env = gym.make(settings.env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as error:
        raise LbdlError(f"--env {settings.env_id}: {str(error).splitlines()[0]}") from None
    except gym.error.Error as error:
        raise LbdlError(f"--env {settings.env_id}: unknown environment ({error})") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise LbdlError(
            f"--env {settings.env_id}: DQN needs a discrete action space, not {env.action_space}"
        )
    env = RecordEpisodeStatistics(env)
    if settings.clip_rewards:
        env = ClipReward(env, -1.0, 1.0)
    if settings.stack > 1:
        env = FrameStackObservation(env, settings.stack)
    return env


def make_vector_env(
    settings: EnvSettings, num_envs: int, asynchronous: bool = False
) -> gym.vector.VectorEnv:
    """`num_envs` copies stepped together; an ended episode is reset in the same step and its
    last observation is in info["final_obs"]."""
    make = [lambda: make_env(settings) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(make, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(make, autoreset_mode=mode)


def newest_frames(obs: np.ndarray, stack: int) -> np.ndarray:
    """The newest frame of each observation: the only part the replay memory stores."""
    return obs[:, -1] if stack > 1 else obs


def episode_stats(info: dict) -> list[tuple[int, float, int]]:
    """(env index, return, length) of the episodes that ended in a vector step."""
    final = info.get("final_info")
    if not final or "episode" not in final:
        return []
    episode = final["episode"]
    ended = np.flatnonzero(final["_episode"])
    return [(int(i), float(episode["r"][i]), int(episode["l"][i])) for i in ended]
