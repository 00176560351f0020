"""The deep Q-learning agent loop (book 6.7): act epsilon-greedily in vectorized
environments, store transitions in the replay memory, let the learner regress Q(s, a) on the
Bellman target of its target network, evaluate periodically, checkpoint; save the state on
Ctrl-C/SIGTERM and resume from it. Runs are started by `task.train`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from lbdl_apps.core.checkpoint import load_state, save_checkpoint, save_state
from lbdl_apps.core.errors import EXIT_INTERRUPTED, LbdlError, report
from lbdl_apps.core.options import Common
from lbdl_apps.core.progress import add_task, progress_bar
from lbdl_apps.core.runs import MetricsLog
from lbdl_apps.core.signals import StopSignals
from lbdl_apps.dqn.api import TASK
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.data import episode_stats, make_vector_env, newest_frames
from lbdl_apps.dqn.defaults import env_settings, hyper_parameters
from lbdl_apps.dqn.learner import Learner
from lbdl_apps.dqn.loss import update_target
from lbdl_apps.dqn.model import q_network_config
from lbdl_apps.dqn.plots import plot_learning_curve
from lbdl_apps.dqn.policy import epsilon_at, evaluate_policy, select_actions
from lbdl_apps.dqn.replay import ReplayMemory, check_memory

REFRESH_S = 0.5


@dataclass
class RunProgress:
    """What the run has done so far; saved in state.pt."""

    step: int = 0
    last_train: int = 0
    last_target: int = 0
    last_eval: int = 0
    episodes: list[list[float]] = field(default_factory=list)  # [step, return, length]
    evals: list[list[float]] = field(default_factory=list)  # [step, mean, std]
    best: float | None = None
    losses: list[list[float]] = field(default_factory=list)  # [step, mean loss]

    def recent_return(self, n: int = 100) -> float:
        returns = [e[1] for e in self.episodes[-n:]]
        return float(np.mean(returns)) if returns else float("nan")


class Run:
    """One training run: environments, replay memory, learner, bookkeeping, files. `args`
    are resolved (no None left, see defaults.resolve)."""

    def __init__(self, args: TrainArgs, common: Common, run_dir: Path) -> None:
        self.args, self.common, self.run_dir = args, common, run_dir
        self.device = common.torch_device()
        self.settings = env_settings(args)
        self.envs = make_vector_env(self.settings, args.num_envs, args.async_envs)
        self.n_actions = int(self.envs.single_action_space.n)
        obs_shape = self.envs.single_observation_space.shape
        self.config = q_network_config(obs_shape, self.n_actions, args.widths, args.dueling)
        frame_shape = obs_shape[1:] if self.settings.stack > 1 else obs_shape
        frame_dtype = self.envs.single_observation_space.dtype
        check_memory(args.buffer_size, frame_shape, frame_dtype)
        self.memory = ReplayMemory(
            args.buffer_size,
            args.num_envs,
            frame_shape,
            frame_dtype,
            stack=self.settings.stack,
            n_step=args.n_step,
            gamma=args.gamma,
            seed=common.seed,
        )
        self.learner = Learner.create(self.config, args, self.device)
        self.rng = np.random.default_rng(common.seed)
        self.progress = RunProgress()
        self.log = MetricsLog(run_dir)
        self.warm_until = args.learning_starts
        self.eval_seconds = self.eval_cpu_seconds = 0.0
        self.signals = StopSignals()
        self.losses: list[torch.Tensor] = []  # since the last evaluation

    def describe(self) -> str:
        """The line that says what is trained on what."""
        args = self.args
        return (
            f"env {args.env}: {self.n_actions} actions, "
            f"observations {self.envs.single_observation_space.shape}, "
            f"{args.num_envs} env(s); replay {args.buffer_size:,}; Q-network {self.config.kind}"
            + (" dueling" if args.dueling else "")
            + (" double" if args.double else "")
            + (f" {args.n_step}-step" if args.n_step > 1 else "")
        )

    # ---------------------------------------------------------------- files
    def meta(self) -> dict[str, Any]:
        return {
            "task": TASK,
            "config": asdict(self.config),
            "env": self.settings.to_dict(),
            "hyper_parameters": hyper_parameters(self.args),
            "step": self.progress.step,
            "frames": self.progress.step * self.settings.frames_per_step,
            "seed": self.common.seed,
        }

    def save(self, with_replay: bool) -> None:
        """last.safetensors, state.pt, the curve and (with --save-replay) replay.npz."""
        learner, progress = self.learner, self.progress
        save_checkpoint(self.run_dir / "last.safetensors", learner.online.state_dict(), self.meta())
        save_state(
            self.run_dir / "state.pt",
            {
                "online": learner.online.state_dict(),
                "target": learner.target.state_dict(),
                "optimizer": learner.optimizer.state_dict(),
                "updates": learner.updates,
                "progress": asdict(progress),
                "torch_rng": torch.get_rng_state(),
                "rng": json.dumps(self.rng.bit_generator.state),
                "memory_rng": json.dumps(self.memory.rng.bit_generator.state),
            },
        )
        if with_replay:
            self.memory.save(self.run_dir / "replay.npz")
        plot_learning_curve(progress, self.settings, self.run_dir / "learning_curve.png")

    def restore(self, state: dict[str, Any] | None = None) -> None:
        """Go on from a saved state (default: the run folder's state.pt): weights, optimizer,
        counters, RNG states and, when saved, the replay memory."""
        path = self.run_dir / "state.pt"
        state = load_state(path) if state is None else state
        learner = self.learner
        try:
            learner.online.load_state_dict(state["online"])
            learner.target.load_state_dict(state["target"])
            learner.optimizer.load_state_dict(state["optimizer"])
            learner.updates = state["updates"]
            self.progress = RunProgress(**state["progress"])
            torch.set_rng_state(state["torch_rng"])
            self.rng.bit_generator.state = json.loads(state["rng"])
            self.memory.rng.bit_generator.state = json.loads(state["memory_rng"])
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise LbdlError(f"{path}: does not match this run ({error})") from None
        replay = self.run_dir / "replay.npz"
        if self.args.save_replay and replay.exists():
            self.memory.load(replay)
            self.warm_until = 0
        else:  # refill the memory before learning again
            self.warm_until = self.progress.step + min(
                self.args.learning_starts or 0, self.args.buffer_size
            )
            self.warm_until = max(self.warm_until, self.progress.step + self.args.batch_size)

    # ---------------------------------------------------------------- loop
    def train(self, console: Console) -> dict[str, Any]:
        """Step to --total-steps (or the first evaluation reaching --stop-return) and return
        a summary. Ctrl-C or SIGTERM saves the state (a step is finished first) and exits
        with code 130."""
        self.console = console
        self.t0, self.step0 = time.perf_counter(), self.progress.step
        cpu0 = time.process_time()
        with self.signals.installed():
            try:
                with progress_bar(self.common.quiet, unit="steps") as self.bar:
                    self.task = add_task(self.bar, TASK, self.args.total_steps, self.step0)
                    self._loop()
            except KeyboardInterrupt:
                self.signals.hold()
                self.save(self.args.save_replay)
                report(
                    f"interrupted: training state saved in {self.run_dir / 'state.pt'} "
                    f"(continue with --resume {self.run_dir})"
                )
                raise SystemExit(EXIT_INTERRUPTED) from None
            finally:
                self.envs.close()
        progress = self.progress
        return {
            "steps": progress.step,
            "steps_per_s": self.speed(),
            "cpu_s": time.process_time() - cpu0 - self.eval_cpu_seconds,
            "best_eval_return": progress.best,
            "last_eval_return": progress.evals[-1][1] if progress.evals else None,
            "episodes": len(progress.episodes),
            "updates": self.learner.updates,
        }

    def _loop(self) -> None:
        args, progress = self.args, self.progress
        obs, info = self.envs.reset(seed=self.common.seed + progress.step)
        lives = np.asarray(info.get("lives", np.zeros(args.num_envs)))
        self.memory.start(newest_frames(obs, self.settings.stack))
        last_refresh = 0.0
        while progress.step < args.total_steps:
            epsilon = epsilon_at(progress.step, args)
            with self.signals.deferred():
                obs, lives = self._step(obs, lives, epsilon)
            if time.perf_counter() - last_refresh > REFRESH_S:
                last_refresh = time.perf_counter()
                self._show(epsilon)
            due = progress.step - progress.last_eval >= args.eval_every
            if (due or progress.step >= args.total_steps) and self._checkpoint(epsilon):
                break

    def _step(
        self, obs: np.ndarray, lives: np.ndarray, epsilon: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """One vector step: act, store the transitions, learn when due, update the target
        network when due; the next observations and lives."""
        args, progress, stack = self.args, self.progress, self.settings.stack
        learner, rng = self.learner, self.rng
        actions = select_actions(learner.online, obs, epsilon, self.n_actions, rng, self.device)
        obs, rewards, terminated, truncated, info = self.envs.step(actions)
        ended = terminated | truncated
        learn_terminated = terminated
        if self.settings.episodic_life and "lives" in info:
            now = np.asarray(info["lives"])
            learn_terminated = terminated | ((now < lives) & ~ended)
            lives = now
        final = None
        if ended.any():
            last = [info["final_obs"][i] if ended[i] else obs[i] for i in range(args.num_envs)]
            final = newest_frames(np.stack(last), stack)
        self.memory.add(
            actions,
            rewards,
            learn_terminated,
            truncated & ~terminated,
            newest_frames(obs, stack),
            ended,
            final,
        )
        progress.step += args.num_envs
        for _, ret, length in episode_stats(info):
            progress.episodes.append([progress.step, ret, length])
        self._learn()
        if progress.step - progress.last_target >= args.target_update:
            update_target(learner.target, learner.online, args.tau)
            progress.last_target = progress.step
        return obs, lives

    def _learn(self) -> None:
        args, progress = self.args, self.progress
        due = progress.step - progress.last_train
        if progress.step < max(self.warm_until, args.batch_size) or due < args.train_freq:
            return
        updates = args.gradient_steps if args.gradient_steps > 0 else due
        self.losses += self.learner.train_round(self.memory, updates)
        progress.last_train = progress.step

    def speed(self) -> float:
        """Environment steps per second of training (evaluations excluded)."""
        seconds = time.perf_counter() - self.t0 - self.eval_seconds
        return (self.progress.step - self.step0) / max(1e-9, seconds)

    def _show(self, epsilon: float) -> None:
        progress = self.progress
        info = (
            f"episodes {len(progress.episodes)}  return {progress.recent_return():.1f}  "
            f"eps {epsilon:.3f}  {self.speed():.0f} steps/s"
        )
        self.bar.update(self.task, completed=progress.step, refresh=True, info=info)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> tuple[float, float]:
        """Mean and std of the returns of --eval-episodes episodes at --eval-epsilon."""
        args = self.args
        started, started_cpu = time.perf_counter(), time.process_time()
        returns = evaluate_policy(
            self.learner.online,
            self.settings,
            args.eval_episodes,
            args.eval_epsilon,
            self.common.seed + 10_000 + len(self.progress.evals),
            self.device,
        )
        self.eval_seconds += time.perf_counter() - started
        self.eval_cpu_seconds += time.process_time() - started_cpu
        return float(np.mean(returns)), float(np.std(returns))

    def _checkpoint(self, epsilon: float) -> bool:
        """Evaluate, then log and save (a Ctrl-C waits for that); True when --stop-return
        is reached."""
        progress, speed = self.progress, self.speed()
        mean, std = self.evaluate()
        with self.signals.deferred():
            progress.last_eval = progress.step
            progress.evals.append([progress.step, mean, std])
            loss = float(torch.stack(self.losses).mean()) if self.losses else float("nan")
            self.losses = []
            progress.losses.append([progress.step, loss])
            improved = progress.best is None or mean > progress.best
            if improved:
                progress.best = mean
                weights = self.learner.online.state_dict()
                save_checkpoint(self.run_dir / "model.safetensors", weights, self.meta())
            row = {
                "step": progress.step,
                "frames": progress.step * self.settings.frames_per_step,
                "episodes": len(progress.episodes),
                "train_return": progress.recent_return(),
                "eval_return": mean,
                "eval_std": std,
                "epsilon": epsilon,
                "loss": loss,
                "steps_per_s": speed,
            }
            self.log.append(row)
            self.save(self.args.save_replay)
        self.console.print(
            f"step {progress.step:,}  eval {mean:.1f} ± {std:.1f}  "
            f"train {row['train_return']:.1f}  eps {epsilon:.3f}  loss {loss:.4g}  "
            f"{speed:.0f} steps/s" + ("  (best)" if improved else ""),
            highlight=False,
        )
        return self.args.stop_return is not None and mean >= self.args.stop_return
