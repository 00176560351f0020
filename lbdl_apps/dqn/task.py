"""What the `lbdl dqn` verbs do (book 6.7): `train` runs the agent loop (agent.py) in a run
folder, new or resumed; `evaluate` scores a checkpoint over whole episodes; `play` watches
or records it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.core.run import start_run
from lbdl_apps.core.runs import run_folder, save_run_config
from lbdl_apps.dqn.agent import Run
from lbdl_apps.dqn.api import TASK, load
from lbdl_apps.dqn.cli import EvaluateArgs, PlayArgs, TrainArgs
from lbdl_apps.dqn.defaults import resolve


def steps_done(args: TrainArgs, state: dict[str, Any]) -> str | None:
    """Why a dqn run's saved state leaves nothing to resume (None: steps are left)."""
    total = resolve(args).total_steps
    if state.get("progress", {}).get("step", 0) >= total:
        return f"finished its {total} steps"
    return None


def train(args: TrainArgs, common: Common) -> dict[str, Any]:
    """Train a DQN agent; returns a summary (steps, steps/s, best and last evaluation, the
    run folder). The run folder is printed at the end."""
    args, common, state = start_run(args, common, TASK, steps_done)
    args = resolve(args)
    console = Console(quiet=common.quiet)
    run = Run(args, common, run_folder(TASK, args))
    if state is None:
        save_run_config(run.run_dir, TASK, args, common, run.config)
    else:
        run.restore(state)
        console.print(f"resuming at step {run.progress.step:,}")
    console.print(run.describe(), highlight=False)
    summary = run.train(console)
    print(f"run folder: {run.run_dir}")
    return {**summary, "run_dir": str(run.run_dir)}


@dataclass
class Evaluation:
    """The returns of `evaluate` and where they were written."""

    env: str
    epsilon: float
    returns: list[float]
    folder: Path

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """Play --episodes whole episodes (greedily with --greedy); write metrics.json."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    agent = load(args.checkpoint, common.torch_device(), args.env, args)
    epsilon = 0.0 if args.greedy else args.epsilon
    returns = agent.evaluate(args.episodes, epsilon, common.seed)
    result = Evaluation(agent.settings.env_id, epsilon, returns, folder)
    summary = {
        "checkpoint": str(args.checkpoint),
        "env": result.env,
        "episodes": args.episodes,
        "epsilon": epsilon,
        "mean_return": result.mean,
        "std_return": result.std,
        "returns": returns,
    }
    write_json(result.folder / "metrics.json", summary)
    return result


def play(args: PlayArgs, common: Common) -> tuple[str, list[float]]:
    """Play in a window or into a video; the environment id and the episodes' returns."""
    from lbdl_apps.dqn.play import check_video_path
    from lbdl_apps.dqn.play import play as play_agent

    if args.record is not None:
        check_video_path(args.record)
    agent = load(args.checkpoint, common.torch_device(), args.env, args)
    returns = play_agent(
        agent,
        args.episodes,
        args.epsilon,
        args.render,
        args.record,
        args.max_steps,
        args.overlay,
        common.seed,
        args.fps,
    )
    return agent.settings.env_id, returns
