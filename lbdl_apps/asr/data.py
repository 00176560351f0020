"""Speech datasets (book 6.5): the readers of the common formats, the built-in synthesized
speech, augmentation (speed, noise and tempo perturbation, SpecAugment) and batching."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor
from torch.utils.data import Dataset

from lbdl_apps.asr.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    band_limit,
    log_mel,
    random_equalizer,
    read_audio,
    resample,
    warp_bands,
)
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.data import split_indices
from lbdl_apps.core.errors import LbdlError, report

MAX_SECONDS = 30.0
IGNORED = -100  # target of a padded position: no loss counts it (cross_entropy's default)
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
AUDIO_KEYS = ("audio", "path", "file", "audio_filepath", "wav")
TEXT_KEYS = ("text", "transcript", "sentence", "transcription")


@dataclass
class Utterance:
    """One training example: an audio file (or in-memory samples), its text and speaker."""

    text: str
    path: Path | None = None
    wave: np.ndarray | None = None
    speaker: str = ""

    def load(self) -> np.ndarray:
        return self.wave if self.wave is not None else read_audio(self.path)  # type: ignore[arg-type]


def normalize_text(text: str) -> str:
    """Lower case, punctuation except apostrophes removed, single spaces: the form the
    error rates compare (as Whisper's English normalizer, much simplified)."""
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(text.split())


# ------------------------------------------------------------------ readers
def _pick(row: dict[str, Any], keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise LbdlError(f"{where}: needs a column named one of {', '.join(keys)}")


def read_manifest(path: Path) -> list[Utterance]:
    """A CSV (header row) or JSONL/JSON manifest with an audio path and a text per row; an
    optional `speaker` column. Relative paths are relative to the manifest's folder."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        elif path.suffix.lower() == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise LbdlError(f"{path}: unreadable manifest ({error})") from None
    utterances = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise LbdlError(f"{path}: row {number} is not an object")
        audio = Path(str(_pick(row, AUDIO_KEYS, f"{path}: row {number}")))
        text = str(_pick(row, TEXT_KEYS, f"{path}: row {number}"))
        audio = audio if audio.is_absolute() else path.parent / audio
        utterances.append(Utterance(text.strip(), audio, speaker=str(row.get("speaker", ""))))
    return utterances


def read_librispeech(root: Path) -> list[Utterance]:
    """LibriSpeech layout: speaker/chapter/speaker-chapter.trans.txt with `ID TEXT` lines
    next to ID.flac."""
    utterances = []
    for transcript in sorted(root.rglob("*.trans.txt")):
        for line in transcript.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            name, _, text = line.strip().partition(" ")
            audio = next(
                (
                    transcript.parent / f"{name}{ext}"
                    for ext in (".flac", ".wav")
                    if (transcript.parent / f"{name}{ext}").exists()
                ),
                transcript.parent / f"{name}.flac",
            )
            utterances.append(Utterance(text, audio, speaker=name.split("-")[0]))
    return utterances


def read_fsdd(files: list[Path]) -> list[Utterance]:
    """Free Spoken Digit Dataset: {digit}_{speaker}_{index}.wav, the transcript is the digit
    word."""
    utterances = []
    for path in files:
        match = FSDD_NAME.match(path.name)
        assert match is not None
        utterances.append(Utterance(DIGITS[int(match[1])], path, speaker=match[2]))
    return utterances


def read_pairs(root: Path) -> list[Utterance]:
    """A folder of audio files with a transcript beside each: x.wav + x.txt. The speaker is
    the parent folder's name."""
    utterances = []
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        text_file = audio.with_suffix(".txt")
        if text_file.is_file():
            text = text_file.read_text(encoding="utf-8").strip()
            utterances.append(Utterance(text, audio, speaker=audio.parent.name))
    return utterances


def read_dataset(data: str) -> tuple[list[Utterance], str]:
    """The utterances of a manifest file or a folder (LibriSpeech, FSDD or wav + txt), and
    the name of the format found."""
    path = Path(data).expanduser()
    if not path.exists():
        raise LbdlError(f"--data {data}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".jsonl", ".json"):
            raise LbdlError(f"--data {data}: a manifest must be .csv, .jsonl or .json")
        found, kind = read_manifest(path), "manifest"
    elif any(path.rglob("*.trans.txt")):
        found, kind = read_librispeech(path), "LibriSpeech"
    else:
        wavs = sorted(path.rglob("*.wav"))
        if wavs and all(FSDD_NAME.match(p.name) for p in wavs):
            found, kind = read_fsdd(wavs), "spoken digits (FSDD)"
        else:
            found, kind = read_pairs(path), "audio + transcript folder"
    if not found:
        raise LbdlError(
            f"--data {data}: no utterances found (expected a manifest, x.wav + x.txt pairs, "
            "LibriSpeech *.trans.txt or FSDD {digit}_{speaker}_{i}.wav)"
        )
    return found, kind


def check_utterances(utterances: list[Utterance], skip_bad: bool) -> list[Utterance]:
    """The bad-record rule: every file must open as audio, hold samples and last at most
    30 s; the first bad one is an error (with the count) unless `skip_bad`."""
    import soundfile

    good, bad = [], []
    for utterance in utterances:
        if utterance.path is None:
            good.append(utterance)
            continue
        try:
            info = soundfile.info(str(utterance.path))
            reason = None
            if info.frames == 0:
                reason = "audio file holds no samples"
            elif info.duration < 0.025:
                reason = f"shorter than one 25 ms window ({info.duration * 1000:.1f} ms)"
            elif info.duration > MAX_SECONDS:
                reason = f"longer than {MAX_SECONDS:.0f} s ({info.duration:.1f} s)"
        except Exception as error:  # soundfile raises several kinds; all mean unreadable
            reason = f"not a readable audio file ({str(error).split(':')[-1].strip()})"
        (bad.append((utterance.path, reason)) if reason else good.append(utterance))
    if bad and not skip_bad:
        path, reason = bad[0]
        raise LbdlError(
            f"{len(bad)} bad record(s), first: {path}: {reason} "
            "(add --skip-bad to train on the rest)"
        )
    for path, reason in bad:
        report(f"warning: skipping bad record {path}: {reason}")
    return good


def lowest_sample_rate(utterances: list[Utterance]) -> int:
    """The lowest native sample rate of the utterances' files (16 kHz when none is a file)."""
    import soundfile

    rates = {soundfile.info(str(u.path)).samplerate for u in utterances if u.path is not None}
    return min(rates, default=SAMPLE_RATE)


# ------------------------------------------------------------------ augmentation
@dataclass
class Augment:
    """Training-time perturbations: speed (resampling by a random factor), additive noise
    at a random SNR, tempo (the spectrogram stretched in time, pitch and formants kept), vocal
    tract length (the bands warped, formants moved alone), a random equalizer (each band's
    gain, as another microphone) and SpecAugment frequency and time masks (book 6.5)."""

    speed: float = 0.0  # factor drawn in [1 - speed, 1 + speed]
    noise_snr: float | None = None  # lowest SNR in dB of added white noise (up to +30 dB)
    freq_masks: int = 0
    time_masks: int = 0
    stretch: float = 0.0  # duration factor drawn log-uniformly in [1 / (1 + s), 1 + s]
    warp: float = 0.0  # formant frequency factor drawn in [1 - warp, 1 + warp]
    eq: float = 0.0  # largest gain in dB of a random equalizer over the mel bands
    freq_width: int = 10
    time_fraction: float = 0.1  # a time mask covers at most this fraction of the frames

    def wave(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.speed > 0:
            factor = rng.uniform(1 - self.speed, 1 + self.speed)
            wave = resample(wave, round(SAMPLE_RATE * factor / 100) * 100)
        if self.noise_snr is not None:
            snr = rng.uniform(self.noise_snr, self.noise_snr + 30)
            level = np.sqrt(np.mean(wave**2)) + 1e-6
            wave = wave + rng.standard_normal(len(wave)).astype(np.float32) * level * 10 ** (
                -snr / 20
            )
        return wave.astype(np.float32)

    def spectrogram(self, mel: Tensor) -> Tensor:
        if self.stretch > 0:
            factor = math.exp(math.log1p(self.stretch) * (2 * float(torch.rand(())) - 1))
            frames = max(1, round(mel.shape[-1] * factor))
            mel = F.interpolate(mel[None], size=frames, mode="linear")[0]
        if self.warp > 0:
            mel = warp_bands(mel, 1 + self.warp * (2 * float(torch.rand(())) - 1))
        if self.freq_masks:
            mask = torchaudio.transforms.FrequencyMasking(self.freq_width)
            for _ in range(self.freq_masks):
                mel = mask(mel)
        if self.time_masks:
            width = max(1, int(mel.shape[-1] * self.time_fraction))
            mask = torchaudio.transforms.TimeMasking(width)
            for _ in range(self.time_masks):
                mel = mask(mel)
        return mel


class SpeechDataset(Dataset):
    """Utterances -> (log-mel (80, frames), decoder target ids). Waveforms are kept in
    memory after the first read; augmentation is drawn afresh at every access."""

    def __init__(
        self,
        utterances: list[Utterance],
        tokenizer: TextTokenizer,
        augment: Augment | None = None,
        normalization: str = "whisper",
    ) -> None:
        self.utterances = utterances
        self.normalization = normalization
        self.tokenizer = tokenizer
        self.augment = augment
        self.waves: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[Tensor, list[int]]:
        if index not in self.waves:
            self.waves[index] = self.utterances[index].load()
        wave, target = self.waves[index], self.tokenizer.target(self.utterances[index].text)
        if self.augment is None:
            return log_mel(wave, self.normalization), target
        rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
        wave = self.augment.wave(wave, rng)
        gains = random_equalizer(self.augment.eq, rng) if self.augment.eq > 0 else None
        return self.augment.spectrogram(log_mel(wave, self.normalization, gains)), target


class Batch(NamedTuple):
    """Padded spectrograms with their lengths, decoder inputs and targets (IGNORED where padded)."""

    mel: Tensor
    frames: Tensor
    tokens: Tensor
    targets: Tensor


def pad_mels(mels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(B, 80, T_max) with each spectrogram padded by its own floor (silence), and the lengths."""
    frames = torch.tensor([m.shape[-1] for m in mels])
    out = torch.stack(
        [
            torch.nn.functional.pad(m, (0, int(frames.max()) - m.shape[-1]), value=float(m.min()))
            for m in mels
        ]
    )
    return out, frames


def teacher_forcing(targets: Sequence[Sequence[int]], sot: int, pad: int) -> tuple[Tensor, Tensor]:
    """Decoder inputs [start, *target[:-1]] and the targets (each ending with the end token),
    padded with `pad` and with IGNORED, the positions the loss ignores."""
    longest = max(len(t) for t in targets)
    tokens = torch.full((len(targets), longest), pad, dtype=torch.long)
    labels = torch.full((len(targets), longest), IGNORED, dtype=torch.long)
    for i, target in enumerate(targets):
        tokens[i, : len(target)] = torch.tensor([sot, *target[:-1]])
        labels[i, : len(target)] = torch.tensor(target)
    return tokens, labels


def make_collate(sot: int, pad: int):
    """Collate (mel, target ids) items: inputs [start, ...] and targets [..., end]."""

    def collate(items: list[tuple[Tensor, list[int]]]) -> Batch:
        mel, frames = pad_mels([m for m, _ in items])
        tokens, targets = teacher_forcing([t for _, t in items], sot, pad)
        return Batch(mel, frames, tokens, targets)

    return collate


# ------------------------------------------------------------------ splits
@dataclass
class SpeechData:
    """Train / validation / test utterances and where they came from."""

    train: list[Utterance]
    val: list[Utterance]
    test: list[Utterance]
    source: str
    test_speakers: list[str] = field(default_factory=list)


def _split_by_speaker(
    utterances: list[Utterance], test_speakers: list[str] | None, fraction: float, seed: int
) -> tuple[list[Utterance], list[Utterance], list[str]]:
    speakers = sorted({u.speaker for u in utterances})
    if test_speakers:
        unknown = sorted(set(test_speakers) - set(speakers))
        if unknown:
            raise LbdlError(
                f"--test-speakers: {', '.join(unknown)} not in the data "
                f"(speakers: {', '.join(speakers[:10])})"
            )
        held = sorted(test_speakers)
    else:
        if len(speakers) < 2:
            raise LbdlError("--split-by speaker: the data has fewer than 2 speakers")
        count = min(max(1, round(len(speakers) * fraction)), len(speakers) - 1)
        held = sorted(np.random.default_rng(seed).choice(speakers, count, replace=False).tolist())
    train = [u for u in utterances if u.speaker not in held]
    test = [u for u in utterances if u.speaker in held]
    return train, test, held


def load_speech_data(
    data: str | None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_by: str = "random",
    test_speakers: list[str] | None = None,
    skip_bad: bool = False,
    builtin_size: int = 2000,
    extra_builtin: int = 0,
    builtin: str = "mixed",
) -> SpeechData:
    """The data of `train` and `evaluate`: built-in synthesized speech when `data` is None,
    else a manifest or folder split into train / val / test (random, or by speaker so the
    test voices are unseen). `extra_builtin` synthesized utterances join the training set."""
    if split_by not in ("random", "speaker"):
        raise LbdlError(f"--split-by {split_by}: choose random or speaker")
    if data is None or data == "builtin":
        from lbdl_apps.asr.builtin import make_speech

        sizes = (builtin_size, max(1, builtin_size // 10), max(1, builtin_size // 10))
        parts = []
        for offset, size in enumerate(sizes):
            waves, texts = make_speech(size, seed=1000 * seed + offset, kind=builtin)
            parts.append(
                [Utterance(t, wave=w, speaker="espeak") for w, t in zip(waves, texts, strict=True)]
            )
        source = f"built-in synthesized speech, {builtin} ({sum(sizes)} clips)"
        return SpeechData(*parts, source=source)
    utterances, kind = read_dataset(data)
    utterances = check_utterances(utterances, skip_bad)
    held: list[str] = []
    if split_by == "speaker" or test_speakers:
        rest, test, held = _split_by_speaker(utterances, test_speakers, test_fraction, seed)
    else:
        rest_index, test_index = split_indices(len(utterances), test_fraction, seed + 1)
        rest = [utterances[i] for i in rest_index]
        test = [utterances[i] for i in test_index]
    train_index, val_index = split_indices(len(rest), val_fraction, seed)
    train = [rest[i] for i in train_index]
    val = [rest[i] for i in val_index]
    if extra_builtin:
        from lbdl_apps.asr.builtin import make_speech

        waves, texts = make_speech(extra_builtin, seed=1000 * seed + 7, kind="digit", silence=0.0)
        rate = lowest_sample_rate(utterances)
        waves = [band_limit(w, rate) for w in waves]
        train += [Utterance(t, wave=w, speaker="espeak") for w, t in zip(waves, texts, strict=True)]
    source = f"{data} ({kind}, {len(utterances)} utterances)"
    return SpeechData(train, val, test, source, held)
