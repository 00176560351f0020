"""Speech datasets (book 6.5): the readers of the common formats in a registry (manifests,
wav + txt folders, LibriSpeech, FSDD), the bad-record rule on their audio, the built-in
synthesized speech, the splits, and the dataset and batches the model trains on."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lbdl_apps.asr.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    band_limit,
    log_mel,
    random_equalizer,
    read_audio,
)
from lbdl_apps.asr.augment import Augment
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.bad_records import bad_record_rule
from lbdl_apps.core.data import split_indices
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.readers import Readers

MAX_SECONDS = 30.0
IGNORED = -100  # target of a padded position: no loss counts it (cross_entropy's default)
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
AUDIO_KEYS = ("audio", "path", "file", "audio_filepath", "wav")
TEXT_KEYS = ("text", "transcript", "sentence", "transcription")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


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
READERS: Readers = Readers("speech data")


def _pick(row: dict[str, Any], keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise LbdlError(f"{where}: needs a column named one of {', '.join(keys)}")


def _manifest_rows(path: Path) -> list[Any]:
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise LbdlError(f"{path}: a manifest must be .csv, .jsonl or .json")
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise LbdlError(f"{path}: unreadable manifest ({error})") from None


@READERS.register(
    "manifest", "a .csv (with a header), .jsonl or .json of audio paths and texts", Path.is_file
)
def read_manifest(path: Path) -> list[Utterance]:
    """A CSV (header row) or JSONL/JSON manifest with an audio path and a text per row; an
    optional `speaker` column. Relative paths are relative to the manifest's folder."""
    utterances = []
    for number, row in enumerate(_manifest_rows(path), 1):
        if not isinstance(row, dict):
            raise LbdlError(f"{path}: row {number} is not an object")
        audio = Path(str(_pick(row, AUDIO_KEYS, f"{path}: row {number}")))
        text = str(_pick(row, TEXT_KEYS, f"{path}: row {number}"))
        audio = audio if audio.is_absolute() else path.parent / audio
        utterances.append(Utterance(text.strip(), audio, speaker=str(row.get("speaker", ""))))
    return utterances


def _is_librispeech(path: Path) -> bool:
    return path.is_dir() and any(path.rglob("*.trans.txt"))


@READERS.register(
    "librispeech", "LibriSpeech (speaker/chapter/*.trans.txt beside the .flac files)",
    _is_librispeech,
)  # fmt: skip
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


def _is_fsdd(path: Path) -> bool:
    wavs = list(path.rglob("*.wav")) if path.is_dir() else []
    return bool(wavs) and all(FSDD_NAME.match(p.name) for p in wavs)


@READERS.register("fsdd", "spoken digits (FSDD: {digit}_{speaker}_{i}.wav)", _is_fsdd)
def read_fsdd_folder(root: Path) -> list[Utterance]:
    """A folder of the Free Spoken Digit Dataset's recordings (see `read_fsdd`)."""
    return read_fsdd(sorted(root.rglob("*.wav")))


@READERS.register("pairs", "a folder of audio files beside their transcripts (x.wav + x.txt)",
                  Path.is_dir)  # fmt: skip
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
    """The utterances of a manifest file or a folder (the first reader of READERS that
    recognises it), and the name of that reader."""
    path = Path(data).expanduser()
    if not path.exists():
        raise LbdlError(f"--data {data}: no such file or folder")
    reader = READERS.find(path)
    found = reader.read(path)
    if not found:
        raise LbdlError(f"--data {data}: no utterances found (expected {READERS.expected()})")
    return found, reader.name


def _audio_problem(path: Path) -> str | None:
    """Why an audio file cannot be a training record (None when it can)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises several kinds; all mean unreadable
        return f"not a readable audio file ({str(error).split(':')[-1].strip()})"
    if info.frames == 0:
        return "audio file holds no samples"
    if info.duration < 0.025:
        return f"shorter than one 25 ms window ({info.duration * 1000:.1f} ms)"
    if info.duration > MAX_SECONDS:
        return f"longer than {MAX_SECONDS:.0f} s ({info.duration:.1f} s)"
    return None


def check_utterances(utterances: list[Utterance], skip_bad: bool) -> list[Utterance]:
    """The bad-record rule (core.bad_records): every file must open as audio, hold samples
    and last at most 30 s; the utterances kept."""
    problems = [(u, _audio_problem(u.path) if u.path is not None else None) for u in utterances]
    bad = [(u.path, reason) for u, reason in problems if reason is not None]
    bad_record_rule(bad, len(utterances), skip_bad)
    return [u for u, reason in problems if reason is None]


def lowest_sample_rate(utterances: list[Utterance]) -> int:
    """The lowest native sample rate of the utterances' files (16 kHz when none is a file)."""
    import soundfile

    rates = {soundfile.info(str(u.path)).samplerate for u in utterances if u.path is not None}
    return min(rates, default=SAMPLE_RATE)


# ------------------------------------------------------------------ batches
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

    def splits(self) -> dict[str, list[Utterance]]:
        return {"train": self.train, "val": self.val, "test": self.test}


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


def _speakers(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def data_for(settings: Mapping[str, Any], seed: int, skip_bad: bool = False) -> SpeechData:
    """The data of a run from its settings: a run's TrainArgs as a dict, or the metadata of
    its checkpoint (which has what it takes to rebuild the splits, not `extra_builtin`)."""
    return load_speech_data(
        settings.get("data"),
        seed=seed,
        val_fraction=settings.get("val_fraction", 0.1),
        test_fraction=settings.get("test_fraction", 0.1),
        split_by=settings.get("split_by", "random"),
        test_speakers=_speakers(settings.get("test_speakers")),
        skip_bad=skip_bad,
        builtin_size=settings.get("builtin_size", 2000),
        extra_builtin=settings.get("extra_builtin", 0),
        builtin=settings.get("builtin", "mixed"),
    )
