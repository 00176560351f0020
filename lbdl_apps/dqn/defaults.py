"""The settings of `lbdl dqn train` that depend on the environment (book 6.7): a None in
TrainArgs becomes the default of its kind of environment, and the environment's
preprocessing comes from the Atari options."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any

from lbdl_apps.core.options import RunArgs
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.data import EnvSettings

# Defaults that differ by kind of environment (RL Baselines3 Zoo settings for CartPole and
# Acrobot; Nature-DQN / CleanRL settings for Atari with a 100k-transition replay memory).
CLASSIC_DEFAULTS: dict[str, Any] = {
    "total_steps": 50_000,
    "buffer_size": 100_000,
    "batch_size": 64,
    "lr": 2.3e-3,
    "adam_eps": 1e-8,
    "learning_starts": 1000,
    "train_freq": 256,
    "gradient_steps": 128,
    "target_update": 10,
    "eps_end": 0.04,
    "eps_fraction": 0.16,
    "hidden": "256,256",
    "eval_every": 5000,
    "eval_episodes": 10,
    "eval_epsilon": 0.0,
}
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "Acrobot-v1": {
        "total_steps": 100_000,
        "buffer_size": 50_000,
        "batch_size": 128,
        "lr": 6.3e-4,
        "learning_starts": 0,
        "train_freq": 4,
        "gradient_steps": -1,
        "target_update": 250,
        "eps_end": 0.1,
        "eps_fraction": 0.12,
    },
}
ATARI_DEFAULTS: dict[str, Any] = {
    "total_steps": 10_000_000,
    "buffer_size": 100_000,
    "batch_size": 32,
    "lr": 1e-4,
    # Adam's default 1e-8 turns the tiny, steady gradients that reach the first conv layer
    # early on into full-size steps, which can silence its ReLUs for good (seen on Pong);
    # 1.5e-4, as in Rainbow, keeps those steps small.
    "adam_eps": 1.5e-4,
    "learning_starts": 80_000,
    "train_freq": 4,
    "gradient_steps": 1,
    "target_update": 1000,
    "eps_end": 0.01,
    "eps_fraction": 0.1,
    "hidden": "512",
    "eval_every": 250_000,
    "eval_episodes": 10,
    "eval_epsilon": 0.05,
}
RUN_FIELDS = {f.name for f in fields(RunArgs)}  # where a run writes, not how it learns
ATARI_OPTIONS = (  # the options of TrainArgs that are EnvSettings of an Atari game
    "frame_skip",
    "noop_max",
    "sticky_actions",
    "full_action_space",
    "episodic_life",
    "fire_reset",
    "clip_rewards",
)


def env_settings(args: TrainArgs) -> EnvSettings:
    """What the agent sees: the environment and, for an Atari game, its preprocessing."""
    return EnvSettings.for_env(args.env, **{name: getattr(args, name) for name in ATARI_OPTIONS})


def defaults_for(args: TrainArgs, settings: EnvSettings) -> dict[str, Any]:
    """The defaults of the environment of `args`."""
    if settings.atari:
        return ATARI_DEFAULTS
    return {**CLASSIC_DEFAULTS, **ENV_DEFAULTS.get(args.env, {})}


def resolve(args: TrainArgs) -> TrainArgs:
    """`args` with every None replaced by the environment's default (an unknown --env is
    an error here)."""
    defaults = defaults_for(args, env_settings(args))
    return replace(args, **{k: v for k, v in defaults.items() if getattr(args, k) is None})


def hyper_parameters(args: TrainArgs) -> dict[str, Any]:
    """The learning settings (no paths), as stored in the checkpoint."""
    values = {k: v for k, v in asdict(args).items() if k not in RUN_FIELDS}
    return {**values, "hidden": args.widths}
