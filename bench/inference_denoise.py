"""bench/inference_speed.py's denoise case: the tour's U-Net (width 16, 3 levels) trained on
../shared/data/denoise/train400 at sigma 25 (about 3 minutes; --quick: seconds on the
built-in dead leaves), scored by Set12 PSNR (the BENCHMARKS.md protocol), timed on a batch
of 4 gray 128 x 128 images."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from inference_common import Case, found_or_trained

from lbdl_apps.core.export import Graph
from lbdl_apps.core.options import Common, Inference
from lbdl_apps.denoise.api import load
from lbdl_apps.denoise.cli import EvaluateArgs, TrainArgs
from lbdl_apps.denoise.export import deployment
from lbdl_apps.denoise.task import evaluate, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "denoise"
SIGMA = 25


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)
    shared = (DATA / "train400").is_dir() and not quick

    def train_here(folder: Path) -> Path:
        epochs, patches = (8, 1024) if shared else (1, 64)
        args = TrainArgs(model="unet", width=16, depth=3, channels=1, epochs=epochs,
                         patches_per_epoch=patches, degrade=[f"gaussian:{SIGMA}"],
                         data=str(DATA / "train400") if shared else None, patch_size=48,
                         batch_size=16, lr=2e-3, warmup=0.2, run_dir=folder / "run")  # fmt: skip
        train(args, common)
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("denoise", checkpoints, train_here, workdir)

    def accuracy(inference: Inference) -> float:
        args = EvaluateArgs(checkpoint=str(checkpoint), baseline=False, exist_ok=True,
                            data=str(DATA / "set12") if shared else None,
                            degrade=[f"gaussian:{SIGMA}"], out=workdir / "evaluate",
                            **asdict(inference))  # fmt: skip
        return evaluate(args, common).scores["model"]["psnr"]

    def timed(graph: Graph) -> tuple[torch.Tensor]:
        return (torch.rand(4, 1, 128, 128, generator=torch.Generator().manual_seed(0)),)

    return Case(
        "denoise", checkpoint, "Set12 PSNR (dB), sigma 25" if shared else "built-in PSNR (dB)",
        lambda: deployment(load(checkpoint)), accuracy, batch=4, tolerance=0.2, timed_inputs=timed,
    )  # fmt: skip
