"""`lbdl asr` learns (book 6.5): a short training on built-in synthesized digits lowers the
loss and transcribes held-out synthesized digits far better than chance."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lbdl_apps.asr.train import TrainArgs, run_evaluation, run_training
from lbdl_apps.core.cli_common import Common


def test_short_training_on_builtin_digits_beats_chance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = TrainArgs(
        builtin="digit",
        builtin_size=600,  # + 60 validation and 60 test clips, drawn apart
        width=64,
        depth=1,
        heads=2,
        epochs=5,
        batch_size=8,
        lr=3e-3,
        warmup=0.5,
        vocab_size=300,
        max_tokens=8,
        label_smoothing=0.0,
        run_dir=run,
        exist_ok=True,
    )
    scores = run_training(args, Common(quiet=True, threads=1))
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["train_loss"]) < 0.75 * float(rows[0]["train_loss"])
    # chance: guessing the most frequent digit gives a WER of about 0.9
    assert scores["test_wer"] < 0.5, scores
    evaluated, rows_scored, folder = run_evaluation(
        run / "model.safetensors", None, tmp_path / "eval", "test", 2, Common(threads=1)
    )
    assert evaluated["wer"] == pytest.approx(scores["test_wer"], abs=0.15)
    assert len(rows_scored) == 60 and (folder / "results.csv").is_file()
