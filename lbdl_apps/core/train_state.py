"""What the Trainer keeps between steps and saves in state.pt: where training stands, the
running sums of the epoch's loss and metrics, and every random generator's state, so that a
resumed run goes on exactly as the uninterrupted one would have."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler


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


def rng_state(device: torch.device) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's generators (as tensors and plain values,
    so that state.pt loads with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved."""
    kind, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class SkipSampler(Sampler[int]):
    """Wraps a sampler and drops the first `skip` indices (resuming in the middle of an epoch)."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip  # type: ignore[arg-type]


@dataclass(frozen=True)
class Tally:
    """Sample-weighted sums of the train loss and metrics; device tensors, read only when needed."""

    loss: Tensor | float = 0.0
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    samples: int = 0

    def add(self, loss: Tensor, metrics: dict[str, Any], n: int) -> Tally:
        summed = dict(self.metrics)
        for k, v in metrics.items():
            v = v.detach() if isinstance(v, Tensor) else v
            summed[k] = summed.get(k, 0.0) + v * n
        return Tally(self.loss + loss.detach().float() * n, summed, self.samples + n)

    def sums(self) -> dict[str, float]:
        values = [self.loss, *self.metrics.values()]
        floats = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in values])
        return dict(zip(["loss", *self.metrics], floats.tolist(), strict=True))

    def to_state(self) -> dict[str, Any]:
        sums = self.sums()
        return {"loss": sums.pop("loss"), "metrics": sums, "samples": self.samples}

    @staticmethod
    def from_state(state: dict[str, Any]) -> Tally:
        return Tally(state["loss"], dict(state["metrics"]), state["samples"])


@dataclass(frozen=True)
class Position:
    """Where training stands after the last optimizer step: what state.pt records."""

    epoch: int  # the epoch in progress (0-based); after an epoch end, the next one
    batch: int  # batches of that epoch already used
    step: int  # optimizer steps done
    tally: Tally
    rng: dict[str, Any]


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks the best checkpoint, and whether lower or higher is
    better; a tie goes to the lower validation loss."""

    metric: str = "val_loss"
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {self.mode!r}")

    def value(self, row: dict[str, Any]) -> float:
        from lbdl_apps.core.errors import LbdlError

        for key in (self.metric, f"val_{self.metric}"):
            if key in row:
                return float(row[key])
        raise LbdlError(f"monitor '{self.metric}' is not among the metrics: {', '.join(row)}")

    def improves(self, value: float, best: float | None) -> bool:
        if best is None or math.isnan(best):
            return True
        return value < best if self.mode == "min" else value > best
