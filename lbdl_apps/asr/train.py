"""Training and evaluation runs of `lbdl asr`, shared by the CLI, the tour and the benchmarks."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.functional.text import char_error_rate, word_error_rate

from lbdl_apps.asr.adapt import token_prior
from lbdl_apps.asr.api import TASK, Recognizer, load
from lbdl_apps.asr.audio import NORMALIZATIONS
from lbdl_apps.asr.data import (
    IGNORED,
    Augment,
    Batch,
    SpeechData,
    SpeechDataset,
    Utterance,
    load_speech_data,
    make_collate,
    normalize_text,
)
from lbdl_apps.asr.decode import greedy_decode
from lbdl_apps.asr.model import build_model, default_config
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_distributed, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.runs import make_run_dir, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl asr train` was asked for; saved as the run's config.json."""

    model: str = "nano"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    frontend: str = "conv1d"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    warmup: float = 1.0
    weight_decay: float = 0.01
    vocab_size: int = 512
    max_tokens: int = 96
    label_smoothing: float = 0.1
    normalization: str = "band-mean"
    dropout: float = 0.0
    split_by: str = "random"
    test_speakers: str | None = None  # comma-separated
    test_fraction: float = 0.1
    builtin: str = "mixed"
    builtin_size: int = 2000
    extra_builtin: int = 0
    speed: float = 0.0
    noise_snr: float | None = None
    freq_masks: int = 0
    time_masks: int = 0
    stretch: float = 0.0
    warp: float = 0.0
    eq: float = 0.0


def word_and_char_error(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER (torchmetrics) of normalized texts; an empty reference counts
    every hypothesis word as an insertion."""
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    if not any(refs):
        return {"wer": float(any(hyps)), "cer": float(any(hyps))}
    return {
        "wer": float(word_error_rate(hyps, refs)),
        "cer": float(char_error_rate(hyps, refs)),
    }


def speech_loss(
    model: nn.Module, batch: Batch, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Teacher-forced cross-entropy of the next token (book 6.5), with label smoothing."""
    logits = model(batch.mel, batch.frames, batch.tokens)
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(),
        batch.targets.flatten(),
        ignore_index=IGNORED,
        label_smoothing=label_smoothing,
    )
    known = batch.targets != IGNORED
    accuracy = (logits.argmax(-1) == batch.targets)[known].float().mean()
    return loss, {"token_acc": accuracy}


def validation_fn(tokenizer: TextTokenizer, max_tokens: int):
    """Trainer evaluation: mean loss and greedy-decoding WER / CER of the validation set."""

    @torch.no_grad()
    def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        model.eval()
        losses, refs, hyps = [], [], []
        for batch in loader:
            batch = Batch(*(t.to(device) for t in batch))
            losses.append(float(speech_loss(model, batch)[0]) * len(batch.mel))
            found = greedy_decode(
                model, batch.mel, batch.frames, tokenizer.sot, tokenizer.eot,
                tokenizer.no_speech, max_tokens,
            )  # fmt: skip
            hyps += [tokenizer.decode(h.tokens) for h in found]
            refs += [tokenizer.decode(t[t >= 0].tolist()) for t in batch.targets.cpu()]
        return {"loss": sum(losses) / len(refs), **word_and_char_error(refs, hyps)}

    return evaluate


def _augment(args: TrainArgs) -> Augment | None:
    augment = Augment(
        args.speed, args.noise_snr, args.freq_masks, args.time_masks, args.stretch, args.warp,
        args.eq,
    )  # fmt: skip
    return augment if augment != Augment() else None


def _speakers(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def data_for(args: TrainArgs | dict[str, Any], seed: int, skip_bad: bool = False) -> SpeechData:
    """The data of a run (from its TrainArgs, or the metadata of its checkpoint)."""
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    return load_speech_data(
        get("data"),
        seed=seed,
        val_fraction=get("val_fraction", 0.1),
        test_fraction=get("test_fraction", 0.1),
        split_by=get("split_by", "random"),
        test_speakers=_speakers(get("test_speakers")),
        skip_bad=skip_bad,
        builtin_size=get("builtin_size", 2000),
        extra_builtin=get("extra_builtin", 0),
        builtin=get("builtin", "mixed"),
    )


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train the recognizer, keep the best checkpoint (validation WER), evaluate it on the
    test split; return the test scores."""
    args, common = start_run(args, common, TASK)
    # an unknown model, front end, normalization or split is an error before any data work
    default_config(args.model, 0, frontend=args.frontend)
    if args.normalization not in NORMALIZATIONS:
        raise LbdlError(f"--normalization {args.normalization}: choose {', '.join(NORMALIZATIONS)}")
    if args.split_by not in ("random", "speaker"):
        raise LbdlError(f"--split-by {args.split_by}: choose random or speaker")
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data = data_for(args, common.seed, args.skip_bad)
    if not data.train:
        raise LbdlError(f"{data.source}: no training utterances")
    held = f"; test speakers {', '.join(data.test_speakers)}" if data.test_speakers else ""
    console.print(
        f"data: {data.source}; {len(data.train)} train, {len(data.val)} val, "
        f"{len(data.test)} test utterances{held}"
    )
    tokenizer = TextTokenizer.train((u.text for u in data.train), args.vocab_size)
    config = default_config(args.model, tokenizer.vocab_size, args.max_tokens, args.frontend)
    config["dropout"] = args.dropout
    overrides = {"dim": args.width, "heads": args.heads}
    overrides |= {"encoder_depth": args.depth, "decoder_depth": args.depth}
    config |= {k: v for k, v in overrides.items() if v is not None}
    if config["dim"] % config["heads"]:
        raise LbdlError(f"--width {config['dim']} is not divisible by --heads {config['heads']}")
    model = build_model(config)
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    meta = {
        "task": TASK,
        "config": config,
        "tokenizer": tokenizer.to_json(),
        "preprocessing": {"sample_rate": 16_000, "n_mels": 80, "n_fft": 400, "hop": 160,
                          "normalization": args.normalization},
        "token_prior": token_prior(tokenizer, (u.text for u in data.train)),
        "data": args.data,
        "seed": common.seed,
        **{k: getattr(args, k) for k in (
            "val_fraction", "test_fraction", "split_by", "test_speakers", "builtin",
            "builtin_size",
        )},
    }  # fmt: skip
    collate = make_collate(tokenizer.sot, tokenizer.pad)
    trainer = Trainer(
        model,
        SpeechDataset(data.train, tokenizer, _augment(args), args.normalization),
        SpeechDataset(data.val, tokenizer, None, args.normalization) if data.val else None,
        loss_fn=lambda m, b: speech_loss(m, b, args.label_smoothing),
        evaluate_fn=validation_fn(tokenizer, args.max_tokens),
        config=TrainConfig.from_args(args, common.seed, monitor="val_wer", mode="min"),
        run_dir=run_dir,
        device=device,
        checkpoint_meta=meta,
        collate_fn=collate,
        quiet=common.quiet,
    )
    scores = trainer.fit(resume=args.resume is not None)
    if data.test and trainer.main:
        recognizer = load(run_dir / "model.safetensors", device)
        test, _ = evaluate_utterances(recognizer, data.test, beam_size=1)
        scores = {f"test_{k}": v for k, v in test.items()}
        console.print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    if is_main_process():
        print(f"run folder: {run_dir}")
    finish_distributed()
    return scores


@dataclass
class Scored:
    """One evaluated utterance."""

    name: str
    reference: str
    hypothesis: str
    wer: float
    cer: float


def evaluate_utterances(
    recognizer: Recognizer,
    utterances: list[Utterance],
    beam_size: int = 1,
    batch_size: int = 32,
    adapt: bool = False,
    adapt_passes: int = 0,
) -> tuple[dict[str, float], list[Scored]]:
    """Transcribe `utterances` (with `adapt`, after adapting the recognizer to them, without
    their texts; `adapt_passes` of information maximisation imply `adapt`); corpus WER / CER
    and the per-utterance scores."""
    waves = [u.load() for u in utterances]
    if adapt or adapt_passes:
        recognizer.adapt(waves, batch_size, adapt_passes)
    segments = recognizer.transcribe_waves(waves, beam_size, batch_size)
    hyps = [" ".join(s.text for s in segs if s.text) for segs in segments]
    refs = [u.text for u in utterances]
    rows = []
    for i, (u, ref, hyp) in enumerate(zip(utterances, refs, hyps, strict=True)):
        one = word_and_char_error([ref], [hyp])
        rows.append(Scored(str(u.path) if u.path else f"builtin:{i}", ref, hyp, *one.values()))
    scores = word_and_char_error(refs, hyps)
    scores["utterances"] = len(utterances)
    return scores, rows


def run_evaluation(
    checkpoint: Path,
    data: str | None,
    out: Path | None,
    split: str,
    beam_size: int,
    common: Common,
    adapt: bool = False,
    adapt_passes: int = 0,
) -> tuple[dict[str, float], list[Scored], Path]:
    """WER / CER of a checkpoint on a split of its own data (or of --data), with `adapt` after
    test-time adaptation to that split's audio; writes metrics.json and results.csv (one row
    per file)."""
    recognizer = load(checkpoint, common.torch_device())
    meta = dict(recognizer.meta)
    if data is not None:
        meta["data"] = data
    if split not in ("test", "val"):
        raise LbdlError(f"--split {split}: choose test or val")
    dataset = data_for(meta, meta.get("seed", 0))
    chosen = dataset.test if split == "test" else dataset.val
    if not chosen:
        raise LbdlError(f"{dataset.source}: has no {split} utterances to evaluate")
    scores, rows = evaluate_utterances(recognizer, chosen, beam_size, adapt=adapt,
                                       adapt_passes=adapt_passes)  # fmt: skip
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "results.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reference", "hypothesis", "wer", "cer"])
        for r in rows:
            writer.writerow([r.name, r.reference, r.hypothesis, f"{r.wer:.4f}", f"{r.cer:.4f}"])
    summary = {"checkpoint": str(checkpoint), "data": meta.get("data"), "split": split,
               "beam_size": beam_size, "adapt": adapt or adapt_passes > 0,
               "adapt_passes": adapt_passes, **scores}  # fmt: skip
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return scores, rows, folder


def worst(rows: list[Scored], count: int = 10) -> list[Scored]:
    """The utterances with the highest error rates (WER, then CER)."""
    return sorted(rows, key=lambda r: (-r.wer, -r.cer))[:count]
