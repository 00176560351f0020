"""Long-form transcription as openai-whisper's `transcribe()` does it (book 6.5): a file's
log-mel spectrogram is read through 30-s windows starting at `seek`; each window is decoded
with timestamp tokens, the previous text as prompt (`condition_on_previous_text`, after an
`initial_prompt`), and temperature fallback (0, 0.2, ... 1: decoded again, hotter, while the
text is too repetitive, its compression ratio above 2.4, or too unlikely, its average
log-probability below -1, unless the window is silent); the timestamp pairs cut it into
segments and `seek` moves to the last complete one (or to the window's end). Several files
are decoded together: the windows of the files whose prompt and language are the same (all
the files' first windows, for one language) form one batch, and only the windows that fail
the thresholds are decoded again, at the next temperature."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lbdl_apps.asr.api import Segment
from lbdl_apps.asr.audio import HOP, SAMPLE_RATE, WINDOW_FRAMES, pad_frames
from lbdl_apps.asr.model import window_frames
from lbdl_apps.asr.whisper_decode import Decoded, WhisperOptions, detect_language
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.core.errors import LbdlError

if TYPE_CHECKING:
    from lbdl_apps.asr.cli import Decoding

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper's fallback
BEST_OF = 5  # samples per window above temperature 0 (openai-whisper's command line)
PREPEND = "\"'“¿([{-"  # punctuation merged into the next word (word timestamps)
APPEND = "\"'.。,，!！?？:：”)]}、"  # into the previous word
STRIDE = 2  # mel frames per encoder position (and per timestamp step)
PRECISION = STRIDE * HOP / SAMPLE_RATE  # seconds per timestamp step: 0.02


@dataclass(frozen=True)
class LongForm:
    """What openai-whisper's transcribe() takes besides a window's decoding options."""

    decoding: WhisperOptions = field(default_factory=lambda: WhisperOptions(best_of=BEST_OF))
    temperatures: tuple[float, ...] = TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad: bool = False
    encoder_window: float | None = None  # seconds per window of a clip that fits in one
    prepend_punctuations: str = PREPEND
    append_punctuations: str = APPEND

    def __post_init__(self) -> None:
        if not self.temperatures:
            raise LbdlError("--temperature: at least one temperature")

    def needs_fallback(self, result: Decoded) -> bool:
        """Whether a window is decoded again at the next temperature: too repetitive or too
        unlikely, unless it is silence (openai-whisper's decode_with_fallback)."""
        fallback = self.repeats(result)
        if self.logprob_threshold is not None and result.avg_logprob < self.logprob_threshold:
            fallback = True
        if (self.no_speech_threshold is not None and self.logprob_threshold is not None
                and result.no_speech_prob > self.no_speech_threshold
                and result.avg_logprob < self.logprob_threshold):  # fmt: skip
            fallback = False  # silence
        return fallback

    def repeats(self, result: Decoded) -> bool:
        """Whether a window's text is too repetitive (its compression ratio is too high)."""
        threshold = self.compression_ratio_threshold
        return threshold is not None and result.compression_ratio > threshold

    def silent(self, result: Decoded) -> bool:
        """A window skipped: likely no speech, and not confident enough to keep its text."""
        if self.no_speech_threshold is None or result.no_speech_prob <= self.no_speech_threshold:
            return False
        return self.logprob_threshold is None or result.avg_logprob <= self.logprob_threshold


Decoder = Callable[[list[Tensor], WhisperOptions], list[Decoded]]
# (segments, encoded window, frames of audio in it, time offset, last speech, language,
# task) -> None: sets the segments' words
Aligner = Callable[[list[Segment], Tensor, int, float, float, str | None, str], None]


def decode_with_fallback(
    decoder: Decoder, windows: list[Tensor], options: WhisperOptions, long_form: LongForm
) -> list[Decoded]:
    """Each window decoded at the first temperature whose result passes the thresholds (or
    the last one's result); a temperature's failures are decoded again together. A shortened
    window whose text still repeats itself (the way tiny.en fails on them) is decoded again
    on the full 30-s window."""
    results: list[Decoded | None] = [None] * len(windows)
    pending = list(range(len(windows)))
    for temperature in long_form.temperatures:
        found = decoder([windows[i] for i in pending], replace(options, temperature=temperature))
        for i, result in zip(pending, found, strict=True):
            results[i] = result
        pending = [i for i, result in zip(pending, found, strict=True)
                   if long_form.needs_fallback(result)]  # fmt: skip
        if not pending:
            break
    if windows[0].shape[-1] < WINDOW_FRAMES:  # a shortened window (--encoder-window)
        again = [i for i, result in enumerate(results) if long_form.repeats(result)]
        if again:
            full = [pad_frames(windows[i]) for i in again]  # the same audio, Whisper's 30 s
            for i, result in zip(again, decode_with_fallback(decoder, full, options, long_form),
                                 strict=True):  # fmt: skip
                results[i] = result
    return results  # type: ignore[return-value]


def timestamp_segments(
    tokens: list[int], begin: int, offset: float, frames: int
) -> tuple[list[tuple[float, float, list[int]]], int, bool]:
    """A window's segments (start, end, tokens) from its timestamp pairs, the frames `seek`
    moves on, and whether the window ended on a single timestamp (no speech after it)."""
    stamp = [t >= begin for t in tokens]
    single_ending = stamp[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_ending else [])
        pieces, last = [], 0
        for current in slices:
            piece = tokens[last:current]
            pieces.append((offset + (piece[0] - begin) * PRECISION,
                           offset + (piece[-1] - begin) * PRECISION, piece))  # fmt: skip
            last = current
        advance = frames if single_ending else (tokens[last - 1] - begin) * STRIDE
        return pieces, advance, single_ending
    duration = frames * HOP / SAMPLE_RATE
    stamps = [t for t in tokens if t >= begin]
    if stamps and stamps[-1] != begin:  # no pair, but a timestamp: the last one ends it
        duration = (stamps[-1] - begin) * PRECISION
    return [(offset, offset + duration, tokens)], frames, single_ending


class Stream:
    """One file being transcribed: its log-mel spectrogram (n_mels, frames), where the next
    window starts (`seek`, in frames), its tokens so far (after the initial prompt's), since
    which of them the prompt is taken, and its segments."""

    def __init__(
        self, mel: Tensor, tokenizer: WhisperTokenizer, long_form: LongForm, language: str | None
    ) -> None:
        self.mel, self.frames, self.seek = mel, mel.shape[-1], 0
        seconds = long_form.encoder_window  # for clips that fit in it; longer files: 30 s
        fits = seconds is not None and self.frames <= window_frames(seconds)
        self.window_size = window_frames(seconds) if fits else WINDOW_FRAMES
        self.tokenizer, self.long_form, self.language = tokenizer, long_form, language
        prompt = long_form.initial_prompt
        self.tokens = tokenizer.encode(" " + prompt.strip()) if prompt is not None else []
        self.initial = len(self.tokens)
        self.reset_since = 0
        self.segments: list[Segment] = []
        self.last_speech = 0.0

    @property
    def done(self) -> bool:
        return self.seek >= self.frames

    def window(self) -> tuple[Tensor, int]:
        """The next (n_mels, 3000) window (shorter with `encoder_window`) and the frames of
        audio in it."""
        size = min(self.window_size, self.frames - self.seek)
        return pad_frames(self.mel[:, self.seek : self.seek + size], self.window_size), size

    def prompt(self) -> tuple[int, ...]:
        return tuple(self.tokens[self.reset_since :])

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens[self.initial :]).strip()

    def advance(self, result: Decoded, window: Tensor, size: int, align: Aligner | None) -> None:
        """Take a window's result: its segments (words with `align`), and move `seek` on."""
        offset = float(self.seek * HOP / SAMPLE_RATE)
        if self.long_form.silent(result):
            self.seek += size  # no speech: on to the next window
            return
        eot = self.tokenizer.eot
        pieces, moved, single_ending = timestamp_segments(
            result.tokens, self.tokenizer.timestamp_begin, offset, size
        )
        segments = [Segment(start, end, self.tokenizer.decode([t for t in tokens if t < eot]),
                            result.avg_logprob, result.no_speech_prob, tokens,
                            result.temperature, result.compression_ratio)
                    for start, end, tokens in pieces]  # fmt: skip
        self.seek += moved
        if align is not None:
            assert result.audio is not None
            align(segments, result.audio, size, offset, self.last_speech, self.language,
                  self.long_form.decoding.task)  # fmt: skip
            ends = [w.end for s in segments for w in s.words or []] or [segments[-1].end]
            if not single_ending and ends[-1] > offset:
                self.seek = round(ends[-1] * (SAMPLE_RATE // HOP))  # after the last word
            self.last_speech = ends[-1]
        for segment in segments:
            if segment.start == segment.end or not segment.text.strip():
                segment.text, segment.tokens = "", []
                segment.words = [] if align is not None else None
            segment.text = segment.text.strip()
        self.segments.extend(segments)
        self.tokens.extend(t for s in segments for t in s.tokens)
        if not self.long_form.condition_on_previous_text or result.temperature > 0.5:
            self.reset_since = len(self.tokens)  # no prompt after a high temperature


def detect_languages(
    model: torch.nn.Module, tokenizer: WhisperTokenizer, streams: list[Stream]
) -> None:
    """A multilingual model not told the language: each file's, from its first 30 s."""
    if not tokenizer.multilingual:
        for stream in streams:
            stream.language = "en"
        return
    unknown = [s for s in streams if s.language is None]
    if not unknown:
        return
    first = [pad_frames(s.mel, WINDOW_FRAMES) for s in unknown]  # Whisper's first 30 s
    mel = torch.stack(first).to(next(model.parameters()).device)
    with torch.no_grad():
        found = detect_language(model, tokenizer, model.encode(mel)[0]).tolist()  # type: ignore[operator]
    for stream, token in zip(unknown, found, strict=True):
        stream.language = tokenizer.languages[token - tokenizer.sot - 1]


def run_streams(
    streams: list[Stream], decoder: Decoder, batch_size: int, align: Aligner | None = None
) -> None:
    """Transcribe the streams to their ends, the windows of equal prompt, language and size
    in batches of `batch_size`."""
    while active := [s for s in streams if not s.done]:
        groups: dict[tuple, list[Stream]] = {}
        for stream in active:
            key = (stream.language, stream.prompt(), stream.window_size)
            groups.setdefault(key, []).append(stream)
        for (language, prompt, _), members in groups.items():
            long_form = members[0].long_form
            options = replace(long_form.decoding, language=language, prompt=prompt,
                              without_timestamps=False)  # fmt: skip
            for first in range(0, len(members), batch_size):
                chunk = members[first : first + batch_size]
                windows = [s.window() for s in chunk]
                found = decode_with_fallback(decoder, [w for w, _ in windows], options, long_form)
                for stream, (window, size), result in zip(chunk, windows, found, strict=True):
                    stream.advance(result, window, size, align)


def temperatures(start: float, increment: float) -> tuple[float, ...]:
    """openai-whisper's CLI schedule: start, start + increment, ... up to 1 (start alone
    when the increment is 0)."""
    if increment <= 0:
        return (start,)
    count = math.floor((1.0 - start) / increment + 1e-6) + 1
    return tuple(round(start + i * increment, 6) for i in range(count))


def long_form_of(args: Decoding) -> LongForm:
    """The long-form options of `lbdl asr transcribe/evaluate`'s Decoding options."""
    decoding = WhisperOptions(
        language=args.language, task=args.task, beam_size=args.beam_size, best_of=args.best_of,
        patience=args.patience, length_penalty=args.length_penalty,
    )  # fmt: skip
    return LongForm(
        decoding=decoding, temperatures=temperatures(args.temperature, args.temperature_increment),
        compression_ratio_threshold=args.compression_ratio_threshold,
        logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
        condition_on_previous_text=args.condition_on_previous_text,
        initial_prompt=args.initial_prompt, word_timestamps=args.word_timestamps, vad=args.vad,
        encoder_window=args.encoder_window,
    )  # fmt: skip


WHISPER_ONLY = ("initial_prompt", "word_timestamps", "vad", "encoder_window")


def whisper_only(long_form: LongForm) -> str | None:
    """The flag of the first option set that only Whisper models follow (lbdl's own models
    decode 30-s windows without prompts or timestamps), or None; the others (temperatures,
    thresholds) change nothing there."""
    for name in WHISPER_ONLY:
        if getattr(long_form, name) not in (None, False):
            return "--" + name.replace("_", "-")
    return None
