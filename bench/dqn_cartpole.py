"""Steps to solve CartPole-v1 with `lbdl dqn train`: the first evaluation whose mean return
(10 greedy episodes, every 1000 steps) reaches 475, over 5 seeds, and the CPU time it took.

Settings: the defaults of `lbdl dqn train` for CartPole-v1 (RL Baselines3 Zoo's: MLP 256-256,
Adam 2.3e-3, batch 64, train every 256 steps for 128 gradient steps, target copied every 10
steps, epsilon 1 -> 0.04 over 16% of 50k steps), each seed stopping at its first evaluation
>= 475 (`--stop-return 475`) or at the step cap. Goal: median <= 100k steps.

    python bench/dqn_cartpole.py --quick --threads 1   # one seed, 10k steps at most
    python bench/dqn_cartpole.py --threads 1           # writes bench/results/dqn_cartpole.json

Each run is `lbdl dqn train --total-steps 50000 --eval-every 1000 --eval-episodes 10
--stop-return 475 --seed S --threads 1`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lbdl_apps.core.options import Common
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.task import train

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

NAME = "dqn_cartpole"
SOLVED = 475.0
GOAL_STEPS = 100_000


def solve(seed: int, total_steps: int) -> dict[str, Any]:
    """One seed: the first evaluation >= 475, or none within `total_steps`."""
    with tempfile.TemporaryDirectory() as folder:
        args = TrainArgs(
            env="CartPole-v1",
            total_steps=total_steps,
            eval_every=1000,
            eval_episodes=10,
            stop_return=SOLVED,
            run_dir=Path(folder),
            exist_ok=True,
        )
        cpu, wall = time.process_time(), time.perf_counter()
        summary = train(args, Common(quiet=True, seed=seed))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows = (Path(folder) / "metrics.csv").read_text().splitlines()[1:]
    evals = [(int(float(r.split(",")[0])), float(r.split(",")[4])) for r in rows]
    solved = next((step for step, mean in evals if mean >= SOLVED), None)
    return {
        "seed": seed,
        "steps_to_475": solved,
        "best_eval_return": summary["best_eval_return"],
        "last_eval_return": summary["last_eval_return"],
        "steps_run": summary["steps"],
        "cpu_s": cpu,
        "wall_s": wall,
        "evals": evals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--total-steps", type=int, default=None)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    seeds = options.seeds or (1 if options.quick else 5)
    total = options.total_steps or (10_000 if options.quick else 50_000)
    result: dict[str, Any] = {"mode": "quick" if options.quick else "full", "before": environment()}
    runs = []
    for seed in range(seeds):
        run = solve(seed, total)
        runs.append(run)
        print(
            f"seed {seed}: steps to 475 {run['steps_to_475']}, best {run['best_eval_return']:.1f}, "
            f"{run['cpu_s']:.0f} CPU-s",
            flush=True,
        )
    steps = [r["steps_to_475"] if r["steps_to_475"] is not None else float("inf") for r in runs]
    median = statistics.median(steps)
    result.update(
        {
            "step_cap": total,
            "median_steps_to_475": median if median != float("inf") else None,
            "solved_seeds": sum(s != float("inf") for s in steps),
            "goal_median_steps": GOAL_STEPS,
            "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "total_cpu_s": sum(r["cpu_s"] for r in runs),
            "runs": runs,
            "after": environment(),
        }
    )
    print(
        f"median steps to 475: {median} (goal <= {GOAL_STEPS}); "
        f"solved {result['solved_seeds']}/{seeds}"
    )
    if not options.quick:
        print(f"wrote {write_result(NAME, result)}")


if __name__ == "__main__":
    main()
