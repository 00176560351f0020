"""bench/inference_speed.py's segment case: the U-Net of bench/segment_membrane.py (width
16, 4 levels, 128-pixel crops) trained ten short epochs on ../shared/data/membrane/train
with a seeded 5 of its 25 images held out (about 3 minutes; --quick: a small U-Net, seconds
on the built-in scenes), scored by the membrane pixel accuracy of the held-out images at
full size (sliding window), static int8 calibrated on tiles of its own training images
(--calibrate), timed on a batch of 4 tiles of 128 x 128."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from inference_common import Case, found_or_trained

from lbdl_apps.core.export import Graph
from lbdl_apps.core.options import Common, Inference
from lbdl_apps.segment.api import load
from lbdl_apps.segment.cli import EvaluateArgs, TrainArgs
from lbdl_apps.segment.export import deployment
from lbdl_apps.segment.task import evaluate, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane" / "train"
SHARED = {"model": "unet", "width": 16, "depth": 4, "blocks": 2, "image_size": 128,
          "epochs": 10, "repeat": 8, "batch_size": 8, "lr": 5e-3, "warmup": 1.0,
          "val_fraction": 0.2}  # fmt: skip
QUICK = {"model": "unet", "width": 8, "depth": 3, "blocks": 1, "epochs": 1, "scenes": 40,
         "batch_size": 8, "lr": 1e-2}  # fmt: skip
TILE = 128


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)
    shared = DATA.is_dir() and not quick
    data = str(DATA) if shared else None

    def train_here(folder: Path) -> Path:
        train(TrainArgs(data=data, run_dir=folder / "run", **(SHARED if shared else QUICK)),
              common)  # type: ignore[arg-type] # fmt: skip
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("segment", checkpoints, train_here, workdir)

    def accuracy(inference: Inference) -> float:
        calibrated = replace(inference, calibrate=data) if inference.quantize else inference
        args = EvaluateArgs(checkpoint=str(checkpoint), split="val", exist_ok=True,
                            out=workdir / "evaluate", **asdict(calibrated))  # fmt: skip
        return evaluate(args, common).scores["pixel_acc"]

    def timed(graph: Graph) -> tuple[torch.Tensor]:
        channels = graph.inputs[0].shape[1]
        return (torch.randn(4, channels, TILE, TILE, generator=torch.Generator().manual_seed(0)),)

    return Case(
        "segment", checkpoint,
        "membrane pixel accuracy (5 held-out images)" if shared else "built-in pixel accuracy",
        lambda: deployment(load(checkpoint)), accuracy, batch=4, tolerance=0.01,
        timed_inputs=timed, notes={"calibration": data or "built-in scenes"},
    )  # fmt: skip
