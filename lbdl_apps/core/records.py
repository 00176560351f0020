"""What a training run records at each epoch end (DESIGN.md): the metrics log and plot,
TensorBoard scalars, the best checkpoint by the monitored metric, the last checkpoint, and
the line printed for the epoch. The Trainer trains; this keeps the books."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import Tensor

from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.plots import plot_metrics
from lbdl_apps.core.runs import MetricsLog
from lbdl_apps.core.train_state import Monitor


class Recorder:
    """The books of one run folder: best epoch so far, epochs without improvement, files."""

    def __init__(
        self,
        run_dir: Path,
        meta: dict[str, Any],
        monitor: Monitor,
        validated: bool,
        epochs: int,
        console: Console,
    ) -> None:
        self.run_dir = run_dir
        self.meta = meta
        self.monitor = monitor
        self.validated = validated  # whether epochs end with a validation
        self.epochs = epochs
        self.console = console
        self.best: float | None = None
        self.best_metrics: dict[str, Any] = {}
        self.bad_epochs = 0
        self.log: MetricsLog | None = None
        self._tensorboard: Any = None

    def open(self, last_epoch: int) -> None:
        """Start writing: keep the log rows up to `last_epoch` (a resumed run repeats what
        its state had not saved) and open TensorBoard when it is installed."""
        self.log = MetricsLog(self.run_dir)
        self.log.keep(last_epoch)
        self._tensorboard = _tensorboard_writer(self.run_dir)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()

    def update_best(self, row: dict[str, Any]) -> bool:
        """Whether this epoch is the best so far (every epoch is, without validation)."""
        if not self.validated:
            self.best_metrics = row
            return True
        value = self.monitor.value(row)
        tied = value == self.best and _lower_loss(row, self.best_metrics)
        if tied or self.monitor.improves(value, self.best):
            self.best, self.best_metrics, self.bad_epochs = value, row, 0
            return True
        self.bad_epochs += 1
        return False

    def save_epoch(self, row: dict[str, Any], weights: dict[str, Tensor], improved: bool) -> None:
        """model.safetensors (when improved), last.safetensors, the log, the plot."""
        assert self.log is not None, "open() first"
        self.log.append(row)
        meta = {**self.meta, "epoch": row["epoch"], "metrics": row}
        if improved:
            save_checkpoint(self.run_dir / "model.safetensors", weights, meta)
        save_checkpoint(self.run_dir / "last.safetensors", weights, meta)
        plot_metrics(self.log.csv_path, self.run_dir / "loss.png")
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def say_epoch(self, row: dict[str, Any], improved: bool, stop: bool) -> None:
        shown = [k for k in row if k == "train_loss" or k.startswith("val_")]
        values = "  ".join(f"{k} {row[k]:.4g}" for k in shown)
        best = "  (best)" if improved and self.validated else ""
        self.say(
            f"epoch {row['epoch']}/{self.epochs}  {values}  "
            f"{row['time_s']:.1f} s  {row['samples_per_s']:.0f} samples/s{best}"
        )
        if stop:
            self.say(f"early stop: no better {self.monitor.metric} for {self.bad_epochs} epochs")

    def to_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_metrics": self.best_metrics, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_metrics = state["best"], state["best_metrics"]
        self.bad_epochs = state["bad_epochs"]


def _lower_loss(row: dict[str, Any], best_row: dict[str, Any]) -> bool:
    """Whether `row` has a lower validation loss than `best_row` (breaks ties of a coarse
    monitor such as the WER or accuracy of a small validation set)."""
    return "val_loss" in row and row["val_loss"] < best_row.get("val_loss", math.inf)


def _tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir))
