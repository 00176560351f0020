"""The learning curve of a DQN run: return against emulator frames (book 6.7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lbdl_apps.core.outputs import atomic_path


def plot_learning_curve(progress: Any, settings: Any, path: Path, window: int = 20) -> None:
    """Episode returns (dots, and their running mean) and evaluation means ± std against
    frames on top; the TD loss below."""
    scale = settings.frames_per_step
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    if progress.episodes:
        episodes = np.asarray(progress.episodes, dtype=float)
        x, returns = episodes[:, 0] * scale, episodes[:, 1]
        top.plot(x, returns, ".", alpha=0.3, color="tab:blue", label="training episode")
        if len(returns) >= window:
            running = np.convolve(returns, np.ones(window) / window, mode="valid")
            top.plot(x[window - 1 :], running, color="tab:blue", label=f"mean of {window}")
    if progress.evals:
        evals = np.asarray(progress.evals, dtype=float)
        top.errorbar(
            evals[:, 0] * scale,
            evals[:, 1],
            yerr=evals[:, 2],
            color="tab:red",
            marker="o",
            capsize=3,
            label="evaluation",
        )
    top.set_ylabel("return")
    top.set_title(settings.env_id)
    top.grid(alpha=0.3)
    top.legend(fontsize="small")
    if progress.losses:
        losses = np.asarray(progress.losses, dtype=float)
        bottom.plot(losses[:, 0] * scale, losses[:, 1], marker="o", markersize=3)
    bottom.set_ylabel("TD loss")
    bottom.set_xlabel("frames" if settings.atari else "environment steps")
    bottom.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
