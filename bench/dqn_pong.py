"""Pong with `lbdl dqn train`: a fixed budget of environment steps (500k by default, 2M
emulator frames) that shows the evaluation return climbing from -21, with its learning
curve in the run folder. Resumable across sittings: `--minutes N` stops (saving the state
and the replay memory) after N minutes; run again with `--resume` to go on.

Settings: the Nature-DQN network with Double-DQN targets and 3-step returns on ALE/Pong-v5
with the standard preprocessing (frameskip=1 in the emulator, AtariPreprocessing frame
skip 4 with max-pooling, 84x84 gray, 4-frame stack, no-op reset, episodic life, fire
reset, reward clipping, sticky actions 0.25), replay 100k, Adam 1e-4 (epsilon 1.5e-4),
batch 32, train every 4 steps, target copied every 1000 steps, learning from step 10k,
epsilon 1 -> 0.01 over the first 50k steps; evaluation every 25k steps (5 episodes,
epsilon 0.05). On a GPU it reports the frames needed to reach > 0 and > 18.

    python bench/dqn_pong.py --quick                       # ~2 minutes: 1500 steps
    python bench/dqn_pong.py --minutes 60                  # a first sitting
    python bench/dqn_pong.py --resume --minutes 60         # the next ones
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

import torch

from lbdl_apps.core.errors import EXIT_INTERRUPTED
from lbdl_apps.core.options import Common
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.task import train

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

NAME = "dqn_pong"
RUN_DIR = Path("runs/dqn/pong_bench")


def settings(steps: int, quick: bool) -> dict[str, Any]:
    return {
        "env": "ALE/Pong-v5",
        "total_steps": steps,
        "buffer_size": 100_000,
        "batch_size": 32,
        "lr": 1e-4,
        "adam_eps": 1.5e-4,
        "learning_starts": 500 if quick else 10_000,
        "train_freq": 4,
        "target_update": 1000,
        "eps_end": 0.01,
        "eps_fraction": 0.1,
        "double": True,
        "n_step": 3,
        "eval_every": 750 if quick else 25_000,
        "eval_episodes": 1 if quick else 5,
        "save_replay": True,
    }


def first_frames_above(evals: list[list[float]], threshold: float, frames_per_step: int) -> Any:
    return next((int(s * frames_per_step) for s, mean, _ in evals if mean > threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    steps = 1500 if options.quick else options.steps
    run_dir = (
        options.run_dir.with_name(options.run_dir.name + "_quick")
        if options.quick
        else options.run_dir
    )
    common = Common(device=options.device, threads=options.threads, quiet=True)
    args = (
        TrainArgs(resume=run_dir)
        if options.resume
        else TrainArgs(**settings(steps, options.quick), run_dir=run_dir, exist_ok=options.quick)
    )
    if options.minutes:

        def stop(*_: Any) -> None:  # as a Ctrl-C: the run saves its state and exits 130
            signal.raise_signal(signal.SIGINT)

        signal.signal(signal.SIGALRM, stop)
        signal.alarm(int(options.minutes * 60))
    result: dict[str, Any] = {"mode": "quick" if options.quick else "full", "before": environment()}
    finished = True
    try:
        summary = train(args, common)
        result["summary"] = summary
    except (KeyboardInterrupt, SystemExit) as stopped:
        if isinstance(stopped, SystemExit) and stopped.code != EXIT_INTERRUPTED:
            raise
        finished = False
        print(f"stopped; go on with: python bench/dqn_pong.py --resume --run-dir {run_dir}")
    signal.alarm(0)
    state = torch.load(run_dir / "state.pt", weights_only=True)
    progress = state["progress"]
    evals = progress["evals"]
    result.update(
        {
            "finished": finished,
            "budget_steps": steps,
            "steps_done": progress["step"],
            "frames_done": progress["step"] * 4,
            "episodes": len(progress["episodes"]),
            "evals_frames_mean_std": [[int(s * 4), m, sd] for s, m, sd in evals],
            "first_train_returns": [e[1] for e in progress["episodes"][:10]],
            "last_train_returns": [e[1] for e in progress["episodes"][-10:]],
            "frames_to_above_0": first_frames_above(evals, 0.0, 4),
            "frames_to_above_18": first_frames_above(evals, 18.0, 4),
            "device": str(common.torch_device()),
            "run_dir": str(run_dir),
            "learning_curve": str(run_dir / "learning_curve.png"),
            "after": environment(),
        }
    )
    print(
        f"{progress['step']:,} steps; evaluations (frames, mean, std): "
        f"{result['evals_frames_mean_std']}"
    )
    if not options.quick:
        print(f"wrote {write_result(NAME, result)}")


if __name__ == "__main__":
    main()
