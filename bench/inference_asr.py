"""bench/inference_speed.py's asr case: a small lbdl recognizer (width 64, 2 blocks, Whisper's
conv1d front end) trained on ../shared/data/fsdd, clips split at random (about 3 minutes;
--quick: seconds on built-in spoken digits), scored by the WER (%) of its test split through
`lbdl asr evaluate` in each variant (encoder, cross-attention cache and decoder steps all
through the variant, export.py), timed on the encoder for a batch of 8 two-second clips."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from inference_common import Case, found_or_trained

from lbdl_apps.asr.api import load
from lbdl_apps.asr.cli import EvaluateArgs, TrainArgs
from lbdl_apps.asr.export import deployment
from lbdl_apps.asr.task import evaluate, train
from lbdl_apps.core.options import Common, Inference

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)
    shared = FSDD.is_dir() and not quick

    def train_here(folder: Path) -> Path:
        data = {"data": str(FSDD), "epochs": 12} if shared else {
            "builtin": "digit", "builtin_size": 60, "epochs": 1}  # fmt: skip
        args = TrainArgs(width=64 if shared else 32, depth=2 if shared else 1, heads=2,
                         batch_size=32 if shared else 8, lr=3e-3, warmup=0.3, vocab_size=300,
                         max_tokens=8, label_smoothing=0.0, run_dir=folder / "run",
                         **data)  # type: ignore[arg-type]  # fmt: skip
        train(args, common)
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("asr", checkpoints, train_here, workdir)

    def accuracy(inference: Inference) -> float:
        args = EvaluateArgs(checkpoint=str(checkpoint), exist_ok=True, show=0,
                            out=workdir / "evaluate", **asdict(inference))  # fmt: skip
        return 100 * evaluate(args, common).scores["wer"]

    return Case(
        "asr", checkpoint, "FSDD WER (%), random split" if shared else "built-in digits WER (%)",
        lambda: deployment(load(checkpoint)), accuracy, batch=8, tolerance=1.0,
        higher_is_better=False,
    )  # fmt: skip
