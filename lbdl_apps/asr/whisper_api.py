"""A Whisper model ready to transcribe (book 6.5): the same interface as the `Recognizer` of
lbdl's own models (api.py), with Whisper's front end (whisper_log_mel, 30-s windows) and
Whisper's decoding (whisper_decode.py). Files are cut into consecutive 30-s windows, decoded
in batches across files; a window Whisper would call silent (no-speech probability above
the threshold and average log-probability below -1) gets no text."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lbdl_apps.asr.api import Segment, Transcript
from lbdl_apps.asr.audio import HOP, N_FFT, SAMPLE_RATE, WINDOW_FRAMES, pad_frames, read_audio
from lbdl_apps.asr.model import SpeechRecognizer
from lbdl_apps.asr.normalize import normalize_english
from lbdl_apps.asr.whisper_decode import Decoded, WhisperOptions, decode
from lbdl_apps.asr.whisper_tokenizer import WhisperTokenizer
from lbdl_apps.core.batch import BatchReport, read_batches
from lbdl_apps.core.errors import LbdlError

LOGPROB_THRESHOLD = -1.0  # openai-whisper's: a window this confident is never silent


def whisper_mel(wave: np.ndarray, n_mels: int) -> Tensor:
    """The whole file's log-mel spectrogram (n_mels, samples // 160): one maximum for the
    file, as Whisper's (audio shorter than one FFT frame is padded with silence)."""
    from lbdl_apps.asr.audio import whisper_log_mel

    padded = wave if len(wave) >= N_FFT else np.pad(wave, (0, N_FFT - len(wave)))
    return whisper_log_mel(padded, n_mels)[:, : len(wave) // HOP]


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

    def transcribe_waves(
        self,
        waves: list[np.ndarray],
        beam_size: int = 1,
        batch_size: int = 16,
        no_speech_threshold: float = 0.6,
        language: str | None = None,
        task: str = "transcribe",
    ) -> list[list[Segment]]:
        """Segments of each 16 kHz waveform: consecutive 30-s windows of its log-mel
        spectrogram, decoded in batches across waveforms."""
        options = self.options(beam_size, language, task)
        pieces = []  # (waveform, first frame, window)
        for i, wave in enumerate(waves):
            mel = whisper_mel(wave, self.n_mels)
            for first in range(0, mel.shape[-1], WINDOW_FRAMES):
                pieces.append((i, first, pad_frames(mel[:, first : first + WINDOW_FRAMES])))
        segments: list[list[Segment]] = [[] for _ in waves]
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start : start + batch_size]
            found = self.decode([window for *_, window in chunk], options)
            for (i, first, _), result in zip(chunk, found, strict=True):
                silent = (result.no_speech_prob > no_speech_threshold
                          and result.avg_logprob < LOGPROB_THRESHOLD)  # fmt: skip
                begin, samples = first * HOP / SAMPLE_RATE, len(waves[i]) / SAMPLE_RATE
                end = min(samples, (first + WINDOW_FRAMES) * HOP / SAMPLE_RATE)
                text = "" if silent else result.text
                segments[i].append(Segment(begin, end, text, result.avg_logprob,
                                           result.no_speech_prob))  # fmt: skip
        return segments

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
    ) -> list[Transcript]:
        """Transcripts of audio files; unreadable files go to `report` (or raise)."""
        if adapt or adapt_passes:
            self.adapt([], batch_size, adapt_passes)
        self.options(beam_size, language, task)  # bad options: before any file is read
        results = []
        for names, waves in read_batches(list(paths), read_audio, batch_size, report):
            found = self.transcribe_waves(waves, beam_size, batch_size, no_speech_threshold,
                                          language, task)  # fmt: skip
            for name, wave, segments in zip(names, waves, found, strict=True):
                text = " ".join(s.text for s in segments if s.text)
                results.append(Transcript(str(name), text, len(wave) / SAMPLE_RATE, segments))
        return results

    def adapt(self, waves: Iterable[np.ndarray], batch_size: int = 16, passes: int = 0) -> int:
        raise LbdlError("--adapt / --adapt-passes: for lbdl's own models, not Whisper models")
