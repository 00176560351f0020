"""Fine-tuning a Whisper model (`lbdl asr train --init whisper:tiny.en`; book 6.5, 8.3): its
weights, tokenizer and prompt format, its log-mel front end on 30-s padded windows or on a
shortened encoder window, fully, with LoRA adapters (lora.py) or with the encoder frozen.
The teacher-forced sequence is Whisper's: <|startoftranscript|> [<|en|> <|transcribe|>]
<|notimestamps|> text <|endoftext|>; the loss counts the text tokens and the end token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lbdl_apps.asr.audio import HOP, SAMPLE_RATE, WINDOW_FRAMES, pad_frames, random_equalizer
from lbdl_apps.asr.augment import Augment
from lbdl_apps.asr.data import IGNORED, Batch, Utterance
from lbdl_apps.asr.lora import check_lora, merge_lora, train_only_adapters
from lbdl_apps.asr.model import RecognizerConfig, build_model, window_frames
from lbdl_apps.asr.normalize import normalize_english
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.core.checkpoint import config_from_dict, read_any, save_checkpoint
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.train import EvaluateFn

TASK = "asr"
LANGUAGE = "en"  # the language token of a multilingual model's prompt
TIMESTAMPED = 0.5  # the share of training sequences with timestamps
PRECISION = 0.02  # seconds per timestamp token


@dataclass
class Start:
    """The Whisper model a fine-tuning run starts from: plain weights (any adapters merged),
    its metadata, typed config and tokenizer."""

    name: str
    state: dict[str, Tensor]
    meta: dict[str, Any]
    config: RecognizerConfig
    tokenizer: WhisperTokenizer

    @property
    def suppress(self) -> list[int]:
        return list(self.meta["whisper"].get("suppress_tokens") or [])


def read_whisper(checkpoint: str | Path, flag: str) -> tuple[Path, dict[str, Tensor], dict]:
    """An lbdl Whisper checkpoint, a publisher's file or folder, or a `whisper:` name ->
    (file, weights, metadata with the typed config); an LbdlError for another model."""
    from lbdl_apps.asr.api import resolve

    path, state, meta = read_any(resolve(checkpoint), TASK)
    if not isinstance(meta.get("config"), dict):
        raise LbdlError(f"{flag}{checkpoint}: incomplete asr metadata (no model config)")
    config = config_from_dict(RecognizerConfig, meta["config"], path)
    if config.architecture != "whisper" or "whisper" not in meta:
        raise LbdlError(f"{flag}{checkpoint}: not a Whisper model (lbdl's own asr models "
                        "train without --init)")  # fmt: skip
    return path, state, {**meta, "config": config}


def read_start(init: str) -> Start:
    """The start of `--init INIT` (a fine-tuned checkpoint's adapters folded in)."""
    _, state, meta = read_whisper(init, "--init ")
    config: RecognizerConfig = meta["config"]
    if config.lora_rank:
        state = merge_lora(state, config.lora_rank, config.lora_alpha)
        config = replace(config, lora_rank=0, lora_alpha=0.0)
    tokenizer = WhisperTokenizer.from_json(meta["tokenizer"])
    return Start(str(init), state, meta, config, tokenizer)


def check_args(args: Any) -> None:
    """The fine-tuning options' checks that need no data (args: asr's TrainArgs)."""
    if args.init is None:
        given = {"--lora": args.lora is not None, "--lora-alpha": args.lora_alpha is not None,
                 "--freeze-encoder": args.freeze_encoder,
                 "--encoder-window": args.encoder_window is not None}  # fmt: skip
        for flag in (flag for flag, value in given.items() if value):
            raise LbdlError(f"{flag}: for fine-tuning a Whisper model; give --init")
        return
    for flag, value in (("--width", args.width), ("--depth", args.depth),
                        ("--heads", args.heads)):  # fmt: skip
        if value is not None:
            raise LbdlError(f"{flag}: not with --init (the model is {args.init}'s)")
    check_lora(args.lora, args.lora_alpha)


def config_for(start: Start, args: Any) -> RecognizerConfig:
    """The fine-tuned model's config: the start's, with the adapters and window asked for."""
    window = args.encoder_window if args.encoder_window is not None else start.config.encoder_window
    if window is not None and window_frames(window) > start.config.max_frames:
        raise LbdlError(f"--encoder-window {window}: longer than the model's "
                        f"{start.config.max_frames // 100} s")  # fmt: skip
    rank = args.lora or 0
    alpha = (args.lora_alpha or 2.0 * rank) if rank else 0.0
    return replace(start.config, lora_rank=rank, lora_alpha=alpha, encoder_window=window,
                   dropout=args.dropout)  # fmt: skip


def initialize(model: nn.Module, start: Start) -> None:
    """The start's weights into `model`; only adapters (zero updates) may be missing."""
    found = model.load_state_dict(start.state, strict=False)
    missing = [k for k in found.missing_keys if not k.endswith((".lora_a", ".lora_b"))]
    if missing or found.unexpected_keys:
        wrong = (missing or found.unexpected_keys)[0]
        raise LbdlError(f"--init {start.name}: weights do not fit the model ({wrong})")


def freeze(model: nn.Module, lora: bool, freeze_encoder: bool) -> str:
    """Which parameters train: the adapters alone (LoRA), and not the encoder's (frozen
    encoder); returns a line saying how many values train."""
    total = sum(p.numel() for p in model.parameters())
    if lora:
        train_only_adapters(model)
    if freeze_encoder:
        model.get_submodule("encoder").requires_grad_(False)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not trained:
        raise LbdlError("--freeze-encoder: nothing left to train")
    return f"training {trained:,} of {total:,} values"


def check_clips(utterances: Sequence[Utterance], seconds: float | None) -> None:
    """An LbdlError when a clip is longer than the encoder window it would be cut to."""
    if seconds is None:
        return
    import soundfile

    longest = max((soundfile.info(str(u.path)).duration if u.path is not None
                   else len(u.load()) / SAMPLE_RATE for u in utterances), default=0.0)  # fmt: skip
    if longest > window_frames(seconds) * HOP / SAMPLE_RATE:
        raise LbdlError(f"--encoder-window {seconds}: shorter than the longest clip "
                        f"({longest:.2f} s)")  # fmt: skip


def prompt(tokenizer: WhisperTokenizer, timestamps: bool = False) -> list[int]:
    """The tokens before the text: start of transcript, [language, transcribe,] and no
    timestamps unless the text is timestamped."""
    start = tokenizer.sot_sequence(LANGUAGE, "transcribe")
    return start if timestamps else [*start, tokenizer.no_timestamps]


class WhisperSpeechDataset(Dataset):
    """Utterances -> (Whisper log-mel (n_mels, frames) of the 30-s window or of the shortened
    one, Whisper's token sequence, the length of its prompt). The sequence is prompt +
    " text" + end; a `timestamps` share of the accesses has it timestamped as Whisper's
    training data are (prompt without <|notimestamps|>, then <|0.00|> text <|clip end|>), so
    that the model keeps both of Whisper's decoding modes (transcribe decodes with
    timestamps). Waveforms are kept in memory; augmentation (`whisper_augment`) and the
    timestamped share are drawn afresh at every access."""

    def __init__(self, utterances: list[Utterance], tokenizer: WhisperTokenizer,
                 config: RecognizerConfig, augment: Augment | None = None,
                 timestamps: float = 0.0) -> None:  # fmt: skip
        from lbdl_apps.asr.whisper_api import whisper_mel

        self.mel, self.tokenizer, self.timestamps = whisper_mel, tokenizer, timestamps
        self.utterances, self.augment, self.n_mels = utterances, augment, config.n_mels
        window = config.encoder_window
        self.frames = window_frames(window) if window is not None else WINDOW_FRAMES
        self.texts = [tokenizer.encode(" " + u.text.strip()) for u in utterances]
        longest = len(prompt(tokenizer)) + 2  # the prompt, two timestamps, the end token
        for u, text in zip(utterances, self.texts, strict=True):
            if len(text) + longest > config.max_tokens:
                raise LbdlError(f"{u.path or u.text[:40]}: {len(text)} tokens, the model "
                                f"writes at most {config.max_tokens - longest}")  # fmt: skip
        self.waves: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[Tensor, list[int], int]:
        if index not in self.waves:
            self.waves[index] = self.utterances[index].load()
        wave = self.waves[index]
        if self.augment is None:
            mel = self.mel(wave, self.n_mels)
        else:
            mel = whisper_augment(wave, self.augment, self.mel, self.n_mels)
        t = self.tokenizer
        text = self.texts[index]
        if self.timestamps and float(torch.rand(())) < self.timestamps:
            seconds = mel.shape[-1] * HOP / SAMPLE_RATE  # as augmented (tempo)
            steps = min(round(seconds / PRECISION), self.frames // 2)
            start = prompt(t, timestamps=True)
            sequence = [*start, t.timestamp_begin, *text, t.timestamp_begin + steps, t.eot]
        else:
            start = prompt(t)
            sequence = [*start, *text, t.eot]
        return pad_frames(mel, self.frames), sequence, len(start)


def whisper_augment(
    wave: np.ndarray, augment: Augment, mel_of: Callable[[np.ndarray, int], Tensor], n_mels: int
) -> Tensor:
    """Whisper's log-mel (n_mels, frames) of a training clip, augmented (book 6.5): the
    waveform (speed, noise), then a random equalizer (a gain of g dB adds g / 40 to Whisper's
    log10 power / 4 scale), tempo, vocal tract length and SpecAugment masks (filled with 0,
    Whisper's padding)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    mel = mel_of(augment.wave(wave, rng), n_mels)
    if augment.eq > 0:
        mel = mel + random_equalizer(augment.eq, rng, bands=n_mels)[:, None] / 40
    return augment.spectrogram(mel)


def make_collate(eot: int):
    """Collate (mel, sequence, prompt length) items: inputs sequence[:-1] (padded with the
    end token), targets sequence[1:] with the prompt's and the padding's positions IGNORED
    by the loss."""

    def collate(items: list[tuple[Tensor, list[int], int]]) -> Batch:
        longest = max(len(s) for _, s, _ in items) - 1
        tokens = torch.full((len(items), longest), eot, dtype=torch.long)
        targets = torch.full((len(items), longest), IGNORED, dtype=torch.long)
        for i, (_, sequence, begin) in enumerate(items):
            tokens[i, : len(sequence) - 1] = torch.tensor(sequence[:-1])
            targets[i, begin - 1 : len(sequence) - 1] = torch.tensor(sequence[begin:])
        mel = torch.stack([m for m, _, _ in items])  # (B, n_mels, frames)
        frames = torch.full((len(items),), mel.shape[-1], dtype=torch.long)
        return Batch(mel, frames, tokens, targets)

    return collate


def validation_fn(tokenizer: WhisperTokenizer, suppress: list[int]) -> EvaluateFn:
    """Trainer evaluation: mean loss, and WER / CER of Whisper's greedy decoding (Whisper's
    English normalisation) on the validation set."""
    from lbdl_apps.asr.loss import whisper_loss
    from lbdl_apps.asr.metrics import word_and_char_error
    from lbdl_apps.asr.whisper_decode import WhisperOptions, decode

    @torch.no_grad()
    def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        model.eval()
        losses, refs, hyps = [], [], []
        for batch in loader:
            batch = Batch(*(t.to(device) for t in batch))
            losses.append(float(whisper_loss(model, batch)[0]) * len(batch.mel))
            known = [row[(row >= 0) & (row < tokenizer.eot)].tolist() for row in batch.targets]
            options = WhisperOptions(language=LANGUAGE if tokenizer.multilingual else None,
                                     sample_len=max(len(k) for k in known) + 8)  # fmt: skip
            found = decode(model, tokenizer, batch.mel, suppress, options)  # type: ignore[arg-type]
            hyps += [d.text for d in found]
            refs += [tokenizer.decode(k) for k in known]
        scores = word_and_char_error(refs, hyps, normalize_english)
        return {"loss": sum(losses) / len(refs), **scores}

    return evaluate


def metadata(start: Start, window: float | None) -> dict[str, Any]:
    """What a fine-tuned checkpoint keeps of its start: the tokenizer, Whisper's settings
    (special tokens, suppression, alignment heads) and the front end's."""
    preprocessing = dict(start.meta.get("preprocessing", {}))
    preprocessing["window_s"] = window if window is not None else 30
    whisper = {**start.meta["whisper"], "init": start.name}
    return {"tokenizer": start.tokenizer.to_json(), "preprocessing": preprocessing,
            "whisper": whisper, "source": start.meta.get("source", start.name)}  # fmt: skip


def merge_checkpoint(checkpoint: str, out: Path) -> int:
    """`lbdl asr merge-lora`: a LoRA checkpoint's adapters folded into its weights, written
    atomically to `out` as a plain checkpoint of the same model; returns their rank."""
    path, state, meta = read_whisper(checkpoint, "")
    config: RecognizerConfig = meta["config"]
    if not config.lora_rank:
        raise LbdlError(f"{checkpoint}: has no LoRA adapters to merge")
    merged = merge_lora(state, config.lora_rank, config.lora_alpha)
    plain = replace(config, lora_rank=0, lora_alpha=0.0)
    build_model(plain).load_state_dict(merged)  # what is written loads
    meta = {k: v for k, v in meta.items() if k != "file"}
    save_checkpoint(out, merged, {**meta, "config": asdict(plain), "merged_from": str(path)})
    return config.lora_rank
