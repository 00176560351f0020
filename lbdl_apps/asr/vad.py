"""Voice activity detection before decoding, as faster-whisper's `vad_filter` (book 6.5):
Silero VAD (the silero-vad package's own model, run offline) gives each 32 ms of audio a
speech probability; stretches above 0.5 (ending below 0.35), with pauses under 2 s bridged
and 0.4 s of padding each side, are the speech. Only that is transcribed, joined end to end,
and the times of the segments and words found are mapped back onto the whole file: which is
how faster-whisper keeps Whisper from hallucinating text on silence and noise."""

from __future__ import annotations

import bisect
import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from lbdl_apps.asr.api import Segment
from lbdl_apps.asr.audio import SAMPLE_RATE
from lbdl_apps.core.errors import LbdlError

# faster-whisper's VadOptions defaults
THRESHOLD = 0.5
MIN_SILENCE_MS = 2000
SPEECH_PAD_MS = 400


@functools.cache
def silero() -> torch.nn.Module:
    """Silero VAD's TorchScript model as the silero-vad package ships it (importing the
    package sets torch to one thread: undone here)."""
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise LbdlError("--vad: needs the silero-vad package (pip install silero-vad)") from None
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        return load_silero_vad()


def speech_chunks(wave: np.ndarray) -> list[dict[str, int]]:
    """The speech of a 16 kHz waveform: [{"start": sample, "end": sample}, ...]."""
    from silero_vad import get_speech_timestamps

    model = silero()
    with torch.no_grad():
        chunks = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), model,
            threshold=THRESHOLD, sampling_rate=SAMPLE_RATE, min_speech_duration_ms=0,
            min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS,
        )  # fmt: skip
    model.reset_states()
    return [{"start": int(c["start"]), "end": int(c["end"])} for c in chunks]


@dataclass
class TimeMap:
    """From times in the speech alone back to times in the file (faster-whisper's
    SpeechTimestampsMap): each chunk's end in the speech, and the silence before it."""

    duration: float  # of the whole file, seconds
    ends: list[int] = field(default_factory=list)  # samples, in the joined speech
    silence: list[float] = field(default_factory=list)  # seconds left out before each chunk

    @classmethod
    def of(cls, chunks: list[dict[str, int]], samples: int) -> TimeMap:
        ends, silence, previous, silent = [], [], 0, 0
        for chunk in chunks:
            silent += chunk["start"] - previous
            previous = chunk["end"]
            ends.append(chunk["end"] - silent)
            silence.append(silent / SAMPLE_RATE)
        return cls(samples / SAMPLE_RATE, ends, silence)

    def chunk(self, time: float, is_end: bool = False) -> int:
        sample = int(time * SAMPLE_RATE)
        if is_end and sample in self.ends:
            return self.ends.index(sample)
        return min(bisect.bisect(self.ends, sample), len(self.ends) - 1)

    def original(self, time: float, chunk: int | None = None, is_end: bool = False) -> float:
        index = self.chunk(time, is_end) if chunk is None else chunk
        return round(self.silence[index] + time, 2)

    def restore(self, segments: list[Segment]) -> list[Segment]:
        """The segments (and their words) at their times in the whole file."""
        for segment in segments:
            if segment.words:
                for word in segment.words:  # both ends in the chunk of the word's middle
                    index = self.chunk((word.start + word.end) / 2)
                    word.start = self.original(word.start, index)
                    word.end = self.original(word.end, index)
                segment.start, segment.end = segment.words[0].start, segment.words[-1].end
            else:
                segment.start = self.original(segment.start)
                segment.end = self.original(segment.end, is_end=True)
        return segments


def speech_only(waves: list[np.ndarray]) -> tuple[list[np.ndarray], list[TimeMap]]:
    """Each waveform's speech joined end to end (empty when there is none), and the map of
    its times back onto the waveform."""
    kept, maps = [], []
    for wave in waves:
        chunks = speech_chunks(wave)
        pieces = [wave[c["start"] : c["end"]] for c in chunks]
        kept.append(np.concatenate(pieces).astype(np.float32) if pieces
                    else np.zeros(0, np.float32))  # fmt: skip
        maps.append(TimeMap.of(chunks, len(wave)))
    return kept, maps
