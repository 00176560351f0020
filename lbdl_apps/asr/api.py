"""The asr Python API: `load(checkpoint).transcribe(paths)`; the CLI uses it too."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from lbdl_apps.asr.adapt import maximize_information
from lbdl_apps.asr.audio import N_FFT, SAMPLE_RATE, log_mel, read_audio
from lbdl_apps.asr.data import normalize_text, pad_mels
from lbdl_apps.asr.decode import Hypothesis, beam_search, greedy_decode
from lbdl_apps.asr.model import RecognizerConfig, SpeechRecognizer, build_model
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.batch import BatchReport, read_batches, read_each
from lbdl_apps.core.checkpoint import load_model
from lbdl_apps.core.device import resolve_device
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Inference

if TYPE_CHECKING:
    from lbdl_apps.asr.whisper_transcribe import LongForm

TASK = "asr"
WINDOW_S = 30.0  # the longest audio the encoder sees at once, as Whisper
WINDOW = int(WINDOW_S * SAMPLE_RATE)


def windows(wave: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The 30-second windows of a 16 kHz waveform, with their first sample; a short last
    window is zero-padded to one FFT frame."""
    for start in range(0, max(len(wave), 1), WINDOW):
        piece = wave[start : start + WINDOW]
        yield start, piece if len(piece) >= N_FFT else np.pad(piece, (0, N_FFT - len(piece)))


@dataclass
class Word:
    """One word of a segment (Whisper's word timestamps), from `start` to `end` seconds."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    """The text of a stretch of audio, from `start` to `end` seconds: a 30-s window for lbdl's
    own models; for Whisper models one of its timestamped segments, with its tokens
    (timestamps included), the temperature that decoded it and, with word timestamps, its
    words."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    compression_ratio: float = 0.0
    words: list[Word] | None = None


@dataclass
class Transcript:
    """The transcription of one file: its text, its segments, its language (Whisper)."""

    path: str
    text: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None


def _no_languages(language: str | None, task: str, long_form: LongForm | None = None) -> None:
    """lbdl's own models know neither languages nor tasks, prompts, word timestamps or VAD
    (Whisper models do: whisper_transcribe.LongForm)."""
    from lbdl_apps.asr.whisper_transcribe import whisper_only

    if language is not None or task != "transcribe":
        what = f"--language {language}" if language is not None else f"--task {task}"
        raise LbdlError(f"{what}: for Whisper models; this model only transcribes")
    flag = whisper_only(long_form) if long_form is not None else None
    if flag is not None:
        raise LbdlError(f"{flag}: for Whisper models, not lbdl's own")


class Recognizer:
    """A trained speech recognizer with its tokenizer, ready for transcription."""

    normalize = staticmethod(normalize_text)  # what evaluation compares

    def __init__(self, model: SpeechRecognizer, meta: dict, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.tokenizer = TextTokenizer.from_json(meta["tokenizer"])
        self.device = device
        # checkpoints from before the option existed were trained on Whisper's scaling
        self.normalization = meta.get("preprocessing", {}).get("normalization", "whisper")

    def features(self, waves: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Padded log-mel spectrograms of 16 kHz waveforms, as in training, and their lengths."""
        mel, frames = pad_mels([log_mel(w, self.normalization) for w in waves])
        return mel.to(self.device), frames.to(self.device)

    def decode(
        self, waves: list[np.ndarray], beam_size: int = 1, max_tokens: int | None = None
    ) -> list[Hypothesis]:
        """Hypotheses for a batch of 16 kHz waveforms (each at most 30 s)."""
        mel, frames = self.features(waves)
        t = self.tokenizer
        if beam_size > 1:
            return beam_search(self.model, mel, frames, t.specials, beam_size, max_tokens)
        return greedy_decode(self.model, mel, frames, t.specials, max_tokens)

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
        """Segments of each 16 kHz waveform: 30-second windows decoded in batches. A window
        whose no-speech probability exceeds the threshold gets no text. (`long_form`: only
        Whisper models follow its options.)"""
        _no_languages(language, task, long_form)
        pieces = [(i, start, p) for i, wave in enumerate(waves) for start, p in windows(wave)]
        segments: list[list[Segment]] = [[] for _ in waves]
        for first in range(0, len(pieces), batch_size):
            chunk = pieces[first : first + batch_size]
            hyps = self.decode([piece for _, _, piece in chunk], beam_size)
            for (i, start, _), hyp in zip(chunk, hyps, strict=True):
                silent = hyp.no_speech_prob > no_speech_threshold
                text = "" if silent else self.tokenizer.decode(hyp.tokens)
                begin = start / SAMPLE_RATE
                end = min(len(waves[i]), start + WINDOW) / SAMPLE_RATE
                segments[i].append(Segment(begin, end, text, hyp.avg_logprob, hyp.no_speech_prob))
        return segments

    def adapt(self, waves: Iterable[np.ndarray], batch_size: int = 16, passes: int = 0) -> int:
        """Test-time adaptation (AdaBN, Li et al. 2016; book 5.2): the batch-norm statistics
        re-estimated on unlabelled audio of the conditions to come (a new speaker, microphone
        or room), as the mean of the statistics of its batches; then, with `passes`, the
        encoder tuned on it by information maximisation (`adapt.maximize_information`).
        Returns the windows seen; an LbdlError for no audio, or a model without batch norm
        (the conv1d front end) and no passes."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not norms and not passes:
            raise LbdlError("--adapt: the model has no batch norm (train with --frontend conv2d)")
        pieces = [piece for wave in waves for _, piece in windows(wave)]
        if not pieces:
            raise LbdlError("--adapt: no audio to adapt to")
        if norms:
            self._reestimate_norms(norms, pieces, batch_size)
        if passes:
            maximize_information(self, pieces, passes)
        return len(pieces)

    def _reestimate_norms(
        self, norms: list[nn.BatchNorm2d], pieces: list[np.ndarray], batch_size: int
    ) -> None:
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.train()
        try:
            with torch.no_grad():
                for batches, first in enumerate(range(0, len(pieces), batch_size), 1):
                    for norm in norms:
                        norm.momentum = 1 / batches  # a running mean over the batches
                    self.model.encoder(*self.features(pieces[first : first + batch_size]))
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
                norm.eval()

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
        """Transcripts of audio files; unreadable files go to `report` (or raise). With
        `adapt` or `adapt_passes`, the model is first adapted to all the readable files (see
        `adapt`)."""
        _no_languages(language, task, long_form)
        paths = list(paths)
        if adapt or adapt_passes:
            self.adapt(self._readable(paths), batch_size, adapt_passes)
        results = []
        for names, waves in read_batches(paths, read_audio, batch_size, report):
            all_segments = self.transcribe_waves(waves, beam_size, batch_size, no_speech_threshold)
            for name, wave, segments in zip(names, waves, all_segments, strict=True):
                text = " ".join(s.text for s in segments if s.text)
                results.append(Transcript(str(name), text, len(wave) / SAMPLE_RATE, segments))
        return results

    @staticmethod
    def _readable(paths: Iterable[str | Path]) -> Iterator[np.ndarray]:
        """The waveforms of the files that can be read (the others are reported when read
        again for transcription)."""
        return (wave for _, wave in read_each(paths, read_audio, BatchReport(quiet=True)))


def resolve(checkpoint: str | Path) -> str | Path:
    """What core.checkpoint reads for a CHECKPOINT: a `whisper:` name's cached checkpoint
    (zoo.ensure_whisper also takes the Hugging Face cache's copy), a publisher's folder's
    weights file (whisper_import.publisher_file), anything else as it is."""
    from lbdl_apps.asr.whisper_import import publisher_file
    from lbdl_apps.core.zoo import looks_like_name

    if looks_like_name(str(checkpoint)) and str(checkpoint).startswith("whisper:"):
        from lbdl_apps.asr.zoo import ensure_whisper

        return ensure_whisper(str(checkpoint))
    return publisher_file(checkpoint)


def load(
    checkpoint: str | Path, device: str | torch.device = "cpu", inference: Inference | None = None
) -> Recognizer:
    """Load an `lbdl asr` checkpoint (a .safetensors file, a run folder or a name such as
    whisper:tiny.en), or a Whisper model in its publisher's format (an openai-whisper .pt,
    a transformers or CTranslate2 folder): a WhisperRecognizer for Whisper models. Its
    networks run where `inference` says (export.py; default: PyTorch as trained)."""
    from lbdl_apps.asr.export import deployment
    from lbdl_apps.core.runtime import deploy

    model, meta = load_model(resolve(checkpoint), TASK, build_model, RecognizerConfig)
    recognizer: Recognizer
    if meta["config"].architecture == "whisper":
        from lbdl_apps.asr.whisper_api import WhisperRecognizer

        recognizer = WhisperRecognizer(model, meta, resolve_device(device))  # type: ignore[assignment,arg-type]
    else:
        recognizer = Recognizer(model, meta, resolve_device(device))  # type: ignore[arg-type]
    deploy(deployment(recognizer), int8_runtime(inference), recognizer.device)
    return recognizer


def int8_runtime(inference: Inference | None) -> Inference | None:
    """int8 runs on ONNX Runtime unless --runtime torch (or --compile) says otherwise: its
    dynamic int8 is the fastest here for Whisper's encoder and decoder steps (torchao's is
    slower on the one-token steps; bench/asr_whisper.py)."""
    # TODO(core): Graph.int8_runtime, the runtime an app's graph prefers for int8
    if inference is None or not inference.quantize or inference.runtime or inference.compile:
        return inference
    return dataclasses.replace(inference, runtime="onnxruntime")
