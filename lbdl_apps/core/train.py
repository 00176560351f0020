"""The training loop every supervised app uses (book 3.3-3.6: SGD with Adam, mini-batches,
learning-rate schedule; 5.2 regularisation): AdamW + warmup/cosine, gradient clipping and
accumulation, AMP on GPU, EMA weights, early stopping, checkpoints that resume exactly,
and data parallelism under torchrun.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from lbdl_apps.core.checkpoint import atomic_path, load_state, save_checkpoint, save_state
from lbdl_apps.core.device import amp_dtype, seed_everything
from lbdl_apps.core.distributed import init_distributed, world_size
from lbdl_apps.core.errors import EXIT_INTERRUPTED, LbdlError
from lbdl_apps.core.runs import MetricsLog, plot_metrics

LossFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, Any]]]
EvaluateFn = Callable[[nn.Module, DataLoader, torch.device], dict[str, float]]

REFRESH_S = 0.5  # how often the progress bar (and the NaN check) reads values off the device


@dataclass
class TrainOptions:
    """The `train` options every app has under the same names (DESIGN.md). An app's
    TrainArgs adds its own and may change these defaults; saved in the run's config.json."""

    data: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    name: str | None = None
    run_dir: Path | None = None
    exist_ok: bool = False
    resume: Path | None = None
    workers: int = 0
    patience: int | None = None
    weight_decay: float = 1e-4
    warmup: float = 1.0
    ema: float | None = None
    val_fraction: float = 0.1
    amp: bool = True
    compile: bool = False
    save_period: int | None = None
    skip_bad: bool = False


@dataclass
class TrainConfig:
    """What the Trainer does; saved as train_config.json in the run folder."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warmup then cosine to 0, per optimizer step
    grad_clip: float | None = 1.0
    accumulate: int = 1  # batches per optimizer step
    amp: bool = True  # mixed precision on CUDA (bf16 if supported, else fp16 + loss scaling)
    ema_decay: float | None = None  # EMA weights are the ones evaluated and saved
    patience: int | None = None  # stop after this many epochs without improvement
    monitor: str = "val_loss"  # picks model.safetensors (ties: the lower val_loss)
    mode: str = "min"  # "min" or "max" for `monitor`
    save_period: int | None = None  # also save state.pt every N optimizer steps
    workers: int = 0
    seed: int = 0
    compile: bool = False

    @classmethod
    def from_args(cls, args: TrainOptions, seed: int, monitor: str, mode: str) -> TrainConfig:
        """The Trainer settings of an app's `train` options."""
        return cls(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup,
            amp=args.amp,
            ema_decay=args.ema,
            patience=args.patience,
            monitor=monitor,
            mode=mode,
            save_period=args.save_period,
            workers=args.workers,
            seed=seed,
            compile=args.compile,
        )

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "accumulate": self.accumulate >= 1,
            "warmup_epochs": self.warmup_epochs >= 0,
            "workers": self.workers >= 0,
            "mode": self.mode in ("min", "max"),
            "patience": self.patience is None or self.patience >= 1,
            "save_period": self.save_period is None or self.save_period >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise LbdlError(f"{name} = {getattr(self, name)!r} is not a valid value")


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a batch (tensor, or nested tuple/list/dict of them) to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    items = batch.values() if isinstance(batch, dict) else batch
    if isinstance(items, (list, tuple)) or isinstance(batch, dict):
        for item in items:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def batch_size(batch: Any) -> int:
    """Number of samples in a batch: the length of its first tensor."""
    first = _first_tensor(batch)
    return len(first) if first is not None and first.ndim else 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels, none on biases and norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def ema_with_warmup(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """EMA update for AveragedModel whose decay ramps up as min(decay, (1 + n) / (10 + n))
    after n updates, so that early EMA weights follow the training instead of averaging in
    the random initialisation (a plain 0.999 EMA lags ~1000 steps behind)."""

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], n_averaged: Tensor) -> None:
        n = float(n_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, weight)
        else:  # integer buffers (BatchNorm's batch counter) follow the model
            for ema, current in zip(ema_params, params, strict=True):
                ema.copy_(current)

    return update


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup to 1, then cosine decay towards 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class _SkipSampler(Sampler[int]):
    """Wraps a sampler and drops the first `skip` indices (resuming in the middle of an epoch)."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Tally:
    """Sample-weighted sums of the train loss and metrics; device tensors, read only when needed."""

    loss: Tensor | float = 0.0
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    samples: int = 0

    def add(self, loss: Tensor, metrics: dict[str, Any], n: int) -> _Tally:
        summed = dict(self.metrics)
        for k, v in metrics.items():
            v = v.detach() if isinstance(v, Tensor) else v
            summed[k] = summed.get(k, 0.0) + v * n
        return _Tally(self.loss + loss.detach().float() * n, summed, self.samples + n)

    def sums(self) -> dict[str, float]:
        values = [self.loss, *self.metrics.values()]
        floats = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in values])
        return dict(zip(["loss", *self.metrics], floats.tolist(), strict=True))

    def to_state(self) -> dict[str, Any]:
        sums = self.sums()
        return {"loss": sums.pop("loss"), "metrics": sums, "samples": self.samples}

    @staticmethod
    def from_state(state: dict[str, Any]) -> _Tally:
        return _Tally(state["loss"], dict(state["metrics"]), state["samples"])


@dataclass(frozen=True)
class _Position:
    """Where training stands after the last optimizer step: what state.pt records."""

    epoch: int  # the epoch in progress (0-based); after an epoch end, the next one
    batch: int  # batches of that epoch already used
    step: int  # optimizer steps done
    tally: _Tally
    rng: dict[str, Any]


class Trainer:
    """Trains `model` on `train_set` with `loss_fn(model, batch) -> (loss, metrics)`.

    Each epoch ends with `evaluate_fn(model, val_loader, device) -> metrics` (or the mean of
    loss_fn over the validation set when evaluate_fn is None); its keys are logged with a
    "val_" prefix. Under torchrun only rank 0 evaluates, so metric objects in evaluate_fn
    must not synchronise across ranks (torchmetrics: sync_on_compute=False).
    The run folder gets metrics.csv/.jsonl, loss.png, train_config.json,
    model.safetensors (best by `config.monitor`, a tie going to the lower validation loss;
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
        config: TrainConfig,
        run_dir: str | Path,
        device: torch.device,
        checkpoint_meta: dict[str, Any],
        collate_fn: Callable[[list[Any]], Any] | None = None,
        quiet: bool = False,
        val_collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.model = model
        self.train_set, self.val_set = train_set, val_set
        self.loss_fn, self.evaluate_fn = loss_fn, evaluate_fn
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = device
        self.meta = checkpoint_meta
        self.collate_fn = collate_fn
        self.val_collate_fn = val_collate_fn or collate_fn  # e.g. no MixUp on validation
        self.quiet = quiet
        self.world, self.rank = world_size(), 0
        self.best: float | None = None
        self.best_metrics: dict[str, Any] = {}
        self.bad_epochs = 0
        self._deferring = False
        self._stop_requested = False
        self._tensorboard: Any = None

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    # ----------------------------------------------------------------- set-up
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue from run_dir/state.pt) and return the best epoch's metrics."""
        with self._process_group(), self._signals():
            self._setup(resume)
            try:
                with self._progress_bar():
                    self._run()
            except KeyboardInterrupt:
                self._deferring = True  # a second Ctrl-C must not cut the save short
                self._flush()
                if self.main:
                    save_state(self.run_dir / "state.pt", self._state())
                    self._say(
                        f"interrupted: training state saved in {self.run_dir / 'state.pt'} "
                        f"(continue with --resume {self.run_dir})"
                    )
                raise SystemExit(EXIT_INTERRUPTED) from None
            finally:
                if self._tensorboard is not None:
                    self._tensorboard.close()
        return self.best_metrics

    @contextlib.contextmanager
    def _process_group(self) -> Iterator[None]:
        owned = self.world > 1 and not dist.is_initialized()
        if self.world > 1:
            self.device = init_distributed(self.device)
            self.rank = dist.get_rank()
        try:
            yield
            if owned:
                dist.barrier()  # leaving while another rank still talks to this one can abort
        finally:
            if owned:
                dist.destroy_process_group()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into KeyboardInterrupt, held back while state is being written."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._stop_requested = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _deferred(self) -> Iterator[None]:
        """Finish this block before a Ctrl-C/SIGTERM takes effect (consistent state)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._stop_requested:
            raise KeyboardInterrupt

    def _setup(self, resume: bool) -> None:
        cfg = self.config
        self.model.to(self.device)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay is not None
            else None
        )
        self._make_loaders()
        steps_per_epoch = math.ceil(self.n_batches / cfg.accumulate)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = LambdaLR(
            self.optimizer,
            warmup_cosine(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch),
        )
        self.amp = amp_dtype(self.device) if cfg.amp else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.log = MetricsLog(self.run_dir)
        if resume:
            self._load_state()
        else:
            seed_everything(cfg.seed + self.rank)
            self._at = _Position(0, 0, 0, _Tally(), _rng_state(self.device))
        self._ddp = None
        if self.world > 1:
            cuda = self.device.type == "cuda"
            self._ddp = DistributedDataParallel(self.model, [self.device] if cuda else None)
        train_model = self._ddp or self.model
        self.train_model = torch.compile(train_model) if cfg.compile else train_model
        self._pending: list[tuple[int, Tensor]] = []  # (step, loss) not yet checked for NaN
        self._last_refresh = time.perf_counter()
        self._tensorboard = _tensorboard_writer(self.run_dir) if self.main else None
        if self.main:
            self.log.keep(self._at.epoch)
            with atomic_path(self.run_dir / "train_config.json") as tmp:
                tmp.write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    def _make_loaders(self) -> None:
        cfg = self.config
        if len(self.train_set) == 0:  # type: ignore[arg-type]
            raise LbdlError("the training set is empty")
        self._generator = torch.Generator()
        inner: Sampler[int] = (
            DistributedSampler(self.train_set, shuffle=True, seed=cfg.seed)
            if self.world > 1
            else RandomSampler(self.train_set, generator=self._generator)
        )
        self._sampler = _SkipSampler(inner)
        loader_args = {
            "batch_size": cfg.batch_size,
            "num_workers": cfg.workers,
            "collate_fn": self.collate_fn,
            # pinning pays off only when a worker thread does it beside the training step
            "pin_memory": self.device.type == "cuda" and cfg.workers > 0,
        }
        self.train_loader = DataLoader(
            self.train_set, sampler=self._sampler, generator=self._generator, **loader_args
        )
        self.n_batches = math.ceil(len(inner) / cfg.batch_size)  # type: ignore[arg-type]
        self.val_loader = None
        self._val_generator = torch.Generator()
        if self.val_set is not None and len(self.val_set) > 0:  # type: ignore[arg-type]
            self.val_loader = DataLoader(
                self.val_set,
                generator=self._val_generator,
                **{**loader_args, "collate_fn": self.val_collate_fn},
            )

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        cfg = self.config
        for epoch in range(self._at.epoch, cfg.epochs):
            if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                break
            if self._end_epoch(epoch, *self._train_epoch(epoch)):
                break

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over the training set (the rest of it when resuming); (seconds, samples)."""
        cfg, start = self.config, self._at
        self.model.train()
        # The data order (and the workers' seeds) depend only on (seed, epoch, rank).
        self._generator.manual_seed(cfg.seed + 1009 * epoch + 1_000_003 * self.rank)
        if isinstance(self._sampler.inner, DistributedSampler):
            self._sampler.inner.set_epoch(epoch)
        self._sampler.skip = start.batch * cfg.batch_size
        self._bar_start(epoch, start.batch)
        tally, step, t0 = start.tally, start.step, time.perf_counter()
        for i, batch in enumerate(self.train_loader, start=start.batch):
            group_start = i - i % cfg.accumulate
            group_len = min(cfg.accumulate, self.n_batches - group_start)
            last = i + 1 == group_start + group_len
            batch = to_device(batch, self.device)
            with self._no_sync(not last):
                with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
                    loss, metrics = self.loss_fn(self.train_model, batch)
                self.scaler.scale(loss / group_len).backward()
            tally = tally.add(loss, metrics, batch_size(batch))
            self._pending.append((step + 1, loss.detach()))
            if not last:
                continue
            with self._deferred():
                self._optimizer_step()
                step += 1
                self._at = _Position(epoch, i + 1, step, tally, _rng_state(self.device))
            if time.perf_counter() - self._last_refresh > REFRESH_S:
                self._flush()
            if cfg.save_period and step % cfg.save_period == 0:
                self._flush()
                with self._deferred():
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
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
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
        cfg = self.config
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
        with self._deferred():
            self._at = _Position(epoch + 1, 0, self._at.step, _Tally(), _rng_state(self.device))
            if self.main:
                improved = self._update_best(row)
                stop = cfg.patience is not None and bool(val) and self.bad_epochs >= cfg.patience
                self._save_epoch(row, improved)
                self._say_epoch(row, improved, stop)
        if self.world > 1:
            decision = [stop, self.bad_epochs]
            dist.broadcast_object_list(decision, src=0)
            stop, self.bad_epochs = decision
        return stop

    def _reduce(self, tally: _Tally) -> dict[str, float]:
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
        self._val_generator.manual_seed(self.config.seed)  # the same worker seeds every epoch
        with torch.no_grad():
            if self.evaluate_fn is not None:
                metrics = self.evaluate_fn(model, self.val_loader, self.device)  # type: ignore[arg-type]
            else:
                metrics = self._mean_loss(model)
        self.model.train()
        return {k if k.startswith("val_") else f"val_{k}": float(v) for k, v in metrics.items()}

    def _mean_loss(self, model: nn.Module) -> dict[str, float]:
        tally = _Tally()
        for batch in self.val_loader:  # type: ignore[union-attr]
            batch = to_device(batch, self.device)
            with torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
                loss, metrics = self.loss_fn(model, batch)
            tally = tally.add(loss, metrics, batch_size(batch))
        return {k: v / max(tally.samples, 1) for k, v in tally.sums().items()}

    def _update_best(self, row: dict[str, Any]) -> bool:
        if self.val_loader is None:
            self.best_metrics = row
            return True
        value = self._monitored(row)
        tied = value == self.best and _lower_loss(row, self.best_metrics)
        if tied or _improves(value, self.best, self.config.mode):
            self.best, self.best_metrics, self.bad_epochs = value, row, 0
            return True
        self.bad_epochs += 1
        return False

    def _monitored(self, row: dict[str, Any]) -> float:
        name = self.config.monitor
        for key in (name, f"val_{name}"):
            if key in row:
                return float(row[key])
        raise LbdlError(f"monitor '{name}' is not among the metrics: {', '.join(row)}")

    def _save_epoch(self, row: dict[str, Any], improved: bool) -> None:
        self.log.append(row)
        weights = (self.ema.module if self.ema is not None else self.model).state_dict()
        meta = {**self.meta, "epoch": row["epoch"], "metrics": row}
        if improved:
            save_checkpoint(self.run_dir / "model.safetensors", weights, meta)
        save_checkpoint(self.run_dir / "last.safetensors", weights, meta)
        save_state(self.run_dir / "state.pt", self._state())
        plot_metrics(self.log.csv_path, self.run_dir / "loss.png")
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()

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
            "best": self.best,
            "best_metrics": self.best_metrics,
            "bad_epochs": self.bad_epochs,
            "config": asdict(self.config),
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
            self.best, self.best_metrics = state["best"], state["best_metrics"]
            self.bad_epochs = state["bad_epochs"]
            tally = _Tally.from_state(state["tally"])
            self._at = _Position(state["epoch"], state["batch"], state["step"], tally, state["rng"])
        except (KeyError, ValueError, RuntimeError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LbdlError(f"{path}: does not match this model and settings ({first_line})") from e
        _set_rng_state(self._at.rng, self.device)

    # ------------------------------------------------------- progress, output
    @contextlib.contextmanager
    def _progress_bar(self) -> Iterator[None]:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            auto_refresh=False,
            transient=True,
            disable=self.quiet or not self.main,
        )
        self._task = None
        with self._progress:
            yield

    def _bar_start(self, epoch: int, done: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._epoch_t0, self._epoch_done0 = time.perf_counter(), self._at.tally.samples
        description = f"epoch {epoch + 1}/{self.config.epochs}"
        self._task = self._progress.add_task(description, total=self.n_batches, info="")
        self._progress.update(self._task, completed=done, refresh=True)

    def _bar_update(self) -> None:
        if self._task is None or self._progress.disable:
            return
        tally = self._at.tally
        info = ""
        if tally.samples:
            speed = (tally.samples - self._epoch_done0) / (time.perf_counter() - self._epoch_t0)
            loss = float(tally.loss) / tally.samples
            info = f"loss {loss:.4g}  {speed * self.world:.0f} samples/s"
        self._progress.update(self._task, completed=self._at.batch, info=info, refresh=True)

    def _say(self, text: str) -> None:
        if self.main and not self.quiet:
            self._progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _say_epoch(self, row: dict[str, Any], improved: bool, stop: bool) -> None:
        shown = [k for k in row if k == "train_loss" or k.startswith("val_")]
        values = "  ".join(f"{k} {row[k]:.4g}" for k in shown)
        best = "  (best)" if improved and self.val_loader is not None else ""
        self._say(
            f"epoch {row['epoch']}/{self.config.epochs}  {values}  "
            f"{row['time_s']:.1f} s  {row['samples_per_s']:.0f} samples/s{best}"
        )
        if stop:
            self._say(f"early stop: no better {self.config.monitor} for {self.bad_epochs} epochs")


def _lower_loss(row: dict[str, Any], best_row: dict[str, Any]) -> bool:
    """Whether `row` has a lower validation loss than `best_row` (breaks ties of a coarse
    monitor such as the WER or accuracy of a small validation set)."""
    return "val_loss" in row and row["val_loss"] < best_row.get("val_loss", math.inf)


def _improves(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


def _tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir))
