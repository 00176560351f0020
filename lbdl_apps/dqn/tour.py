"""The dqn step of `lbdl tour`: train on CartPole-v1, evaluate greedily against a random
policy, show the learning curve (book 6.7)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in
from lbdl_apps.dqn.cli import EvaluateArgs, TrainArgs
from lbdl_apps.dqn.task import evaluate, train


@register_tour_step("dqn", "Deep Q-learning (book 6.7)")
def dqn_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    names = ("total_steps", "learning_starts", "eval_every", "eval_episodes", "hidden")
    sizes = (2500, 500, 1250, 3, "64,64") if quick else (20_000, 1000, 2000, 10, None)
    args = TrainArgs(env="CartPole-v1", **dict(zip(names, sizes, strict=True)))
    trained, _ = train_in(workdir, train, args, common)
    episodes = 3 if quick else 20
    checkpoint = str(trained)
    seeded = replace(common, seed=common.seed + 1)
    scores = {}
    for name, epsilon in (("greedy", 0.0), ("random", 1.0)):
        out = workdir / f"evaluate_{name}"
        chosen = EvaluateArgs(checkpoint=checkpoint, episodes=episodes, epsilon=epsilon, out=out)
        scores[f"{name}_return"] = evaluate(chosen, seeded).mean
    return TourResult(
        metrics=scores,
        images=[trained.parent / "learning_curve.png"],
        notes=f"DQN (MLP Q-network) trained {sizes[0]} steps on CartPole-v1 (max return 500)"
        + (" (--quick: a short run, far from solved)" if quick else ""),
    )
