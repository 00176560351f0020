"""Spoken digits (FSDD) with `lbdl asr train`: leave-one-speaker-out word error rate.

For each of the 4 speakers of ../shared/data/fsdd, a recognizer is trained on every clip of
the other three, with synthesized eSpeak NG digits mixed into training, and its last epoch's
(EMA) weights transcribe every clip of the unseen speaker: as trained, after test-time
adaptation of the batch norms to that speaker's audio (no texts used; `lbdl asr evaluate
--adapt`), and after 15 more passes of information maximisation on it ("tuned"; `--adapt-passes
15`). Reported: WER and CER per held-out speaker all three ways, their means, each fold's most
frequent confusions after adaptation and after tuning, and its wall time (data, training, the
passes and the three test transcriptions).
Goals: mean WER <= 5%, each fold within 20 wall-clock minutes on a 2-core CPU (threads and
load average recorded).

    python bench/asr_fsdd.py --quick               # ~2 minutes: one fold, a sliver
    python bench/asr_fsdd.py --threads 1           # writes bench/results/asr_fsdd.json
    python bench/asr_fsdd.py --speakers theo       # one fold, merged into the existing JSON
    python bench/asr_fsdd.py --seed 1 --result asr_fsdd_seed1   # another initialization

The equivalent `lbdl asr train ...` command of each fold is printed and recorded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lbdl_apps.asr.adapt import LEARNING_RATE, maximize_information
from lbdl_apps.asr.api import load
from lbdl_apps.asr.cli import TrainArgs
from lbdl_apps.asr.data import data_for
from lbdl_apps.asr.metrics import Scored, evaluate_utterances
from lbdl_apps.asr.task import train
from lbdl_apps.core.options import Common

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import command, environment, now, read_result, write_result
except ImportError:
    from bench.common import command, environment, now, read_result, write_result

NAME = "asr_fsdd"
REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/fsdd"  # relative to the repository root
SPEAKERS = ("george", "jackson", "nicolas", "theo")
BUDGET_S = 20 * 60
GOAL_WER = 0.05
# Settings of every fold (TrainArgs fields besides data, test speaker and run folder).
CONFIG: dict[str, Any] = {
    "model": "nano",
    "frontend": "conv2d",
    "epochs": 24,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup": 0.5,
    "vocab_size": 300,
    "max_tokens": 16,
    "label_smoothing": 0.1,
    "normalization": "level-mean",
    "extra_builtin": 500,
    "speed": 0.15,
    "noise_snr": 10.0,
    "freq_masks": 2,
    "time_masks": 2,
    "stretch": 0.3,
    "ema": 0.999,
    "val_fraction": 0.0,
}
QUICK = {"epochs": 1, "extra_builtin": 50, "val_fraction": 0.5}
ADAPT_PASSES = 15  # of information maximisation after the batch norms are re-estimated


def flag(key: str, value: Any) -> str:
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def parse_setting(text: str, default: Any) -> Any:
    """A --set value in the type of the setting's default (a float where that is None)."""
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes", "on")
    return float(text) if default is None else type(default)(text)


def cli_command(speaker: str, config: dict[str, Any]) -> str:
    flags = " ".join(flag(k, v) for k, v in config.items())
    return f"lbdl asr train --data {DATA} --test-speakers {speaker} {flags}"


def confusions(rows: list[Scored], count: int = 8) -> list[str]:
    """The most frequent wrong transcriptions, as "reference -> hypothesis: times"."""
    wrong = Counter((r.reference, r.hypothesis) for r in rows if r.wer > 0)
    return [f"{ref} -> {hyp or '(nothing)'}: {n}" for (ref, hyp), n in wrong.most_common(count)]


def run_fold(speaker: str, config: dict[str, Any], threads: int, seed: int) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"asr_fsdd_{speaker}_"))
    before = environment()["loadavg"]
    start = time.perf_counter()
    try:
        args = TrainArgs(
            data=str(REPO / DATA), test_speakers=speaker, run_dir=run_dir, exist_ok=True,
            **config,
        )  # fmt: skip
        scores = train(args, Common(threads=threads, quiet=True, seed=seed))
        recognizer = load(run_dir / "model.safetensors")
        unseen = data_for(recognizer.meta, seed).test
        adapted, rows = evaluate_utterances(recognizer, unseen, adapt=True)
        maximize_information(recognizer, [u.load() for u in unseen], ADAPT_PASSES)
        tuned, tuned_rows = evaluate_utterances(recognizer, unseen)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    wall = time.perf_counter() - start
    result = {
        "test_speaker": speaker,
        "wer": scores["test_wer"],
        "cer": scores["test_cer"],
        "utterances": scores["test_utterances"],
        "wer_adapted": adapted["wer"],
        "cer_adapted": adapted["cer"],
        "confusions_adapted": confusions(rows),
        "wer_tuned": tuned["wer"],
        "cer_tuned": tuned["cer"],
        "confusions_tuned": confusions(tuned_rows),
        "wall_s": round(wall, 1),
        "within_budget": wall <= BUDGET_S,
        "loadavg_before": before,
        "loadavg_after": environment()["loadavg"],
        "command": cli_command(speaker, config) + (f" --seed {seed}" if seed else ""),
        "command_adapted": "lbdl asr evaluate RUN_FOLDER/model.safetensors --adapt",
        "command_tuned": "lbdl asr evaluate RUN_FOLDER/model.safetensors --adapt-passes "
        f"{ADAPT_PASSES}",
    }
    print(
        f"{speaker}: WER {result['wer']:.4f} CER {result['cer']:.4f}, adapted WER "
        f"{adapted['wer']:.4f} CER {adapted['cer']:.4f}, tuned WER {tuned['wer']:.4f} CER "
        f"{tuned['cer']:.4f} ({result['utterances']} clips) in {wall / 60:.1f} min; most "
        f"confused: {', '.join(result['confusions_tuned'][:4])}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one fold, a sliver (~2 min)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="of the weights, data order, eSpeak")
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS), choices=SPEAKERS)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of CONFIG, e.g. --set epochs=20 lr=3e-3",
    )
    parser.add_argument("--result", default=NAME, help="name of the results JSON")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if not (REPO / DATA).is_dir():
        raise SystemExit(f"{REPO / DATA} is absent")
    changes = dict(item.split("=", 1) for item in options.set)
    defaults = {**{k: f.default for k, f in TrainArgs.__dataclass_fields__.items()}, **CONFIG}
    unknown = sorted(set(changes) - set(defaults))
    if unknown:
        raise SystemExit(f"--set: unknown settings {', '.join(unknown)}")
    config = {**CONFIG, **{k: parse_setting(v, defaults[k]) for k, v in changes.items()}}
    config |= QUICK if options.quick else {}
    speakers = options.speakers[:1] if options.quick else options.speakers
    for speaker in speakers:
        fold = run_fold(speaker, config, options.threads, options.seed)
        if not options.quick:  # written after every fold: a long run keeps what it measured
            save(fold, config, options.seed, options.result)
    if options.quick:
        print("quick run: nothing written")


def save(fold: dict[str, Any], config: dict[str, Any], seed: int, name: str) -> None:
    """Merge one fold into bench/results/<name>.json (folds of the same settings and seed
    only) and recompute the means."""
    previous = read_result(name) or {}
    same = (previous.get("adapt_passes"), previous.get("adapt_lr")) == (ADAPT_PASSES, LEARNING_RATE)
    same = same and previous.get("config") == config
    if not same or previous.get("seed", 0) != seed:
        previous = {}
    by_speaker = {f["test_speaker"]: f for f in previous.get("folds", [])}
    by_speaker[fold["test_speaker"]] = fold
    merged = [by_speaker[s] for s in SPEAKERS if s in by_speaker]
    all_folds = len(merged) == len(SPEAKERS) and all(f["within_budget"] for f in merged)
    mean_wer = sum(f["wer"] for f in merged) / len(merged)
    mean_wer_adapted = sum(f["wer_adapted"] for f in merged) / len(merged)
    mean_wer_tuned = sum(f["wer_tuned"] for f in merged) / len(merged)
    result = {
        "benchmark": NAME,
        "goal": f"mean WER <= {GOAL_WER:.0%}, each fold <= {BUDGET_S // 60} min",
        "mean_wer": mean_wer,
        "mean_cer": sum(f["cer"] for f in merged) / len(merged),
        "mean_wer_adapted": mean_wer_adapted,
        "mean_cer_adapted": sum(f["cer_adapted"] for f in merged) / len(merged),
        "mean_wer_tuned": mean_wer_tuned,
        "mean_cer_tuned": sum(f["cer_tuned"] for f in merged) / len(merged),
        "folds_done": len(merged),
        "goal_met": all_folds and mean_wer <= GOAL_WER,
        "goal_met_adapted": all_folds and mean_wer_adapted <= GOAL_WER,
        "goal_met_tuned": all_folds and mean_wer_tuned <= GOAL_WER,
        "folds": merged,
        "config": config,
        "adapt_passes": ADAPT_PASSES,
        "adapt_lr": LEARNING_RATE,
        "seed": seed,
        "finished": now(),
        **environment(),
        "command": command(),
    }
    print(
        f"mean WER {mean_wer:.4f}, adapted {mean_wer_adapted:.4f}, tuned {mean_wer_tuned:.4f} "
        f"over {len(merged)} folds "
        f"-> {write_result(name, result)}"
    )


if __name__ == "__main__":
    main()
