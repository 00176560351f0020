"""The asr Python API: `load(checkpoint).transcribe(paths)`; the CLI uses it too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lbdl_apps.asr.audio import SAMPLE_RATE, log_mel, read_audio
from lbdl_apps.asr.data import pad_mels
from lbdl_apps.asr.decode import Hypothesis, beam_search, greedy_decode
from lbdl_apps.asr.model import SpeechRecognizer, build_model
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import BatchReport, LbdlError

TASK = "asr"
WINDOW_S = 30.0  # the longest audio the encoder sees at once, as Whisper


@dataclass
class Segment:
    """The text of one window of audio, from `start` to `end` seconds."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass
class Transcript:
    """The transcription of one file: its text and its 30-second segments."""

    path: str
    text: str
    duration: float
    segments: list[Segment] = field(default_factory=list)


class Recognizer:
    """A trained speech recognizer with its tokenizer, ready for transcription."""

    def __init__(self, model: SpeechRecognizer, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.tokenizer = TextTokenizer.from_json(meta["tokenizer"])
        self.device = device
        # checkpoints from before the option existed were trained on Whisper's scaling
        self.normalization = meta.get("preprocessing", {}).get("normalization", "whisper")

    def decode(
        self, waves: list[np.ndarray], beam_size: int = 1, max_tokens: int | None = None
    ) -> list[Hypothesis]:
        """Hypotheses for a batch of 16 kHz waveforms (each at most 30 s)."""
        mel, frames = pad_mels([log_mel(w, self.normalization) for w in waves])
        mel, frames = mel.to(self.device), frames.to(self.device)
        t = self.tokenizer
        if beam_size > 1:
            return beam_search(
                self.model, mel, frames, t.sot, t.eot, t.no_speech, beam_size, max_tokens
            )
        return greedy_decode(self.model, mel, frames, t.sot, t.eot, t.no_speech, max_tokens)

    def transcribe_waves(
        self,
        waves: list[np.ndarray],
        beam_size: int = 1,
        batch_size: int = 16,
        no_speech_threshold: float = 0.6,
    ) -> list[list[Segment]]:
        """Segments of each 16 kHz waveform: 30-second windows decoded in batches. A window
        whose no-speech probability exceeds the threshold gets no text."""
        windows = [
            (i, start)
            for i, wave in enumerate(waves)
            for start in range(0, max(len(wave), 1), int(WINDOW_S * SAMPLE_RATE))
        ]
        segments: list[list[Segment]] = [[] for _ in waves]
        step = int(WINDOW_S * SAMPLE_RATE)
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            pieces = [waves[i][start : start + step] for i, start in chunk]
            pieces = [p if len(p) >= 400 else np.pad(p, (0, 400 - len(p))) for p in pieces]
            for (i, start), hyp in zip(chunk, self.decode(pieces, beam_size), strict=True):
                silent = hyp.no_speech_prob > no_speech_threshold
                text = "" if silent else self.tokenizer.decode(hyp.tokens)
                begin = start / SAMPLE_RATE
                end = min(len(waves[i]), start + step) / SAMPLE_RATE
                segments[i].append(Segment(begin, end, text, hyp.avg_logprob, hyp.no_speech_prob))
        return segments

    def transcribe(
        self,
        paths: Iterable[str | Path],
        beam_size: int = 1,
        batch_size: int = 16,
        no_speech_threshold: float = 0.6,
        report: BatchReport | None = None,
    ) -> list[Transcript]:
        """Transcripts of audio files; unreadable files go to `report` (or raise)."""
        results = []
        for names, waves in self._read(paths, batch_size, report):
            all_segments = self.transcribe_waves(waves, beam_size, batch_size, no_speech_threshold)
            for name, wave, segments in zip(names, waves, all_segments, strict=True):
                text = " ".join(s.text for s in segments if s.text)
                results.append(Transcript(str(name), text, len(wave) / SAMPLE_RATE, segments))
        return results

    @staticmethod
    def _read(
        paths: Iterable[str | Path], batch_size: int, report: BatchReport | None
    ) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
        names: list[Path] = []
        waves: list[np.ndarray] = []
        for path in map(Path, paths):
            try:
                waves.append(read_audio(path))
            except LbdlError as error:
                if report is None:
                    raise
                report.failed(path, str(error).removeprefix(f"{path}: "))
                continue
            names.append(path)
            if len(waves) == batch_size:
                yield names, waves
                names, waves = [], []
        if waves:
            yield names, waves


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> Recognizer:
    """Load a `lbdl asr` checkpoint (a .safetensors file or a run folder)."""
    model, meta = load_model(checkpoint, TASK, build_model)
    return Recognizer(model, meta, resolve_device(device))  # type: ignore[arg-type]
