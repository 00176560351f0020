"""The asr step of `lbdl tour`: train on built-in synthesized digits, evaluate, transcribe
wav files, and show their spectrograms with the transcripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from matplotlib.figure import Figure

from lbdl_apps.asr.api import load
from lbdl_apps.asr.audio import SAMPLE_RATE, log_mel
from lbdl_apps.asr.builtin import make_speech
from lbdl_apps.asr.cli import EvaluateArgs, TrainArgs
from lbdl_apps.asr.task import evaluate, train
from lbdl_apps.core.options import Common
from lbdl_apps.core.tour import TourResult, register_tour_step, train_in


def _settings(quick: bool) -> dict[str, Any]:
    """A small recognizer on spoken digits (the --quick one is a smoke test)."""
    return {
        "builtin": "digit",
        "builtin_size": 60 if quick else 600,
        "width": 32 if quick else 64,
        "depth": 1,
        "heads": 2,
        "epochs": 1 if quick else 8,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup": 0.5,
        "vocab_size": 300,
        "max_tokens": 8,
        "label_smoothing": 0.0,
    }


@register_tour_step("asr", "Speech recognition (book 6.5)")
def asr_tour(workdir: Path, quick: bool, common: Common) -> TourResult:
    args = TrainArgs(**_settings(quick))
    checkpoint, _ = train_in(workdir, train, args, common)
    run_dir = checkpoint.parent
    evaluated = evaluate(EvaluateArgs(checkpoint=str(run_dir), out=workdir / "evaluate"), common)
    scores = evaluated.scores
    clips = workdir / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    waves, texts = make_speech(6, seed=4321, kind="digit", silence=0.0)
    paths = []
    for i, (wave, text) in enumerate(zip(waves, texts, strict=True)):
        paths.append(clips / f"{i}_{text}.wav")
        soundfile.write(paths[-1], wave, SAMPLE_RATE)
    transcripts = load(run_dir).transcribe(paths)
    picture = workdir / "transcripts.png"
    _draw(waves, texts, [t.text for t in transcripts], picture)
    return TourResult(
        metrics={"test_wer": scores["wer"], "test_cer": scores["cer"]},
        images=[picture, run_dir / "loss.png"],
        notes=f"encoder-decoder transformer (width {args.width}) trained {args.epochs} epochs "
        f"on {args.builtin_size} spoken digits synthesized with eSpeak NG; log-mel spectrograms "
        "of new clips with reference / transcript"
        + (" (--quick: a smoke test, too short to learn)" if quick else ""),
    )


def _draw(waves: list[np.ndarray], refs: list[str], hyps: list[str], out: Path) -> None:
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(2, 3)
    for ax, wave, ref, hyp in zip(axes.flat, waves, refs, hyps, strict=True):
        ax.imshow(log_mel(wave).numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"{ref} / {hyp or '-'}", fontsize=9, color="green" if ref == hyp else "red")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
