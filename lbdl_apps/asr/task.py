"""`lbdl asr` as a task of core's run (book 6.5): its data, tokenizer, model, loss and
validation for `train`, and `evaluate` on a split of any speech data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from lbdl_apps.asr import finetune
from lbdl_apps.asr.adapt import token_prior
from lbdl_apps.asr.api import TASK, load
from lbdl_apps.asr.audio import HOP, N_FFT, N_MELS, NORMALIZATIONS, SAMPLE_RATE
from lbdl_apps.asr.augment import Augment
from lbdl_apps.asr.cli import EvaluateArgs, TrainArgs
from lbdl_apps.asr.data import SpeechData, SpeechDataset, data_for, make_collate
from lbdl_apps.asr.loss import speech_loss, whisper_loss
from lbdl_apps.asr.metrics import Scored, evaluate_utterances, validation_fn, write_results
from lbdl_apps.asr.model import RecognizerConfig, build_model, default_config
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.asr.whisper_transcribe import long_form_of
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.core.run import Finished, Phase, SupervisedTask, TrainingSets, run_training
from lbdl_apps.core.train_state import Monitor

# What a checkpoint keeps to rebuild its data's splits, beside the data, seed and val_fraction.
SPLIT_SETTINGS = ("test_fraction", "split_by", "test_speakers", "builtin", "builtin_size")


@dataclass
class AsrData:
    """The utterances of a run and the tokenizer learnt on its training transcripts."""

    speech: SpeechData
    tokenizer: TextTokenizer | WhisperTokenizer


class AsrTask(SupervisedTask[TrainArgs, AsrData]):
    """Teacher-forced cross-entropy of the transcripts' tokens; the best epoch has the lowest
    validation WER (a tie going to the lower validation loss). With --init, a Whisper model
    fine-tuned (finetune.py)."""

    name = TASK
    monitor = Monitor("val_wer", "min")
    start: finetune.Start | None = None
    """The Whisper model a fine-tuning run starts from (--init)."""

    def check(self, args: TrainArgs) -> None:
        finetune.check_args(args)
        if args.init is not None:
            return
        default_config(args.model, 0, frontend=args.frontend)  # an unknown model or front end
        if args.normalization not in NORMALIZATIONS:
            raise LbdlError(
                f"--normalization {args.normalization}: choose {', '.join(NORMALIZATIONS)}"
            )
        if args.split_by not in ("random", "speaker"):
            raise LbdlError(f"--split-by {args.split_by}: choose random or speaker")

    def load_data(self, args: TrainArgs, seed: int) -> AsrData:
        if args.init is not None:  # a wrong --init before any data is read
            self.start = finetune.read_start(args.init)
        speech = data_for(asdict(args), seed, args.skip_bad)
        if not speech.train:
            raise LbdlError(f"{speech.source}: no training utterances")
        held = f"; test speakers {', '.join(speech.test_speakers)}" if speech.test_speakers else ""
        self.say(
            f"data: {speech.source}; {len(speech.train)} train, {len(speech.val)} val, "
            f"{len(speech.test)} test utterances{held}"
        )
        if self.start is not None:
            self.say(f"fine-tuning {args.init} ({self.start.config.name})")
            return AsrData(speech, self.start.tokenizer)
        tokenizer = TextTokenizer.train((u.text for u in speech.train), args.vocab_size)
        return AsrData(speech, tokenizer)

    def model_config(self, args: TrainArgs, data: AsrData) -> RecognizerConfig:
        if self.start is not None:
            return finetune.config_for(self.start, args)
        config = default_config(args.model, data.tokenizer.vocab_size, args.max_tokens,
                                args.frontend)  # fmt: skip
        overrides = {"dim": args.width, "heads": args.heads}
        overrides |= {"encoder_depth": args.depth, "decoder_depth": args.depth}
        chosen = {k: v for k, v in overrides.items() if v is not None}
        config = replace(config, dropout=args.dropout, **chosen)
        if config.dim % config.heads:
            raise LbdlError(f"--width {config.dim} is not divisible by --heads {config.heads}")
        return config

    build_model = staticmethod(build_model)

    def initialize(self, model: nn.Module, args: TrainArgs, data: AsrData) -> None:
        if self.start is not None:
            finetune.initialize(model, self.start)

    def phases(self, args: TrainArgs, model: nn.Module) -> list[Phase]:
        """With --init: the parameters that train chosen (--lora, --freeze-encoder)."""
        if args.init is None:
            return [Phase(args)]

        def prepare(model: nn.Module) -> None:
            self.say(finetune.freeze(model, args.lora is not None, args.freeze_encoder))

        return [Phase(args, prepare=prepare)]

    def datasets(self, args: TrainArgs, data: AsrData, model: nn.Module) -> TrainingSets:
        tokenizer, speech = data.tokenizer, data.speech
        augment = Augment(
            args.speed, args.noise_snr, args.freq_masks, args.time_masks, args.stretch,
            args.warp, args.eq,
        )  # fmt: skip
        if isinstance(tokenizer, WhisperTokenizer):
            return self._whisper_sets(data, model.config, augment)  # type: ignore[arg-type]
        train = SpeechDataset(speech.train, tokenizer, augment if augment != Augment() else None,
                              args.normalization)  # fmt: skip
        val = SpeechDataset(speech.val, tokenizer, None, args.normalization) if speech.val else None
        return TrainingSets(train, val, make_collate(tokenizer.sot, tokenizer.pad))

    def _whisper_sets(self, data: AsrData, config: RecognizerConfig,
                      augment: Augment) -> TrainingSets:  # fmt: skip
        """Whisper's log-mel windows and token sequences."""
        speech, tokenizer = data.speech, data.tokenizer
        assert isinstance(tokenizer, WhisperTokenizer)
        finetune.check_clips(speech.train + speech.val + speech.test, config.encoder_window)
        train = finetune.WhisperSpeechDataset(speech.train, tokenizer, config,
                                              augment if augment != Augment() else None,
                                              finetune.TIMESTAMPED)  # fmt: skip
        val = finetune.WhisperSpeechDataset(speech.val, tokenizer, config) if speech.val else None
        return TrainingSets(train, val, finetune.make_collate(tokenizer.eot))

    def loss(self, args: TrainArgs, data: AsrData):
        loss = whisper_loss if args.init is not None else speech_loss
        return partial(loss, label_smoothing=args.label_smoothing)

    def evaluator(self, args: TrainArgs, data: AsrData, model: nn.Module):
        if self.start is not None:
            return finetune.validation_fn(self.start.tokenizer, self.start.suppress)
        return validation_fn(data.tokenizer, args.max_tokens)  # type: ignore[arg-type]

    def metadata(self, args: TrainArgs, data: AsrData) -> dict[str, Any]:
        if self.start is not None:
            window = finetune.config_for(self.start, args).encoder_window
            settings = {k: getattr(args, k) for k in SPLIT_SETTINGS}
            return {**finetune.metadata(self.start, window), **settings, "init": self.start.name}
        preprocessing = {"sample_rate": SAMPLE_RATE, "n_mels": N_MELS, "n_fft": N_FFT,
                         "hop": HOP, "normalization": args.normalization}  # fmt: skip
        return {
            "tokenizer": data.tokenizer.to_json(),
            "preprocessing": preprocessing,
            "token_prior": token_prior(data.tokenizer, (u.text for u in data.speech.train)),
            **{k: getattr(args, k) for k in SPLIT_SETTINGS},
        }

    def finish(self, args: TrainArgs, data: AsrData, run: Finished) -> dict[str, float]:
        """The best checkpoint on the test split (greedy decoding), when there is one."""
        if not data.speech.test:
            return {}
        recognizer = load(run.run_dir / "model.safetensors", run.device)
        test, _ = evaluate_utterances(recognizer, data.speech.test, beam_size=1)
        self.say("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        return {f"test_{k}": v for k, v in test.items()}


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train the recognizer, keep the best checkpoint (validation WER), evaluate it on the
    test split; return the best epoch's validation scores and the test scores."""
    return run_training(AsrTask(), args, common)


@dataclass
class Evaluation:
    """The scores of `evaluate`, each utterance's, and where they were written."""

    scores: dict[str, float]
    rows: list[Scored]
    folder: Path


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """WER / CER of a checkpoint on a split (core.evaluation.split_names) of its own data or
    of --data, with --adapt after test-time adaptation to that audio; writes metrics.json and
    results.csv (one row per file). --data is read whole: no test or validation share is
    split off it (its utterances are all in "train")."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    recognizer = load(args.checkpoint, common.torch_device(), args)
    meta = recognizer.meta
    fine_tuned = "init" in meta.get("whisper", {})  # a Whisper model trained here has data
    if args.data is None and "whisper" in meta and not fine_tuned:
        raise LbdlError(f"{args.checkpoint}: a Whisper model has no data of its own: give --data")
    settings: dict[str, Any] = dict(meta)
    if args.data is not None:
        settings |= {"data": args.data, "val_fraction": 0.0, "test_fraction": 0.0,
                     "split_by": "random", "test_speakers": None}  # fmt: skip
    dataset = data_for(settings, meta.get("seed", 0))
    splits = dataset.splits()
    names = split_names(args.split, args.data is not None, splits, dataset.source)
    chosen = [u for name in names for u in splits[name]]
    scores, rows = evaluate_utterances(recognizer, chosen, args.beam_size, adapt=args.adapt,
                                       adapt_passes=args.adapt_passes, language=args.language,
                                       task=args.task, long_form=long_form_of(args))  # fmt: skip
    write_results(rows, folder / "results.csv")
    summary = {"checkpoint": str(args.checkpoint), "data": settings.get("data"),
               "split": split_label(names, splits), "beam_size": args.beam_size,
               "adapt": args.adapt or args.adapt_passes > 0, "adapt_passes": args.adapt_passes,
               **scores}  # fmt: skip
    write_json(folder / "metrics.json", summary)
    return Evaluation(scores, rows, folder)
