"""The training loop every supervised app uses (book 3.3-3.6: SGD with Adam, mini-batches,
learning-rate schedule; 5.2 regularisation): AdamW + warmup/cosine, gradient clipping and
accumulation, AMP on GPU, EMA weights, early stopping, checkpoints that resume exactly,
and data parallelism under torchrun.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from lbdl_apps.core.checkpoint import load_state, save_state
from lbdl_apps.core.device import amp_dtype, seed_everything
from lbdl_apps.core.distributed import local_device, process_group, world_size
from lbdl_apps.core.errors import EXIT_INTERRUPTED, LbdlError, report
from lbdl_apps.core.optim import adamw_with_schedule, ema_with_warmup
from lbdl_apps.core.options import TrainArgs
from lbdl_apps.core.outputs import atomic_path
from lbdl_apps.core.progress import add_task, progress_bar
from lbdl_apps.core.records import Recorder
from lbdl_apps.core.signals import StopSignals, ignore_stop_signals
from lbdl_apps.core.train_state import (
    Monitor,
    Position,
    SkipSampler,
    Tally,
    batch_size,
    rng_state,
    set_rng_state,
    to_device,
)

LossFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, Any]]]
EvaluateFn = Callable[[nn.Module, DataLoader, torch.device], dict[str, float]]
Collate = Callable[[list[Any]], Any]

REFRESH_S = 0.5  # how often the progress bar (and the NaN check) reads values off the device


class Trainer:
    """Trains `model` on `train_set` with `loss_fn(model, batch) -> (loss, metrics)`, as the
    `args` (an app's TrainArgs) say: epochs, batch size, AdamW, schedule, clipping,
    accumulation, AMP, EMA, patience, workers, save period.

    Each epoch ends with `evaluate_fn(model, val_loader, device) -> metrics` (or the mean of
    loss_fn over the validation set when evaluate_fn is None); its keys are logged with a
    "val_" prefix. Under torchrun only rank 0 evaluates, so metric objects in evaluate_fn
    must not synchronise across ranks (torchmetrics: sync_on_compute=False).
    The run folder gets metrics.csv/.jsonl, loss.png, train_config.json,
    model.safetensors (best by `monitor`, a tie going to the lower validation loss;
    every epoch without a validation set),
    last.safetensors and state.pt. With EMA, both .safetensors files hold the EMA weights.
    Checkpoint metadata is `checkpoint_meta` plus "epoch" and "metrics".

    `fit(resume=True)` continues from state.pt; on CPU the result is bit-identical to an
    uninterrupted run from an epoch-end state (and mid-epoch too with workers=0).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        loss_fn: LossFn,
        evaluate_fn: EvaluateFn | None,
        args: TrainArgs,
        run_dir: str | Path,
        device: torch.device,
        checkpoint_meta: dict[str, Any],
        *,
        monitor: Monitor = Monitor(),
        seed: int = 0,
        collate_fn: Collate | None = None,
        val_collate_fn: Collate | None = None,
        quiet: bool = False,
    ) -> None:
        self.model = model
        self.train_set, self.val_set = train_set, val_set
        self.loss_fn, self.evaluate_fn = loss_fn, evaluate_fn
        self.args, self.monitor, self.seed = args, monitor, seed
        self.run_dir = Path(run_dir)
        self.device = local_device(device)
        self.collate_fn = collate_fn
        self.val_collate_fn = val_collate_fn or collate_fn  # e.g. no MixUp on validation
        self.quiet = quiet
        self.world, self.rank = world_size(), 0
        self.signals = StopSignals()
        validated = val_set is not None and len(val_set) > 0  # type: ignore[arg-type]
        console = Console(stderr=True, quiet=quiet)
        self.records = Recorder(
            self.run_dir, checkpoint_meta, monitor, validated, args.epochs, console
        )

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    # ----------------------------------------------------------------- set-up
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue from run_dir/state.pt) and return the best epoch's metrics."""
        with process_group(self.device) as grouped, self.signals.installed():
            self.rank = dist.get_rank() if grouped else 0
            self._setup(resume)
            try:
                with self._progress():
                    self._run()
            except KeyboardInterrupt:
                self.signals.hold()
                self._flush()
                if self.main:
                    save_state(self.run_dir / "state.pt", self._state())
                    report(
                        f"interrupted: training state saved in {self.run_dir / 'state.pt'} "
                        f"(continue with --resume {self.run_dir})"
                    )
                raise SystemExit(EXIT_INTERRUPTED) from None
            finally:
                self.records.close()
        return self.records.best_metrics

    def _setup(self, resume: bool) -> None:
        args = self.args
        self.model.to(self.device)
        self.ema = None
        if args.ema is not None:
            update = ema_with_warmup(args.ema)
            self.ema = AveragedModel(self.model, multi_avg_fn=update, use_buffers=True)
        self._make_loaders()
        steps_per_epoch = math.ceil(self.n_batches / args.accumulate)
        self.optimizer, self.scheduler = adamw_with_schedule(
            self.model,
            args.lr,
            args.weight_decay,
            round(args.warmup * steps_per_epoch),
            args.epochs * steps_per_epoch,
        )
        self.amp = amp_dtype(self.device) if args.amp else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        if resume:
            self._load_state()
        else:
            seed_everything(self.seed + self.rank)
            self._at = Position(0, 0, 0, Tally(), rng_state(self.device))
        self._ddp = None
        if self.world > 1:
            cuda = self.device.type == "cuda"
            self._ddp = DistributedDataParallel(self.model, [self.device] if cuda else None)
        train_model = self._ddp or self.model
        self.train_model = torch.compile(train_model) if args.compile else train_model
        self._pending: list[tuple[int, Tensor]] = []  # (step, loss) not yet checked for NaN
        self._last_refresh = time.perf_counter()
        if self.main:
            self.records.open(self._at.epoch)
            with atomic_path(self.run_dir / "train_config.json") as tmp:
                tmp.write_text(self._settings() + "\n")

    def _settings(self) -> str:
        """What this Trainer does, as JSON: train_config.json and the state's "config"."""
        settings = {**asdict(self.args), "monitor": asdict(self.monitor), "seed": self.seed}
        return json.dumps(settings, indent=2, default=str)

    def _make_loaders(self) -> None:
        args = self.args
        if len(self.train_set) == 0:  # type: ignore[arg-type]
            raise LbdlError("the training set is empty")
        self._generator = torch.Generator()
        inner: Sampler[int] = (
            DistributedSampler(self.train_set, shuffle=True, seed=self.seed)
            if self.world > 1
            else RandomSampler(self.train_set, generator=self._generator)
        )
        self._sampler = SkipSampler(inner)
        loader_args = {
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "worker_init_fn": ignore_stop_signals if args.workers else None,
            "collate_fn": self.collate_fn,
            # pinning pays off only when a worker thread does it beside the training step
            "pin_memory": self.device.type == "cuda" and args.workers > 0,
        }
        self.train_loader = DataLoader(
            self.train_set, sampler=self._sampler, generator=self._generator, **loader_args
        )
        self.n_batches = math.ceil(len(inner) / args.batch_size)  # type: ignore[arg-type]
        self.val_loader = None
        self._val_generator = torch.Generator()
        if self.records.validated:
            self.val_loader = DataLoader(
                self.val_set,  # type: ignore[arg-type]
                generator=self._val_generator,
                **{**loader_args, "collate_fn": self.val_collate_fn},
            )

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        patience = self.args.patience
        for epoch in range(self._at.epoch, self.args.epochs):
            if patience is not None and self.records.bad_epochs >= patience:
                break
            if self._end_epoch(epoch, *self._train_epoch(epoch)):
                break

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over the training set (the rest of it when resuming); (seconds, samples)."""
        args, start = self.args, self._at
        self.model.train()
        # The data order (and the workers' seeds) depend only on (seed, epoch, rank).
        self._generator.manual_seed(self.seed + 1009 * epoch + 1_000_003 * self.rank)
        if isinstance(self._sampler.inner, DistributedSampler):
            self._sampler.inner.set_epoch(epoch)
        self._sampler.skip = start.batch * args.batch_size
        self._bar_start(epoch, start.batch)
        tally, step, t0 = start.tally, start.step, time.perf_counter()
        for i, batch in enumerate(self.train_loader, start=start.batch):
            group_start = i - i % args.accumulate
            group_len = min(args.accumulate, self.n_batches - group_start)
            last = i + 1 == group_start + group_len
            if i == group_start:  # a signal now waits for the step: the forward passes
                self.signals.begin()  # change batch-norm statistics, the state must not
            batch = to_device(batch, self.device)  # hold those of an unfinished step
            with self._no_sync(not last):
                with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
                    loss, metrics = self.loss_fn(self.train_model, batch)
                self.scaler.scale(loss / group_len).backward()
            tally = tally.add(loss, metrics, batch_size(batch))
            self._pending.append((step + 1, loss.detach()))
            if not last:
                continue
            self._optimizer_step()
            step += 1
            self._at = Position(epoch, i + 1, step, tally, rng_state(self.device))
            self.signals.end()
            if time.perf_counter() - self._last_refresh > REFRESH_S:
                self._flush()
            if args.save_period and step % args.save_period == 0:
                self._flush()
                with self.signals.deferred():
                    if self.main:
                        save_state(self.run_dir / "state.pt", self._state())
        self._flush()
        return time.perf_counter() - t0, tally.samples - start.tally.samples

    def _no_sync(self, skip_sync: bool) -> contextlib.AbstractContextManager:
        """Under DDP, accumulate gradients locally until the group's last batch."""
        if skip_sync and self._ddp is not None:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        if self.args.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _flush(self) -> None:
        """Read the pending losses off the device: stop on NaN/inf, refresh the progress bar."""
        pending, self._pending = self._pending, []
        self._last_refresh = time.perf_counter()
        if pending:
            losses = torch.stack([loss.float() for _, loss in pending]).cpu()
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                self._fail(pending[int(bad[0])][0], float(losses[int(bad[0])]))
        self._bar_update()

    def _fail(self, step: int, value: float) -> None:
        kept = (
            f"the last good checkpoint is kept in {self.run_dir}"
            if (self.run_dir / "last.safetensors").exists()
            else "no checkpoint had been written yet"
        )
        raise LbdlError(
            f"loss became {value} at epoch {self._at.epoch + 1}, step {step}; {kept} "
            "(try a lower --lr)"
        )

    # ------------------------------------------------------------- epoch end
    def _end_epoch(self, epoch: int, train_s: float, samples: int) -> bool:
        """Evaluate, log, save; return whether to stop early."""
        train = self._reduce(self._at.tally)
        t0 = time.perf_counter()
        val = self._evaluate() if self.main and self.val_loader is not None else {}
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self._at.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in train.items()},
            **val,
            "time_s": round(train_s + time.perf_counter() - t0, 3),
            "samples_per_s": round(samples * self.world / max(train_s, 1e-9), 1),
        }
        stop = False
        records, patience = self.records, self.args.patience
        with self.signals.deferred():
            self._at = Position(epoch + 1, 0, self._at.step, Tally(), rng_state(self.device))
            if self.main:
                improved = records.update_best(row)
                stop = patience is not None and bool(val) and records.bad_epochs >= patience
                self._save(row, improved)
                records.say_epoch(row, improved, stop)
        if self.world > 1:
            decision = [stop, records.bad_epochs]
            dist.broadcast_object_list(decision, src=0)
            stop, records.bad_epochs = decision
        return stop

    def _save(self, row: dict[str, Any], improved: bool) -> None:
        """The epoch's checkpoints, log and state.pt; when a write fails (a full disk), an
        error saying what ran out and what is kept to resume from."""
        try:
            self.records.save_epoch(row, self._weights(), improved)
            save_state(self.run_dir / "state.pt", self._state())
        except LbdlError as error:
            kept = (
                f"; the state of an earlier epoch is kept (continue with --resume {self.run_dir})"
                if (self.run_dir / "state.pt").exists()
                else ""
            )
            raise LbdlError(f"{error}{kept}") from None

    def _weights(self) -> dict[str, Tensor]:
        """The weights that are evaluated and saved: the EMA ones when there is an EMA."""
        return (self.ema.module if self.ema is not None else self.model).state_dict()

    def _reduce(self, tally: Tally) -> dict[str, float]:
        """Mean train loss and metrics over the epoch (over every rank under DDP)."""
        sums = tally.sums()
        samples = float(tally.samples)
        if self.world > 1:
            t = torch.tensor([*sums.values(), samples], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            *values, samples = t.tolist()
            sums = dict(zip(sums, values, strict=True))
        return {k: v / max(samples, 1.0) for k, v in sums.items()}

    def _evaluate(self) -> dict[str, float]:
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        self._val_generator.manual_seed(self.seed)  # the same worker seeds every epoch
        with torch.no_grad():
            if self.evaluate_fn is not None:
                metrics = self.evaluate_fn(model, self.val_loader, self.device)  # type: ignore[arg-type]
            else:
                metrics = self._mean_loss(model)
        self.model.train()
        return {k if k.startswith("val_") else f"val_{k}": float(v) for k, v in metrics.items()}

    def _mean_loss(self, model: nn.Module) -> dict[str, float]:
        tally = Tally()
        for batch in self.val_loader:  # type: ignore[union-attr]
            batch = to_device(batch, self.device)
            with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
                loss, metrics = self.loss_fn(model, batch)
            tally = tally.add(loss, metrics, batch_size(batch))
        return {k: v / max(tally.samples, 1) for k, v in tally.sums().items()}

    # ------------------------------------------------------------- state.pt
    def _state(self) -> dict[str, Any]:
        at = self._at
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": at.epoch,
            "batch": at.batch,
            "step": at.step,
            "tally": at.tally.to_state(),
            "rng": at.rng,
            **self.records.to_state(),
            "config": json.loads(self._settings()),
        }

    def _load_state(self) -> None:
        path = self.run_dir / "state.pt"
        if not path.exists():
            raise LbdlError(f"{path}: no such file; {self.run_dir} has no training state to resume")
        state = load_state(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            self.records.load_state(state)
            tally = Tally.from_state(state["tally"])
            self._at = Position(state["epoch"], state["batch"], state["step"], tally, state["rng"])
        except (KeyError, ValueError, RuntimeError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LbdlError(f"{path}: does not match this model and settings ({first_line})") from e
        set_rng_state(self._at.rng, self.device)

    # ------------------------------------------------------- progress bar
    @contextlib.contextmanager
    def _progress(self) -> Iterator[None]:
        self._bar = progress_bar(self.quiet or not self.main, unit="batches")
        if not self.quiet:  # epoch lines printed above the bar
            self.records.console = self._bar.console
        self._task = None
        with self._bar:
            yield

    def _bar_start(self, epoch: int, done: int) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._epoch_t0, self._epoch_done0 = time.perf_counter(), self._at.tally.samples
        description = f"epoch {epoch + 1}/{self.args.epochs}"
        self._task = add_task(self._bar, description, self.n_batches, done)

    def _bar_update(self) -> None:
        if self._task is None or self._bar.disable:
            return
        tally = self._at.tally
        info = ""
        if tally.samples:
            speed = (tally.samples - self._epoch_done0) / (time.perf_counter() - self._epoch_t0)
            loss = float(tally.loss) / tally.samples
            info = f"loss {loss:.4g}  {speed * self.world:.0f} samples/s"
        self._bar.update(self._task, completed=self._at.batch, info=info, refresh=True)
