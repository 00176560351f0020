"""Deploying a restorer (book 8.2): its network as one graph taking images of any size (a
multiple of the model's factor) and any batch, calibrated for static int8 on degraded
patches of the data."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lbdl_apps.core.export import CALIBRATION_INPUTS, Deployment, Graph, calibration_batches
from lbdl_apps.denoise.api import TASK, Restorer
from lbdl_apps.denoise.data import PatchPairs, load_denoise_data

SAMPLE_SIZE = 64  # side of the sample and calibration inputs (rounded to the model's factor)


def deployment(restorer: Restorer) -> Deployment:
    """The restorer's network, attached back as `restorer.model`."""
    side = max(restorer.multiple, SAMPLE_SIZE - SAMPLE_SIZE % restorer.multiple)
    axes = {0: "batch", 2: "height", 3: "width"}

    def attach(module: nn.Module) -> None:
        restorer.model = module

    graph = Graph(
        "denoiser",
        restorer.model,
        (torch.rand(2, restorer.channels, side, side, generator=torch.Generator().manual_seed(0)),),
        ["degraded"],
        ["restored"],
        dynamic={"degraded": axes, "restored": axes},
        attach=attach,
        calibration=lambda data: _calibration(restorer, data, side),
    )
    description = {
        "input": f"(B, {restorer.channels}, H, W) float in [0, 1], "
        f"{'gray' if restorer.channels == 1 else 'RGB'}, H and W multiples of {restorer.multiple}",
        "output": "the restored image, same shape (clamp to [0, 1])",
        "degradations": [d.spec for d in restorer.degradations],
        "tiles": "large images: overlapping tiles of 256 blended (lbdl denoise predict --tile)",
    }
    return Deployment(TASK, Path(restorer.meta["file"]), [graph], description)


def _calibration(restorer: Restorer, data: str | None, side: int) -> list[tuple[torch.Tensor]]:
    """Degraded patches of --calibrate DATA (default: the built-in dead leaves)."""
    loaded = load_denoise_data(data, restorer.degradations, restorer.channels, val_fraction=0.0)
    patches = PatchPairs(
        loaded.train, restorer.degradations, side, CALIBRATION_INPUTS, restorer.channels
    )
    return calibration_batches(patches, lambda batch: (batch[0],))
