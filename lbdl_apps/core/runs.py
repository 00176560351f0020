"""Run folders (runs/<task>/train, train2, ...), the metrics log and the loss plot."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, TypeVar

from matplotlib.figure import Figure
from torch import Tensor

from lbdl_apps.core.checkpoint import atomic_path, load_state
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import decide_on_main, is_main_process
from lbdl_apps.core.errors import LbdlError, report

A = TypeVar("A")  # an app's TrainArgs dataclass

# Columns that describe the run's progress rather than how well the model does.
BOOKKEEPING = ("epoch", "step", "lr", "time_s", "samples_per_s")


def make_run_dir(
    task: str,
    name: str | None = None,
    run_dir: str | Path | None = None,
    exist_ok: bool = False,
    root: str | Path = "runs",
) -> Path:
    """Create and return the run folder: `run_dir` if given, else root/task/name.

    Without a name the first free of train, train2, train3... is used (train itself with
    `exist_ok`). An existing non-empty folder is an error unless `exist_ok`. Under torchrun,
    rank 0 chooses and creates the folder and every rank gets its path.
    """
    return decide_on_main(lambda: _make_run_dir(task, name, run_dir, exist_ok, root))


def _make_run_dir(
    task: str, name: str | None, run_dir: str | Path | None, exist_ok: bool, root: str | Path
) -> Path:
    if run_dir is not None:
        path = Path(run_dir)
    elif name is not None:
        path = Path(root) / task / name
    else:
        path = Path(root) / task / "train"
        number = 2
        while path.exists() and not exist_ok:
            path = path.with_name(f"train{number}")
            number += 1
    if path.exists() and not path.is_dir():
        raise LbdlError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not exist_ok:
        raise LbdlError(f"{path}: run folder already exists; pass --exist-ok to reuse it")
    path.mkdir(parents=True, exist_ok=True)
    return path


class MetricsLog:
    """metrics.csv and metrics.jsonl in a run folder, one row per epoch.

    The CSV header is the union of the keys seen; it is rewritten when a new key appears.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.jsonl_path = Path(run_dir) / "metrics.jsonl"
        self._rows = self._read()
        self._header = _union_keys(self._rows)

    def _read(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.exists():
            return []
        lines = self.jsonl_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def rows(self) -> list[dict[str, Any]]:
        """All rows logged so far (including those of earlier sessions of a resumed run)."""
        return [dict(row) for row in self._rows]

    def append(self, row: dict[str, Any]) -> None:
        """Add one row to both files."""
        self._rows.append(dict(row))
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if set(row) <= set(self._header) and self.csv_path.exists():
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, self._header).writerow(row)
        else:
            self._header = _union_keys(self._rows)
            self._rewrite_csv()

    def keep(self, last_epoch: int) -> None:
        """Drop the rows after `last_epoch` (a resumed run repeats what its state had not saved)."""
        self._rows = [row for row in self._rows if row.get("epoch", 0) <= last_epoch]
        self._header = _union_keys(self._rows)
        if not self._rows:
            self.csv_path.unlink(missing_ok=True)
            self.jsonl_path.unlink(missing_ok=True)
            return
        with atomic_path(self.jsonl_path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in self._rows))
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self._header)
            writer.writeheader()
            writer.writerows(self._rows)


def _union_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def _numeric_columns(rows: list[dict[str, str]]) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {}
    for key in rows[0]:
        values = []
        for row in rows:
            try:
                values.append(float(row.get(key) or "nan"))
            except ValueError:
                break
        else:
            if any(math.isfinite(v) for v in values):
                columns[key] = values
    return columns


def plot_metrics(csv_path: str | Path, out_png: str | Path) -> None:
    """Plot metrics.csv against epoch: the loss columns on top, the other metrics below."""
    with Path(csv_path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    columns = _numeric_columns(rows)
    x = columns.get("epoch", [float(i + 1) for i in range(len(rows))])
    losses = [k for k in columns if "loss" in k]
    others = [k for k in columns if "loss" not in k and k not in BOOKKEEPING]
    panels = [group for group in (losses, others) if group]
    if not panels:
        return
    fig = Figure(figsize=(7, 3.2 * len(panels)), layout="constrained")
    for i, group in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        for key in group:
            ax.plot(x, columns[key], marker="o", markersize=3, label=key)
        ax.set_ylabel("loss" if group is losses else "metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax.set_xlabel("epoch")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def start_run(args: A, common: Common, task: str) -> tuple[A, Common]:
    """The settings a training run goes on with: the interrupted run's own with --resume,
    else these. Either way the threads and seed are applied before anything random happens
    (the model's initialisation included), so a run started from Python repeats like one
    started from the CLI."""
    if getattr(args, "resume", None) is not None:
        return resume_arguments(args, common, task)
    common.apply()
    return args, common


def resume_arguments(args: A, common: Common, task: str) -> tuple[A, Common]:
    """`train --resume RUN_DIR`: the arguments and options the run was started with (its
    config.json), keeping this command's device, threads and quiet. Other flags given with
    --resume are named in a warning, since the run goes on as saved. A folder without a
    saved state, or a run that already finished, is an error."""
    resume = Path(args.resume)  # type: ignore[attr-defined]
    defaults = type(args)()
    ignored = [
        f"--{key.replace('_', '-')}"
        for key, value in asdict(args).items()
        if key != "resume" and value != getattr(defaults, key)
    ]
    if ignored:
        report(f"warning: {', '.join(ignored)} ignored: --resume continues the run as saved")
    config_file = resume / "config.json"
    if not (resume / "state.pt").is_file() or not config_file.is_file():
        raise LbdlError(
            f"--resume {resume}: not an interrupted {task} run (no state.pt/config.json)"
        )
    saved = json.loads(config_file.read_text())
    if saved.get("task", task) != task:
        raise LbdlError(f"--resume {resume}: is a {saved['task']} run, not a {task} one")
    fields = {f.name for f in dataclass_fields(args)}
    stored = {k: v for k, v in saved["args"].items() if k in fields}
    resumed = type(args)(**{**stored, "run_dir": resume, "exist_ok": True, "resume": resume})
    state = load_state(resume / "state.pt")
    patience = getattr(resumed, "patience", None)
    early_stop = patience is not None and state.get("bad_epochs", 0) >= patience
    if state.get("epoch", 0) >= resumed.epochs or early_stop:  # type: ignore[attr-defined]
        done = "stopped early" if early_stop else f"finished its {resumed.epochs} epochs"  # type: ignore[attr-defined]
        raise LbdlError(
            f"--resume {resume}: this run {done}; nothing to resume "
            "(start a new run to train longer)"
        )
    options = Common(**saved["common"])
    options.device, options.quiet, options.threads = common.device, common.quiet, common.threads
    options.apply()
    return resumed, options


def save_run_config(
    run_dir: Path, task: str, args: Any, common: Common, model_config: dict[str, Any]
) -> None:
    """config.json: what `train` was asked for, so that --resume can start it again
    (written by rank 0 only under torchrun)."""
    if not is_main_process():
        return
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()}
    saved = {"task": task, "args": plain, "common": asdict(common), "model": model_config}
    with atomic_path(run_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(saved, indent=2))


def plot_confusion(
    confusion: Tensor, labels: list[str], path: Path, show: str = "count", title: str = ""
) -> None:
    """Confusion matrix as a PNG, coloured by rate per true class (rows: true, columns:
    predicted); small matrices also print each cell's `show`: "count" or "rate"."""
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                text = f"{rates[i, j]:.2f}" if show == "rate" else str(int(confusion[i, j]))
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
