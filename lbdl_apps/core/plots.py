"""The pictures every run folder gets: the metrics plotted against epochs (loss.png) and
confusion matrices (classify, segment)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from lbdl_apps.core.outputs import atomic_path

# Columns that describe the run's progress rather than how well the model does.
BOOKKEEPING = ("epoch", "step", "lr", "time_s", "samples_per_s")


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
