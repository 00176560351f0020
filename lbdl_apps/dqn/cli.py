"""`lbdl dqn`: train, evaluate and watch deep Q-learning agents (book 6.7). Each verb's
options are the fields of its dataclass below; None means the environment's default
(dqn/defaults.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from lbdl_apps.core import options
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, OutputArgs, RunArgs, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(help="Deep Q-learning (book 6.7) on Atari games and classic control.")

ATARI = "Atari preprocessing"
LOSSES = ("huber", "mse")


def layer_widths(hidden: str) -> list[int]:
    """`--hidden 256,256` as a list of widths; LbdlError when it is not one."""
    try:
        widths = [int(width) for width in hidden.split(",")]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise LbdlError(f"--hidden {hidden}: use layer widths like 256,256")
    return widths


@dataclass(kw_only=True)
class TrainArgs(RunArgs):
    """Everything `lbdl dqn train` was asked for; None: the environment's default, filled in
    by `defaults.resolve`. Saved as the run's config.json and, resolved, in the checkpoint."""

    env: str = "CartPole-v1"
    """Gymnasium id: CartPole-v1, Acrobot-v1 or ALE/<Game>-v5."""
    total_steps: int | None = option(None, min=1)
    """Environment steps (default: the environment's)."""
    num_envs: int = option(1, min=1)
    """Environments stepped together."""
    async_envs: bool = False
    """Step the environments in subprocesses."""
    buffer_size: int | None = option(None, min=1)
    """Replay memory transitions (default: the environment's)."""
    batch_size: int | None = option(None, min=1)
    """Batch size (default: the environment's)."""
    lr: float | None = option(None, min=0.0)
    """Adam learning rate (default: the environment's)."""
    adam_eps: float | None = option(None, min=0.0)
    """Adam epsilon (default: the environment's; Atari 1.5e-4, else 1e-8)."""
    gamma: float = option(0.99, min=0.0, max=1.0)
    """Discount factor."""
    learning_starts: int | None = option(None, min=0)
    """Steps before learning (default: the environment's)."""
    train_freq: int | None = option(None, min=1)
    """Steps between training rounds (default: the environment's)."""
    gradient_steps: int | None = option(None, min=-1)
    """Gradient steps per round, -1: one per step (default: the environment's)."""
    target_update: int | None = option(None, min=1)
    """Steps between target updates (default: the environment's)."""
    tau: float = option(1.0, max=1.0)
    """Target update: 1 copies, < 1 Polyak-averages."""
    eps_start: float = option(1.0, min=0.0, max=1.0)
    """Initial epsilon."""
    eps_end: float | None = option(None, min=0.0, max=1.0)
    """Final epsilon (default: the environment's)."""
    eps_fraction: float | None = option(None, min=0.0, max=1.0)
    """Fraction of the steps epsilon decays over (default: the environment's)."""
    loss: str = "huber"
    """TD loss: huber or mse."""
    double: bool = False
    """Double DQN targets."""
    dueling: bool = False
    """Dueling Q-network head."""
    n_step: int = option(1, min=1)
    """n-step returns."""
    hidden: str | None = None
    """MLP layer widths, e.g. 256,256 (default: the environment's)."""
    max_grad_norm: float | None = option(10.0, min=0.0)
    """Gradient norm clip."""
    eval_every: int | None = option(None, min=1)
    """Steps between evaluations (default: the environment's)."""
    eval_episodes: int | None = option(None, min=1)
    """Episodes per evaluation (default: the environment's)."""
    eval_epsilon: float | None = option(None, min=0.0, max=1.0)
    """Epsilon when evaluating (default: the environment's)."""
    stop_return: float | None = None
    """Stop once an evaluation reaches this mean return."""
    save_replay: bool = False
    """Save the replay memory with the state (for --resume)."""
    sticky_actions: float = option(0.25, min=0.0, panel=ATARI)
    """Atari: probability of repeating the last action."""
    full_action_space: bool = option(False, panel=ATARI)
    """Atari: all 18 actions."""
    episodic_life: bool = option(True, panel=ATARI)
    """Atari: a lost life ends the transition."""
    fire_reset: bool = option(True, panel=ATARI)
    """Atari: press FIRE after reset and lost lives."""
    clip_rewards: bool = option(True, panel=ATARI)
    """Atari: rewards clipped to [-1, 1]."""
    noop_max: int = option(30, min=0, panel=ATARI)
    """Atari: up to N no-ops after reset."""
    frame_skip: int = option(4, min=1, panel=ATARI)
    """Atari: frames per action (max-pooled)."""

    def __post_init__(self) -> None:
        if isinstance(self.hidden, (list, tuple)):  # the Python API, a config.json of old
            self.hidden = ",".join(str(width) for width in self.hidden)
        super().__post_init__()
        if self.hidden is not None:
            layer_widths(self.hidden)
        problems = {
            "--loss": self.loss not in LOSSES and f"{self.loss}: use huber or mse",
            "--tau": not 0 < self.tau <= 1 and f"{self.tau}: must be in (0, 1]",
            "--sticky-actions": not 0 <= self.sticky_actions < 1
            and f"{self.sticky_actions}: must be in [0, 1)",
            "--gradient-steps": self.gradient_steps == 0 and "0: use a positive number or -1",
        }
        for flag, problem in problems.items():
            if problem:
                raise LbdlError(f"{flag} {problem}")

    @property
    def widths(self) -> list[int] | None:
        """The MLP's layer widths (None: not resolved yet)."""
        return None if self.hidden is None else layer_widths(self.hidden)


# --calibrate (core's options.Quantization) is, for dqn, an environment id with the
# checkpoint's actions and observations, played by the agent to calibrate static int8 (of
# the Atari Nature CNN; the MLPs take dynamic int8, without calibration: dqn/export.py).
# TODO(core): its help is core's ("Data whose inputs calibrate ..."); let an app word the
# help of an inherited option (e.g. `help_overrides: ClassVar[dict[str, str]]` on the options
# dataclass, read by options.help_texts) instead of re-declaring it.


@dataclass(kw_only=True)
class EvaluateArgs(options.Inference, OutputArgs):
    """The options of `lbdl dqn evaluate`."""

    checkpoint: str = option(argument=True)
    """A dqn .safetensors file, a run folder, a model name (cleanrl:Pong, lbdl models) or a
    CleanRL Q-network file."""
    episodes: int = option(10, min=1)
    """Episodes to play."""
    epsilon: float = option(0.05, min=0.0, max=1.0)
    """Exploration while playing."""
    greedy: bool = False
    """Play greedily (epsilon 0)."""
    env: str | None = None
    """Another environment id with the same actions."""
    out: Path | None = None
    """Output folder (default: a new evaluate, evaluate2, ... in the checkpoint's run
    folder)."""


@dataclass(kw_only=True)
class PlayArgs(options.Inference):
    """The options of `lbdl dqn play` (also `lbdl dqn predict`)."""

    checkpoint: str = option(argument=True)
    """A dqn .safetensors file, a run folder, a model name (cleanrl:Pong, lbdl models) or a
    CleanRL Q-network file."""
    render: str | None = None
    """'human' opens a window."""
    record: Path | None = None
    """Write a video: out.mp4 or out.gif."""
    episodes: int = option(1, min=1)
    """Episodes to play."""
    max_steps: int | None = option(None, min=1)
    """Stop after N agent steps."""
    epsilon: float = option(0.0, min=0.0, max=1.0)
    """Exploration while playing."""
    overlay: bool = True
    """Draw Q-values and the return beside the game."""
    fps: int = option(30, min=1)
    """Frames per second of the video."""
    env: str | None = None
    """Another environment id with the same actions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.render not in (None, "human"):
            raise LbdlError(f"--render {self.render}: the only window mode is 'human'")
        if self.render is None and self.record is None:
            raise LbdlError("play: give --render human or --record out.mp4|out.gif")


@dataclass(kw_only=True)
class ExportArgs(options.ExportArgs):
    """The options of `lbdl dqn export`."""

    env: str | None = None
    """The game of a CleanRL Q-network file (e.g. PongNoFrameskip-v4), or another
    environment id with the same actions."""


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train a DQN agent; CartPole-v1 by default, Atari with --env ALE/Pong-v5."""
    from lbdl_apps.dqn.task import train as run

    run(args, common)


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """Mean ± std return over whole episodes; writes metrics.json."""
    from lbdl_apps.dqn.task import evaluate as run

    result = run(args, common)
    print(
        f"{result.env}: return {result.mean:.2f} ± {result.std:.2f} over {args.episodes} "
        f"episodes (epsilon {result.epsilon:g}); results: {result.folder}"
    )


@verb(app, "play", aliases=("predict",))
def play(args: PlayArgs, common: Common) -> None:
    """Watch an agent play (--render human) or record it (--record out.mp4|out.gif)."""
    from lbdl_apps.dqn.task import play as run

    env, returns = run(args, common)
    shown = ", ".join(f"{r:g}" for r in returns)
    print(f"{env}: returns {shown}" + (f"; video: {args.record}" if args.record else ""))


@verb(app)
def export(args: ExportArgs, common: Common) -> None:
    """Export the Q-network to ONNX (int8 with --quantize), TorchScript or an ExportedProgram,
    checked against PyTorch, with model.json saying how observations are made and what the
    actions mean."""
    from lbdl_apps.core.export import Deployment, run_export
    from lbdl_apps.dqn.api import load
    from lbdl_apps.dqn.export import calibration_note, deployment

    def deployed(checkpoint: str) -> Deployment:
        agent = load(checkpoint, env=args.env)
        found = deployment(agent)
        found.description["calibration"] = calibration_note(agent, found.graphs[0], args)
        return found

    run_export(args, deployed)
