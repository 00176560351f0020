"""bench/inference_speed.py's clip case: a small CLIP (width 96, depth 3, patch 7, the
settings of bench/clip_fashion.py) trained two epochs on ../shared/data/fashion-mnist with
captions from class-name templates (about 3 minutes; --quick: a tiny CLIP, seconds on the
built-in scenes), scored by its zero-shot accuracy on the 10k test images (class-name
prompts only; --quick: the scenes' validation split), timed on the image tower over a
batch of 32."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from inference_common import Case, found_or_trained

from lbdl_apps.clip.api import load
from lbdl_apps.clip.cli import EvaluateArgs, TrainArgs
from lbdl_apps.clip.export import deployment
from lbdl_apps.clip.task import evaluate, train
from lbdl_apps.core.options import Common, Inference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
SHARED = {"model": "small", "width": 96, "depth": 3, "patch_size": 7, "context_length": 16,
          "batch_size": 128, "lr": 1.5e-3, "warmup": 0.5, "epochs": 2}  # fmt: skip
QUICK = {"model": "tiny", "patch_size": 8, "batch_size": 32, "lr": 2e-3, "warmup": 0.3,
         "epochs": 1, "scenes": 300, "vocab_size": 200, "context_length": 12}  # fmt: skip


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)
    shared = DATA.is_dir() and not quick

    def train_here(folder: Path) -> Path:
        settings = {**SHARED, "data": str(DATA)} if shared else QUICK
        train(TrainArgs(run_dir=folder / "run", **settings), common)  # type: ignore[arg-type]
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("clip", checkpoints, train_here, workdir)

    def accuracy(inference: Inference) -> float:
        args = EvaluateArgs(checkpoint=str(checkpoint), exist_ok=True, out=workdir / "evaluate",
                            data=str(DATA) if shared else None, split="test" if shared else "val",
                            **asdict(inference))  # fmt: skip
        return evaluate(args, common).scores["zero_shot_acc"]

    return Case(
        "clip", checkpoint,
        "Fashion-MNIST zero-shot accuracy" if shared else "built-in scenes zero-shot accuracy",
        lambda: deployment(load(checkpoint)), accuracy, batch=32, tolerance=0.01,
    )  # fmt: skip
