"""What bench/inference_speed.py needs of each app's bench/inference_<app>.py: a `Case` (the
model and how it is scored) and a model trained within a budget or found among earlier
runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbdl_apps.core.export import Deployment, Graph, Inputs
from lbdl_apps.core.options import Inference


@dataclass
class Case:
    """One app's model and how it is scored: `deployment()` loads it (its first graph is
    the one timed, on `timed_inputs(graph)` holding `batch` inputs), `accuracy(inference)`
    runs the app's evaluate through a variant; `tolerance` is the goal's largest change."""

    app: str
    checkpoint: Path
    metric: str
    deployment: Callable[[], Deployment]
    accuracy: Callable[[Inference], float]
    batch: int
    tolerance: float = 0.01
    higher_is_better: bool = True
    timed_inputs: Callable[[Graph], Inputs] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def repeated(graph: Graph, batch: int) -> Inputs:
    """The graph's sample inputs repeated along the batch axis to `batch` items."""
    return tuple(
        t.repeat(batch // t.shape[0] + 1, *([1] * (t.dim() - 1)))[:batch] for t in graph.inputs
    )


def found_or_trained(
    app: str, checkpoints: Path | None, train: Callable[[Path], Path], workdir: Path
) -> Path:
    """The newest model.safetensors under `checkpoints`/<app>/ when there is one, else
    `train(workdir)` (which returns the checkpoint it wrote)."""
    if checkpoints is not None:
        found = sorted(
            (checkpoints / app).rglob("model.safetensors"), key=lambda p: p.stat().st_mtime
        )
        if found:
            return found[-1]
    return train(workdir)
