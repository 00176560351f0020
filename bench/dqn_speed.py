"""Environment steps per second of `lbdl dqn train` against Stable-Baselines3 `DQN`.

Both learn in the same process, one after the other and alternating over `--repeats`, with
the same environment object factory (our `make_env`: for Pong gymnasium's AtariPreprocessing
with frame skip 4 on ALE/Pong-v5 with frameskip=1, sticky actions 0.25, frame stack 4,
reward clipping), one environment and the same hyper-parameters: CartPole-v1 with the RL
Zoo settings (MLP 256-256, batch 64, train every 256 steps for 128 gradient steps, target
every 10 steps), Pong with the Nature CNN (batch 32, train every 4 steps, target every 1000
steps, Adam 1e-4). No evaluation runs during the timed part. Figures: steps/s over the whole
run (wall) and steps per CPU-second (the machine is shared: the CPU-time ratio is the
steadier one). Goals: ratio >= 1.5 on CartPole, >= 1.1 on Pong.

    python bench/dqn_speed.py --quick --threads 1   # ~2 minutes
    python bench/dqn_speed.py --threads 1           # writes bench/results/dqn_speed.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lbdl_apps.core.options import Common
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.data import EnvSettings, make_env
from lbdl_apps.dqn.task import train

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, read_result, write_result
except ImportError:
    from bench.common import environment, read_result, write_result

NAME = "dqn_speed"
GOALS = {"CartPole-v1": 1.5, "ALE/Pong-v5": 1.1}
SETTINGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "buffer_size": 100_000,
        "batch_size": 64,
        "lr": 2.3e-3,
        "learning_starts": 1000,
        "train_freq": 256,
        "gradient_steps": 128,
        "target_update": 10,
        "eps_end": 0.04,
        "eps_fraction": 0.16,
        "hidden": [256, 256],
    },
    "ALE/Pong-v5": {
        "buffer_size": 10_000,
        "batch_size": 32,
        "lr": 1e-4,
        "learning_starts": 1000,
        "train_freq": 4,
        "gradient_steps": 1,
        "target_update": 1000,
        "eps_end": 0.01,
        "eps_fraction": 0.1,
        "hidden": [512],
    },
}
STEPS = {
    "quick": {"CartPole-v1": 3000, "ALE/Pong-v5": 1300},
    "full": {"CartPole-v1": 20_000, "ALE/Pong-v5": 3000},
}


def run_ours(env_id: str, steps: int, seed: int) -> dict[str, float]:
    hp = SETTINGS[env_id]
    with tempfile.TemporaryDirectory() as folder:
        args = TrainArgs(
            env=env_id,
            total_steps=steps,
            eval_every=10 * steps,
            eval_episodes=1,
            run_dir=Path(folder),
            exist_ok=True,
            **hp,
        )
        summary = train(args, Common(quiet=True, seed=seed))
    # the loop's own figures: the evaluation after the last step is left out of both
    return {"steps_per_s": summary["steps_per_s"], "cpu_s": summary["cpu_s"]}


def run_sb3(env_id: str, steps: int, seed: int) -> dict[str, float]:
    from stable_baselines3 import DQN

    hp = SETTINGS[env_id]
    env = make_env(EnvSettings.for_env(env_id))
    atari = len(env.observation_space.shape) == 3
    model = DQN(
        "CnnPolicy" if atari else "MlpPolicy",
        env,
        learning_rate=hp["lr"],
        buffer_size=hp["buffer_size"],
        learning_starts=hp["learning_starts"],
        batch_size=hp["batch_size"],
        gamma=0.99,
        train_freq=hp["train_freq"],
        gradient_steps=hp["gradient_steps"],
        target_update_interval=hp["target_update"],
        exploration_fraction=hp["eps_fraction"],
        exploration_final_eps=hp["eps_end"],
        max_grad_norm=10,
        policy_kwargs={"net_arch": hp["hidden"]} if not atari else {"normalize_images": True},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    model.learn(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    env.close()
    return {"steps_per_s": steps / wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--envs", nargs="+", default=list(SETTINGS))
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    mode = "quick" if options.quick else "full"
    repeats = options.repeats or (1 if options.quick else 2)
    result: dict[str, Any] = {"mode": mode, "before": environment(), "envs": {}}
    for env_id in options.envs:
        steps = STEPS[mode][env_id]
        runs: dict[str, list[dict[str, float]]] = {"lbdl": [], "sb3": []}
        for repeat in range(repeats):
            order = [("lbdl", run_ours), ("sb3", run_sb3)]
            for name, fn in order if repeat % 2 == 0 else order[::-1]:
                measured = fn(env_id, steps, seed=repeat)
                measured["loadavg_after"] = list(os.getloadavg())
                runs[name].append(measured)
                print(
                    f"{env_id} {name}: {measured['steps_per_s']:.0f} steps/s, "
                    f"{steps / measured['cpu_s']:.0f} steps/CPU-s",
                    flush=True,
                )
        ours = statistics.median(r["steps_per_s"] for r in runs["lbdl"])
        peer = statistics.median(r["steps_per_s"] for r in runs["sb3"])
        ours_cpu = statistics.median(steps / r["cpu_s"] for r in runs["lbdl"])
        peer_cpu = statistics.median(steps / r["cpu_s"] for r in runs["sb3"])
        result["envs"][env_id] = {
            "steps": steps,
            "settings": SETTINGS[env_id],
            "lbdl_steps_per_s": ours,
            "sb3_steps_per_s": peer,
            "ratio_wall": ours / peer,
            "lbdl_steps_per_cpu_s": ours_cpu,
            "sb3_steps_per_cpu_s": peer_cpu,
            "ratio_cpu": ours_cpu / peer_cpu,
            "goal_ratio": GOALS[env_id],
            "runs": runs,
        }
        print(
            f"{env_id}: ratio {ours / peer:.2f} (wall), {ours_cpu / peer_cpu:.2f} (CPU time); "
            f"goal >= {GOALS[env_id]}",
            flush=True,
        )
    result["after"] = environment()
    earlier = read_result(NAME)
    if earlier and set(options.envs) != set(SETTINGS):  # one env measured again: keep the other
        result["envs"] = {**earlier.get("envs", {}), **result["envs"]}
        result["earlier_runs"] = {"before": earlier.get("before"), "after": earlier.get("after")}
    if not options.quick:
        print(f"wrote {write_result(NAME, result)}")


if __name__ == "__main__":
    main()
