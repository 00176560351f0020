"""The dqn step of `lbdl tour`: train on CartPole-v1, evaluate greedily against a random
policy, show the learning curve (book 6.7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.tour import TourResult, register_tour_step
from lbdl_apps.dqn.agent import TrainArgs, run_training
from lbdl_apps.dqn.api import load


@register_tour_step("dqn", "Deep Q-learning (book 6.7)")
def dqn_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    run_dir = workdir / "train"
    steps = 2500 if quick else 20_000
    args = TrainArgs(
        env="CartPole-v1",
        total_steps=steps,
        learning_starts=500 if quick else 1000,
        eval_every=steps // 2 if quick else 2000,
        eval_episodes=3 if quick else 10,
        hidden=[64, 64] if quick else None,
        run_dir=run_dir,
        exist_ok=True,
    )
    run_training(args, common)
    agent = load(run_dir / "model.safetensors")
    trained = agent.evaluate(episodes=3 if quick else 20, epsilon=0.0, seed=common.seed + 1)
    random = agent.evaluate(episodes=3 if quick else 20, epsilon=1.0, seed=common.seed + 1)
    return TourResult(
        metrics={"greedy_return": float(np.mean(trained)), "random_return": float(np.mean(random))},
        images=[run_dir / "learning_curve.png"],
        notes=f"DQN (MLP Q-network) trained {steps} steps on CartPole-v1 (max return 500)"
        + (" (--quick: a short run, far from solved)" if quick else ""),
    )
