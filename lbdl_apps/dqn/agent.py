"""The deep Q-learning agent loop (book 6.7): act epsilon-greedily in vectorized
environments, store transitions in the replay memory, regress Q(s, a) on the Bellman target
of a target network, evaluate periodically, checkpoint, resume."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from lbdl_apps.core.checkpoint import load_state, save_checkpoint, save_state
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.runs import MetricsLog, make_run_dir, save_run_config
from lbdl_apps.dqn.env import EnvSettings, episode_stats, make_env, make_vector_env, newest_frames
from lbdl_apps.dqn.loss import td_loss, td_targets, update_target
from lbdl_apps.dqn.model import build_q_network, q_network_config
from lbdl_apps.dqn.plots import plot_learning_curve
from lbdl_apps.dqn.replay import ReplayMemory, check_memory

TASK = "dqn"
REFRESH_S = 0.5
MAX_EVAL_STEPS = 27_000  # agent steps per evaluation episode (108k Atari frames, as in v5)

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
    "hidden": [256, 256],
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
    "hidden": [512],
    "eval_every": 250_000,
    "eval_episodes": 10,
    "eval_epsilon": 0.05,
}


@dataclass
class TrainArgs:
    """Everything `lbdl dqn train` was asked for (None: the environment's default); saved
    as the run's config.json and, resolved, in the checkpoint."""

    env: str = "CartPole-v1"
    total_steps: int | None = None
    num_envs: int = 1
    async_envs: bool = False
    buffer_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    adam_eps: float | None = None
    gamma: float = 0.99
    learning_starts: int | None = None
    train_freq: int | None = None
    gradient_steps: int | None = None
    target_update: int | None = None
    tau: float = 1.0
    eps_start: float = 1.0
    eps_end: float | None = None
    eps_fraction: float | None = None
    loss: str = "huber"
    double: bool = False
    dueling: bool = False
    n_step: int = 1
    hidden: list[int] | None = None
    max_grad_norm: float | None = 10.0
    eval_every: int | None = None
    eval_episodes: int | None = None
    eval_epsilon: float | None = None
    stop_return: float | None = None
    save_replay: bool = False
    sticky_actions: float = 0.25
    full_action_space: bool = False
    episodic_life: bool = True
    fire_reset: bool = True
    clip_rewards: bool = True
    noop_max: int = 30
    frame_skip: int = 4
    name: str | None = None
    run_dir: Path | None = None
    exist_ok: bool = False
    resume: Path | None = None

    def env_settings(self) -> EnvSettings:
        return EnvSettings.for_env(
            self.env,
            frame_skip=self.frame_skip,
            noop_max=self.noop_max,
            sticky_actions=self.sticky_actions,
            full_action_space=self.full_action_space,
            episodic_life=self.episodic_life,
            fire_reset=self.fire_reset,
            clip_rewards=self.clip_rewards,
        )

    def resolved(self, settings: EnvSettings) -> TrainArgs:
        """These arguments with every None replaced by the environment's default."""
        defaults = (
            ATARI_DEFAULTS
            if settings.atari
            else {**CLASSIC_DEFAULTS, **ENV_DEFAULTS.get(self.env, {})}
        )
        values = asdict(self)
        for key, value in defaults.items():
            if values[key] is None:
                values[key] = value
        args = TrainArgs(**values)
        args.check()
        return args

    def check(self) -> None:
        problems = {
            "--loss": self.loss not in ("huber", "mse") and f"{self.loss}: use huber or mse",
            "--tau": not 0 < self.tau <= 1 and f"{self.tau}: must be in (0, 1]",
            "--gamma": not 0 <= self.gamma <= 1 and f"{self.gamma}: must be in [0, 1]",
            "--n-step": self.n_step < 1 and f"{self.n_step}: must be at least 1",
            "--sticky-actions": not 0 <= self.sticky_actions < 1
            and f"{self.sticky_actions}: must be in [0, 1)",
            "--gradient-steps": self.gradient_steps == 0 and "0: use a positive number or -1",
        }
        for flag, problem in problems.items():
            if problem:
                raise LbdlError(f"{flag} {problem}")

    def hyper_parameters(self) -> dict[str, Any]:
        """The learning settings (no paths), as stored in the checkpoint."""
        skip = {"name", "run_dir", "exist_ok", "resume"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


def epsilon_at(step: int, args: TrainArgs) -> float:
    """Linear decay from eps_start to eps_end over the first eps_fraction of the steps."""
    span = max(1.0, args.eps_fraction * args.total_steps)
    return args.eps_start + (args.eps_end - args.eps_start) * min(1.0, step / span)


def select_actions(
    q_net: nn.Module,
    obs: np.ndarray,
    epsilon: float,
    n_actions: int,
    rng: np.random.Generator,
    device: torch.device,
) -> np.ndarray:
    """Epsilon-greedy actions: random with probability epsilon, else argmax_a Q(s, a)."""
    actions = rng.integers(n_actions, size=len(obs))
    greedy = rng.random(len(obs)) >= epsilon
    if greedy.any():
        with torch.inference_mode():
            q = q_net(torch.as_tensor(obs[greedy], device=device))
        actions[greedy] = q.argmax(dim=1).cpu().numpy()
    return actions


@dataclass
class Learner:
    """The online and target Q-networks, their optimizer and one gradient step."""

    online: nn.Module
    target: nn.Module
    optimizer: torch.optim.Optimizer
    args: TrainArgs
    device: torch.device
    updates: int = 0

    @classmethod
    def create(cls, config: dict[str, Any], args: TrainArgs, device: torch.device) -> Learner:
        online = build_q_network(config).to(device)
        target = build_q_network(config).to(device)
        target.load_state_dict(online.state_dict())
        target.requires_grad_(False)
        fused = device.type in ("cpu", "cuda")  # one kernel for all parameters: ~10% faster steps
        optimizer = torch.optim.Adam(
            online.parameters(), lr=args.lr, eps=args.adam_eps, fused=fused or None
        )
        return cls(online, target, optimizer, args, device)

    def train_round(self, memory: ReplayMemory, updates: int) -> list[torch.Tensor]:
        """`updates` gradient steps; returns their losses (on the device).

        Neither the memory nor the target network changes during a round, so its batches
        are drawn at once and, without Double DQN, their Bellman targets come from a single
        forward pass of the target network."""
        size, device = self.args.batch_size, self.device
        batch = memory.sample(size * updates)
        obs = torch.from_numpy(batch.obs).to(device)
        next_obs = torch.from_numpy(batch.next_obs).to(device)
        actions = torch.from_numpy(batch.actions).to(device)
        returns = torch.from_numpy(batch.returns).to(device)
        dones = torch.from_numpy(batch.dones).to(device)
        discounts = torch.from_numpy(batch.discounts).to(device)
        double = self.args.double
        targets = None if double else td_targets(returns, next_obs, dones, discounts, self.target)
        losses = []
        for first in range(0, size * updates, size):
            part = slice(first, first + size)
            if double:
                target = td_targets(
                    returns[part],
                    next_obs[part],
                    dones[part],
                    discounts[part],
                    self.target,
                    self.online,
                )
            else:
                target = targets[part]
            q_taken = self.online(obs[part]).gather(1, actions[part, None]).squeeze(1)
            loss = td_loss(q_taken, target, self.args.loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.parameters, self.args.max_grad_norm)
            self.optimizer.step()
            losses.append(loss.detach())
        self.updates += updates
        return losses

    @property
    def parameters(self) -> list[nn.Parameter]:
        return self.optimizer.param_groups[0]["params"]


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


def evaluate_policy(
    q_net: nn.Module,
    settings: EnvSettings,
    episodes: int,
    epsilon: float,
    seed: int,
    device: torch.device,
) -> list[float]:
    """Returns (unclipped, whole games) of `episodes` episodes played epsilon-greedily."""
    env = make_env(settings)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    returns = []
    q_net.eval()
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            for _ in range(MAX_EVAL_STEPS):
                action = select_actions(q_net, obs[None], epsilon, n_actions, rng, device)[0]
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            done = "episode" in info  # else cut at MAX_EVAL_STEPS: the return so far
            returns.append(
                float(info["episode"]["r"] if done else env.get_wrapper_attr("episode_returns"))
            )
    finally:
        env.close()
        q_net.train()
    return returns


class Run:
    """One training run: environments, replay memory, learner, bookkeeping, files."""

    def __init__(self, args: TrainArgs, common: Common, run_dir: Path) -> None:
        self.args, self.common, self.run_dir = args, common, run_dir
        self.device = common.torch_device()
        self.settings = args.env_settings()
        self.envs = make_vector_env(self.settings, args.num_envs, args.async_envs)
        self.n_actions = int(self.envs.single_action_space.n)
        obs_shape = self.envs.single_observation_space.shape
        self.config = q_network_config(obs_shape, self.n_actions, args.hidden, args.dueling)
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

    # ---------------------------------------------------------------- files
    def meta(self) -> dict[str, Any]:
        return {
            "task": TASK,
            "config": self.config,
            "env": self.settings.to_dict(),
            "hyper_parameters": self.args.hyper_parameters(),
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

    def restore(self) -> None:
        state = load_state(self.run_dir / "state.pt")
        learner = self.learner
        try:
            learner.online.load_state_dict(state["online"])
            learner.target.load_state_dict(state["target"])
            learner.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise LbdlError(
                f"{self.run_dir / 'state.pt'}: does not match this run ({error})"
            ) from None
        learner.updates = state["updates"]
        self.progress = RunProgress(**state["progress"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.memory.rng.bit_generator.state = json.loads(state["memory_rng"])
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
    def evaluate(self) -> tuple[float, float]:
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

    def speed(self, step0: int, t0: float) -> float:
        """Environment steps per second of training (evaluations excluded)."""
        return (self.progress.step - step0) / max(
            1e-9, time.perf_counter() - t0 - self.eval_seconds
        )

    def train(self, console: Console) -> dict[str, Any]:
        args, progress, learner, memory = self.args, self.progress, self.learner, self.memory
        stack = self.settings.stack
        obs, info = self.envs.reset(seed=self.common.seed + progress.step)
        lives = np.asarray(info.get("lives", np.zeros(args.num_envs)))
        memory.start(newest_frames(obs, stack))
        losses: list[torch.Tensor] = []
        t0, step0, last_refresh = time.perf_counter(), progress.step, 0.0
        cpu0 = time.process_time()
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            auto_refresh=False,
            transient=True,
            disable=self.common.quiet,
        )
        with bar:
            task = bar.add_task("dqn", total=args.total_steps, completed=progress.step, info="")
            while progress.step < args.total_steps:
                epsilon = epsilon_at(progress.step, args)
                actions = select_actions(
                    learner.online, obs, epsilon, self.n_actions, self.rng, self.device
                )
                obs, rewards, terminated, truncated, info = self.envs.step(actions)
                ended = terminated | truncated
                learn_terminated = terminated
                if self.settings.episodic_life and "lives" in info:
                    now = np.asarray(info["lives"])
                    learn_terminated = terminated | ((now < lives) & ~ended)
                    lives = now
                final = None
                if ended.any():
                    final = newest_frames(
                        np.stack(
                            [
                                info["final_obs"][i] if ended[i] else obs[i]
                                for i in range(args.num_envs)
                            ]
                        ),
                        stack,
                    )
                memory.add(
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
                self._learn(losses)
                if progress.step - progress.last_target >= args.target_update:
                    update_target(learner.target, learner.online, args.tau)
                    progress.last_target = progress.step
                now_t = time.perf_counter()
                if now_t - last_refresh > REFRESH_S:
                    last_refresh = now_t
                    speed = self.speed(step0, t0)
                    bar.update(
                        task,
                        completed=progress.step,
                        refresh=True,
                        info=(
                            f"episodes {len(progress.episodes)}  "
                            f"return {progress.recent_return():.1f}  "
                            f"eps {epsilon:.3f}  {speed:.0f} steps/s"
                        ),
                    )
                if (
                    progress.step - progress.last_eval >= args.eval_every
                    or progress.step >= args.total_steps
                ):
                    stop = self._checkpoint(
                        losses,
                        console,
                        self.speed(step0, t0),
                        epsilon,
                    )
                    losses = []
                    if stop:
                        break
        self.envs.close()
        return {
            "steps": progress.step,
            "steps_per_s": self.speed(step0, t0),
            "cpu_s": time.process_time() - cpu0 - self.eval_cpu_seconds,
            "best_eval_return": progress.best,
            "last_eval_return": progress.evals[-1][1] if progress.evals else None,
            "episodes": len(progress.episodes),
            "updates": learner.updates,
        }

    def _learn(self, losses: list[torch.Tensor]) -> None:
        args, progress = self.args, self.progress
        due = progress.step - progress.last_train
        if progress.step < max(self.warm_until, args.batch_size) or due < args.train_freq:
            return
        updates = args.gradient_steps if args.gradient_steps > 0 else due
        losses += self.learner.train_round(self.memory, updates)
        progress.last_train = progress.step

    def _checkpoint(
        self, losses: list[torch.Tensor], console: Console, speed: float, epsilon: float
    ) -> bool:
        """Evaluate, log, save; True when --stop-return is reached."""
        progress = self.progress
        progress.last_eval = progress.step
        mean, std = self.evaluate()
        progress.evals.append([progress.step, mean, std])
        loss = float(torch.stack(losses).mean()) if losses else float("nan")
        progress.losses.append([progress.step, loss])
        improved = progress.best is None or mean > progress.best
        if improved:
            progress.best = mean
            save_checkpoint(
                self.run_dir / "model.safetensors", self.learner.online.state_dict(), self.meta()
            )
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
        console.print(
            f"step {progress.step:,}  eval {mean:.1f} ± {std:.1f}  "
            f"train {row['train_return']:.1f}  eps {epsilon:.3f}  loss {loss:.4g}  "
            f"{speed:.0f} steps/s" + ("  (best)" if improved else ""),
            highlight=False,
        )
        return self.args.stop_return is not None and mean >= self.args.stop_return


def resume_arguments(args: TrainArgs, common: Common) -> tuple[TrainArgs, Common]:
    """`train --resume RUN_DIR`: the arguments the run was started with (config.json)."""
    resume = Path(args.resume)
    config_file = resume / "config.json"
    if not (resume / "state.pt").is_file() or not config_file.is_file():
        raise LbdlError(f"--resume {resume}: not an interrupted dqn run (no state.pt/config.json)")
    saved = json.loads(config_file.read_text())
    if saved.get("task") != TASK:
        raise LbdlError(f"--resume {resume}: is a {saved.get('task')} run, not a dqn one")
    known = {f.name for f in fields(TrainArgs)}
    stored = {k: v for k, v in saved["args"].items() if k in known}
    resumed = TrainArgs(**{**stored, "run_dir": resume, "exist_ok": True, "resume": resume})
    options = Common(**saved["common"])
    options.device, options.quiet, options.threads = common.device, common.quiet, common.threads
    options.apply()
    return resumed, options


def run_training(args: TrainArgs, common: Common) -> dict[str, Any]:
    """Train a DQN agent; returns a summary (steps, steps/s, best and last evaluation)."""
    if args.resume is not None:
        args, common = resume_arguments(args, common)
    else:
        common.apply()  # the seed makes the run repeatable, from the CLI or the API alike
    args = args.resolved(args.env_settings())
    console = Console(quiet=common.quiet)
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok)
    run = Run(args, common, run_dir)
    if args.resume is not None:
        run.restore()
        if run.progress.step >= args.total_steps:
            raise LbdlError(f"--resume {run_dir}: this run finished its {args.total_steps} steps")
        console.print(f"resuming at step {run.progress.step:,}")
    else:
        save_run_config(run_dir, TASK, args, common, run.config)
    console.print(
        f"env {args.env}: {run.n_actions} actions, "
        f"observations {run.envs.single_observation_space.shape}, "
        f"{args.num_envs} env(s); replay {args.buffer_size:,}; Q-network {run.config['kind']}"
        + (" dueling" if args.dueling else "")
        + (" double" if args.double else "")
        + (f" {args.n_step}-step" if args.n_step > 1 else "")
    )
    try:
        summary = run.train(console)
    except KeyboardInterrupt:
        run.save(args.save_replay)
        report(f"state saved; resume with: lbdl dqn train --resume {run_dir}")
        raise
    print(f"run folder: {run_dir}")
    return {**summary, "run_dir": str(run_dir)}
