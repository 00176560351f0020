"""A supervised training run from start to finish (DESIGN.md, "Core owns the run"): an app
fills in a `SupervisedTask` (its data, model, loss, evaluation and what to monitor) and
`run_training` does the rest: resume, checks, data, model config, run folder, config.json,
checkpoint metadata, the Trainer, the best epoch's report and the run's end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from lbdl_apps.core.distributed import is_main_process, local_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common, RunArgs, TrainArgs
from lbdl_apps.core.runs import resume_settings, run_folder, save_run_config
from lbdl_apps.core.train import Collate, EvaluateFn, LossFn, Trainer
from lbdl_apps.core.train_state import Monitor

A = TypeVar("A", bound=TrainArgs)
R = TypeVar("R", bound=RunArgs)
C = TypeVar("C")  # a model config dataclass
D = TypeVar("D")  # an app's loaded data
Say = Callable[[str], None]


@dataclass
class TrainingSets:
    """The datasets a run trains and validates on, and how their batches are collated."""

    train: Dataset
    val: Dataset | None
    collate: Collate | None = None
    val_collate: Collate | None = None  # default: `collate`


@dataclass
class Phase:
    """One part of a run trained with its own settings (fine-tuning's frozen-backbone
    phase): `args` for this phase, its folder inside the run folder ("" for the run folder
    itself) and what to do to the model before it starts."""

    args: TrainArgs
    folder: str = ""
    prepare: Callable[[nn.Module], None] | None = None


@dataclass
class Finished:
    """What a finished run hands back to its task: where it ran, its best epoch, and whether
    to keep quiet (--quiet: no progress bars)."""

    run_dir: Path
    device: torch.device
    best: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False


class SupervisedTask(Generic[A, D]):
    """The protocol of a supervised app. `name` is the task of its checkpoints; `monitor`
    picks the best epoch. The methods are called in this order by `run_training`."""

    name: ClassVar[str]
    monitor: ClassVar[Monitor] = Monitor()
    say: Say = print
    """Print a line for the user (run_training sets it: silent with --quiet, and off rank 0)."""

    def check(self, args: A) -> None:
        """The option checks that need no data (done before any data is read)."""

    def load_data(self, args: A, seed: int) -> D:
        """The run's data, split with `seed` (`say` the line describing it)."""
        raise NotImplementedError

    def model_config(self, args: A, data: D) -> Any:
        """The model's typed config (a dataclass, stored in the checkpoint)."""
        raise NotImplementedError

    build_model: Callable[[Any], nn.Module]
    """The model of a config, as `load` builds it (a task sets it to its model.py's
    `build_model`)."""

    def initialize(self, model: nn.Module, args: A, data: D) -> None:
        """Weights to start from (ImageNet backbones, --init), before a new run trains."""

    def datasets(self, args: A, data: D, model: nn.Module) -> TrainingSets:
        raise NotImplementedError

    def loss(self, args: A, data: D) -> LossFn:
        raise NotImplementedError

    def evaluator(self, args: A, data: D, model: nn.Module) -> EvaluateFn | None:
        """The end-of-epoch evaluation (None: the mean loss on the validation set)."""
        return None

    def metadata(self, args: A, data: D) -> dict[str, Any]:
        """What the checkpoint stores beside its config: labels, preprocessing, tokenizer,
        and what it takes to rebuild its data's splits."""
        return {}

    def choose_monitor(self, args: A, data: D) -> Monitor:
        return self.monitor

    def phases(self, args: A, model: nn.Module) -> list[Phase]:
        """The parts of the run (one by default)."""
        return [Phase(args)]

    def finish(self, args: A, data: D, run: Finished) -> dict[str, float]:
        """After training, on rank 0: e.g. the best checkpoint's scores on the test split
        (keys "test_*"), pictures. Returns scores to add to the run's result."""
        return {}


def epochs_done(args: TrainArgs, state: dict[str, Any]) -> str | None:
    """Why a supervised run's saved state leaves nothing to resume (None: it is not done)."""
    if args.patience is not None and state.get("bad_epochs", 0) >= args.patience:
        return "stopped early"
    if state.get("epoch", 0) >= args.epochs:
        return f"finished its {args.epochs} epochs"
    return None


def start_run(
    args: R,
    common: Common,
    task: str,
    finished: Callable[[R, dict[str, Any]], str | None] = epochs_done,  # type: ignore[assignment]
) -> tuple[R, Common, dict[str, Any] | None]:
    """The settings a training run goes on with, and its saved state: with --resume the
    interrupted run's own (an error when `finished` says why there is nothing left to do),
    else these and None. Either way the threads and seed are applied before anything random
    happens (the model's initialisation included), so a run started from Python repeats like
    one started from the CLI."""
    state = None
    if args.resume is not None:
        args, common, state = resume_settings(args, common, task)
        done = finished(args, state)
        if done:
            raise LbdlError(
                f"--resume {args.resume}: this run {done}; nothing to resume "
                "(start a new run to train longer)"
            )
    common.apply()
    return args, common, state


def override_config(config: C, overrides: dict[str, Any], model: str) -> C:
    """`config` with the options given (not None) in `overrides` (field -> value), e.g.
    --width and --depth; an option the model's config has no value for is an error."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:
        if getattr(config, key, None) is None:
            raise LbdlError(f"--{key.replace('_', '-')}: not an option of --model {model}")
    return replace(config, **given)


def run_training(task: SupervisedTask[A, D], args: A, common: Common) -> dict[str, float]:
    """Train `task` as `args` say; return the best epoch's numbers and the task's own
    scores after training (e.g. "test_acc"). The run folder is printed at the end."""
    args, common, _ = start_run(args, common, task.name)
    task.check(args)
    device = local_device(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    task.say = console.print
    data = task.load_data(args, common.seed)
    config = task.model_config(args, data)
    model = task.build_model(config)
    if args.resume is None:
        task.initialize(model, args, data)
    sets = task.datasets(args, data, model)
    run_dir = run_folder(task.name, args)
    save_run_config(run_dir, task.name, args, common, config)
    meta = {
        "task": task.name,
        "config": asdict(config),
        "data": args.data,
        "seed": common.seed,
        "val_fraction": args.val_fraction,
        **task.metadata(args, data),
    }
    best: dict[str, Any] = {}
    phases = task.phases(args, model)
    for phase in phases[-1:] if args.resume is not None else phases:
        if phase.prepare is not None:
            phase.prepare(model)
        folder = run_dir / phase.folder
        folder.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(
            model,
            sets.train,
            sets.val,
            task.loss(args, data),
            task.evaluator(args, data, model),
            phase.args,
            folder,
            device,
            meta,
            monitor=task.choose_monitor(args, data),
            seed=common.seed,
            collate_fn=sets.collate,
            val_collate_fn=sets.val_collate,
            quiet=common.quiet,
        )
        best = trainer.fit(resume=args.resume is not None)
    scores = {k: float(v) for k, v in best.items() if isinstance(v, (int, float))}
    if is_main_process():
        shown = {k: v for k, v in scores.items() if k.startswith("val_")}
        if shown:
            line = ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
            console.print(f"best (epoch {best['epoch']}): {line}", highlight=False)
        finished = Finished(run_dir, trainer.device, best, common.quiet)
        scores |= task.finish(args, data, finished)
        print(f"run folder: {run_dir}")
    return scores
