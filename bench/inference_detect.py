"""bench/inference_speed.py's detect case: the tour's SSD (small ResNet of width 16, 64 px)
trained on the built-in scenes (4 epochs of 1200 scenes, about 3 minutes; --quick: one
short epoch), scored by mAP@.5 on the held-out scenes of another stream through `lbdl
detect evaluate` (the scenes of bench/detect_scenes.py), timed on a batch of 8 scenes: the
network with its box decoding (graph `model`), the selection after it being the same
PyTorch code in every variant."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from inference_common import Case, found_or_trained

from lbdl_apps.core.export import Graph
from lbdl_apps.core.options import Common, Inference
from lbdl_apps.detect.api import load
from lbdl_apps.detect.cli import EvaluateArgs, TrainArgs
from lbdl_apps.detect.export import deployment, samples
from lbdl_apps.detect.task import evaluate, train

BATCH = 8


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)

    def train_here(folder: Path) -> Path:
        width, epochs, scenes = (8, 1, 64) if quick else (16, 4, 1200)
        args = TrainArgs(width=width, epochs=epochs, scenes=scenes, batch_size=32, lr=4e-3,
                         warmup=0.3, run_dir=folder / "run")  # fmt: skip
        train(args, common)
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("detect", checkpoints, train_here, workdir)

    def accuracy(inference: Inference) -> float:
        args = EvaluateArgs(checkpoint=str(checkpoint), out=workdir / "evaluate", exist_ok=True,
                            **asdict(inference))  # fmt: skip
        return evaluate(args, common).scores["map_50"] or 0.0

    def timed(graph: Graph) -> tuple[torch.Tensor]:
        return (samples(load(checkpoint), BATCH),)

    return Case(
        "detect", checkpoint, "scenes mAP@.5 (held-out built-in scenes)",
        lambda: deployment(load(checkpoint)), accuracy, batch=BATCH, tolerance=0.01,
        timed_inputs=timed, notes={"model": "SSD on the small ResNet, 64 px input"},
    )  # fmt: skip
