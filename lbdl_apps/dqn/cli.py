"""`lbdl dqn`: train, evaluate and watch deep Q-learning agents (book 6.7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lbdl_apps.core.cli_common import (
    Common,
    ConfigOption,
    ExistOkOption,
    NameOption,
    OutOption,
    ResumeOption,
    RunDirOption,
    from_options,
    verb,
)

app = typer.Typer(help="Deep Q-learning (book 6.7) on Atari games and classic control.")

EnvOption = Annotated[
    str, typer.Option(help="Gymnasium id: CartPole-v1, Acrobot-v1 or ALE/<Game>-v5.")
]
Default = "(default: the environment's)"


def _hidden(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"{value}: use layer widths like 256,256")
    return sizes


@verb(app)
def train(
    env: EnvOption = "CartPole-v1",
    total_steps: Annotated[
        int | None, typer.Option(min=1, help=f"Environment steps {Default}.")
    ] = None,
    num_envs: Annotated[int, typer.Option(min=1, help="Environments stepped together.")] = 1,
    async_envs: Annotated[
        bool, typer.Option(help="Step the environments in subprocesses.")
    ] = False,
    buffer_size: Annotated[
        int | None, typer.Option(min=1, help=f"Replay memory transitions {Default}.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=f"Batch size {Default}.")] = None,
    lr: Annotated[
        float | None, typer.Option(min=0.0, help=f"Adam learning rate {Default}.")
    ] = None,
    adam_eps: Annotated[
        float | None,
        typer.Option(min=0.0, help=f"Adam epsilon {Default} (Atari 1.5e-4, else 1e-8)."),
    ] = None,
    gamma: Annotated[float, typer.Option(help="Discount factor.")] = 0.99,
    learning_starts: Annotated[
        int | None, typer.Option(min=0, help=f"Steps before learning {Default}.")
    ] = None,
    train_freq: Annotated[
        int | None, typer.Option(min=1, help=f"Steps between training rounds {Default}.")
    ] = None,
    gradient_steps: Annotated[
        int | None, typer.Option(help=f"Gradient steps per round, -1: one per step {Default}.")
    ] = None,
    target_update: Annotated[
        int | None, typer.Option(min=1, help=f"Steps between target updates {Default}.")
    ] = None,
    tau: Annotated[float, typer.Option(help="Target update: 1 copies, < 1 Polyak-averages.")] = 1.0,
    eps_start: Annotated[float, typer.Option(min=0.0, max=1.0, help="Initial epsilon.")] = 1.0,
    eps_end: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help=f"Final epsilon {Default}.")
    ] = None,
    eps_fraction: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help=f"Fraction of the steps epsilon decays over {Default}."
        ),
    ] = None,
    loss: Annotated[str, typer.Option(help="TD loss: huber or mse.")] = "huber",
    double: Annotated[bool, typer.Option(help="Double DQN targets.")] = False,
    dueling: Annotated[bool, typer.Option(help="Dueling Q-network head.")] = False,
    n_step: Annotated[int, typer.Option(min=1, help="n-step returns.")] = 1,
    hidden: Annotated[
        str | None, typer.Option(help=f"MLP layer widths, e.g. 256,256 {Default}.")
    ] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="Gradient norm clip.")] = 10.0,
    eval_every: Annotated[
        int | None, typer.Option(min=1, help=f"Steps between evaluations {Default}.")
    ] = None,
    eval_episodes: Annotated[
        int | None, typer.Option(min=1, help=f"Episodes per evaluation {Default}.")
    ] = None,
    eval_epsilon: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help=f"Epsilon when evaluating {Default}.")
    ] = None,
    stop_return: Annotated[
        float | None, typer.Option(help="Stop once an evaluation reaches this mean return.")
    ] = None,
    save_replay: Annotated[
        bool, typer.Option(help="Save the replay memory with the state (for --resume).")
    ] = False,
    sticky_actions: Annotated[
        float, typer.Option(help="Atari: probability of repeating the last action.")
    ] = 0.25,
    full_action_space: Annotated[bool, typer.Option(help="Atari: all 18 actions.")] = False,
    episodic_life: Annotated[
        bool, typer.Option(help="Atari: a lost life ends the transition.")
    ] = True,
    fire_reset: Annotated[
        bool, typer.Option(help="Atari: press FIRE after reset and lost lives.")
    ] = True,
    clip_rewards: Annotated[bool, typer.Option(help="Atari: rewards clipped to [-1, 1].")] = True,
    noop_max: Annotated[int, typer.Option(min=0, help="Atari: up to N no-ops after reset.")] = 30,
    frame_skip: Annotated[
        int, typer.Option(min=1, help="Atari: frames per action (max-pooled).")
    ] = 4,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    *,
    common: Common,
) -> None:
    """Train a DQN agent; CartPole-v1 by default, Atari with --env ALE/Pong-v5."""
    from lbdl_apps.dqn.agent import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    args.hidden = _hidden(hidden)
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A dqn .safetensors file or run folder.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to play.")] = 10,
    epsilon: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Exploration while playing.")
    ] = 0.05,
    greedy: Annotated[bool, typer.Option(help="Play greedily (epsilon 0).")] = False,
    env: Annotated[
        str | None, typer.Option(help="Another environment id with the same actions.")
    ] = None,
    out: OutOption = None,
    *,
    common: Common,
) -> None:
    """Mean ± std return over whole episodes; writes metrics.json."""
    import numpy as np

    from lbdl_apps.core.checkpoint import atomic_path
    from lbdl_apps.dqn.api import load

    agent = load(checkpoint, common.torch_device(), env)
    eps = 0.0 if greedy else epsilon
    returns = agent.evaluate(episodes, eps, common.seed)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "env": agent.settings.env_id,
                    "episodes": episodes,
                    "epsilon": eps,
                    "mean_return": mean,
                    "std_return": std,
                    "returns": returns,
                },
                indent=2,
            )
        )
    print(
        f"{agent.settings.env_id}: return {mean:.2f} ± {std:.2f} over {episodes} episodes "
        f"(epsilon {eps:g}); results: {folder}"
    )


@verb(app)
def play(
    checkpoint: Annotated[Path, typer.Argument(help="A dqn .safetensors file or run folder.")],
    render: Annotated[str | None, typer.Option(help="'human' opens a window.")] = None,
    record: Annotated[Path | None, typer.Option(help="Write a video: out.mp4 or out.gif.")] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to play.")] = 1,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after N agent steps.")] = None,
    epsilon: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Exploration while playing.")
    ] = 0.0,
    overlay: Annotated[
        bool, typer.Option(help="Draw Q-values and the return beside the game.")
    ] = True,
    fps: Annotated[int, typer.Option(min=1, help="Frames per second of the video.")] = 30,
    env: Annotated[
        str | None, typer.Option(help="Another environment id with the same actions.")
    ] = None,
    *,
    common: Common,
) -> None:
    """Watch an agent play (--render human) or record it (--record out.mp4|out.gif)."""
    from lbdl_apps.core.errors import LbdlError
    from lbdl_apps.dqn.api import load
    from lbdl_apps.dqn.play import check_video_path
    from lbdl_apps.dqn.play import play as run_play

    if render not in (None, "human"):
        raise LbdlError(f"--render {render}: the only window mode is 'human'")
    if render is None and record is None:
        raise LbdlError("play: give --render human or --record out.mp4|out.gif")
    if record is not None:
        check_video_path(record)
    agent = load(checkpoint, common.torch_device(), env)
    returns = run_play(
        agent, episodes, epsilon, render, record, max_steps, overlay, common.seed, fps
    )
    shown = ", ".join(f"{r:g}" for r in returns)
    print(f"{agent.settings.env_id}: returns {shown}" + (f"; video: {record}" if record else ""))
