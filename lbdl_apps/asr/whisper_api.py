"""A Whisper model ready to transcribe (book 6.5): the same interface as the `Recognizer` of
lbdl's own models (api.py), with Whisper's front end (whisper_log_mel) and Whisper's
decoding: each file transcribed as openai-whisper's transcribe() does (whisper_transcribe.py:
30-s windows read at `seek`, timestamp segments, temperature fallback, the previous text as
prompt), the files' windows decoded in batches; word timestamps (whisper_timing.py) and
Silero VAD (vad.py) on request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lbdl_apps.asr.api import Segment, Transcript
from lbdl_apps.asr.audio import HOP, N_FFT, SAMPLE_RATE, read_audio
from lbdl_apps.asr.model import SpeechRecognizer
from lbdl_apps.asr.normalize import normalize_english
from lbdl_apps.asr.whisper_decode import Decoded, WhisperOptions, decode
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.asr.whisper_transcribe import (
    BEST_OF,
    LongForm,
    Stream,
    detect_languages,
    run_streams,
)
from lbdl_apps.core.batch import BatchReport, read_batches
from lbdl_apps.core.errors import LbdlError


def whisper_mel(wave: np.ndarray, n_mels: int) -> Tensor:
    """The whole file's log-mel spectrogram (n_mels, samples // 160): one maximum for the
    file, as Whisper's (audio shorter than one FFT frame is padded with silence)."""
    from lbdl_apps.asr.audio import whisper_log_mel

    padded = wave if len(wave) >= N_FFT else np.pad(wave, (0, N_FFT - len(wave)))
    return whisper_log_mel(padded, n_mels)[:, : len(wave) // HOP]


def clip_times(segments: list[Segment], duration: float) -> None:
    """Times past the end of the audio (a last window's timestamps may run on to 30 s) set
    to its end."""
    for segment in segments:
        segment.start, segment.end = min(segment.start, duration), min(segment.end, duration)
        for word in segment.words or []:
            word.start, word.end = min(word.start, duration), min(word.end, duration)


class WhisperRecognizer:
    """A Whisper model with its tokenizer, ready for transcription."""

    normalize = staticmethod(normalize_english)  # what evaluation compares

    def __init__(self, model: SpeechRecognizer, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.tokenizer = WhisperTokenizer.from_json(meta["tokenizer"])
        info = meta.get("whisper", {})
        self.suppress = list(info.get("suppress_tokens") or self.tokenizer.suppress_tokens())
        self.alignment_heads = [tuple(h) for h in info.get("alignment_heads") or []]
        self.n_mels = model.config.n_mels

    def options(
        self, beam_size: int = 1, language: str | None = None, task: str = "transcribe"
    ) -> WhisperOptions:
        options = WhisperOptions(language=language, task=task, beam_size=beam_size)
        options.check(self.tokenizer)
        return options

    def decode(self, windows: list[Tensor], options: WhisperOptions) -> list[Decoded]:
        """Decode (n_mels, 3000) log-mel windows in one batch."""
        mel = torch.stack(windows).to(self.device)
        return decode(self.model, self.tokenizer, mel, self.suppress, options)

    def long_form(
        self,
        beam_size: int = 1,
        no_speech_threshold: float = 0.6,
        language: str | None = None,
        task: str = "transcribe",
        long_form: LongForm | None = None,
    ) -> LongForm:
        """`long_form`, or openai-whisper's defaults with these options; checked."""
        if long_form is None:
            long_form = LongForm(
                decoding=WhisperOptions(
                    language=language, task=task, beam_size=beam_size, best_of=BEST_OF
                ),
                no_speech_threshold=no_speech_threshold,
            )
        long_form.decoding.check(self.tokenizer)
        if long_form.word_timestamps and not self.alignment_heads:
            raise LbdlError("--word-timestamps: the checkpoint names no alignment heads")
        return long_form

    def transcribe_waves(
        self,
        waves: list[np.ndarray],
        beam_size: int = 1,
        batch_size: int = 16,
        no_speech_threshold: float = 0.6,
        language: str | None = None,
        task: str = "transcribe",
        long_form: LongForm | None = None,
    ) -> list[list[Segment]]:
        """Segments of each 16 kHz waveform, each transcribed as openai-whisper's
        transcribe(), the windows of all of them decoded in batches (`long_form`, when given,
        replaces the other options)."""
        return [t.segments for t in self.transcribe_audio(
            waves, batch_size, self.long_form(beam_size, no_speech_threshold, language, task,
                                              long_form))]  # fmt: skip

    def transcribe_audio(
        self, waves: list[np.ndarray], batch_size: int, long_form: LongForm
    ) -> list[Transcript]:
        """Transcripts (no path) of 16 kHz waveforms; with `long_form.vad`, of their speech
        only, the times mapped back onto the whole waveforms."""
        maps = None
        if long_form.vad:
            from lbdl_apps.asr.vad import speech_only

            waves, maps = speech_only(waves)
        language = long_form.decoding.language
        streams = [Stream(whisper_mel(w, self.n_mels), self.tokenizer, long_form, language)
                   for w in waves]  # fmt: skip
        detect_languages(self.model, self.tokenizer, streams)
        align = None
        if long_form.word_timestamps:
            from lbdl_apps.asr.whisper_timing import Aligner

            align = Aligner(
                self.model,
                self.tokenizer,
                self.alignment_heads,
                long_form.prepend_punctuations,
                long_form.append_punctuations,
            )
        run_streams(streams, self.decode, batch_size, align)
        results = []
        for i, (wave, stream) in enumerate(zip(waves, streams, strict=True)):
            segments = stream.segments
            duration = len(wave) / SAMPLE_RATE
            if maps is not None:
                segments, duration = maps[i].restore(segments), maps[i].duration
            clip_times(segments, duration)
            results.append(Transcript("", stream.text(), duration, segments, stream.language))
        return results

    def transcribe(
        self,
        paths: Iterable[str | Path],
        beam_size: int = 1,
        batch_size: int = 16,
        no_speech_threshold: float = 0.6,
        report: BatchReport | None = None,
        adapt: bool = False,
        adapt_passes: int = 0,
        language: str | None = None,
        task: str = "transcribe",
        long_form: LongForm | None = None,
    ) -> list[Transcript]:
        """Transcripts of audio files; unreadable files go to `report` (or raise)."""
        if adapt or adapt_passes:
            self.adapt([], batch_size, adapt_passes)
        chosen = self.long_form(beam_size, no_speech_threshold, language, task, long_form)
        results = []
        for names, waves in read_batches(list(paths), read_audio, batch_size, report):
            for name, found in zip(names, self.transcribe_audio(waves, batch_size, chosen),
                                   strict=True):  # fmt: skip
                results.append(replace(found, path=str(name)))
        return results

    def adapt(self, waves: Iterable[np.ndarray], batch_size: int = 16, passes: int = 0) -> int:
        raise LbdlError("--adapt / --adapt-passes: for lbdl's own models, not Whisper models")
