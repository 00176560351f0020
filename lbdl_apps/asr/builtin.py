"""The built-in speech data (book 6.5): digit strings and short phrases spoken by eSpeak NG in
several voices, rates and pitches, over background noise, plus some noise-only clips (the
no-speech case). Deterministic given the seed; stored once in the data cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lbdl_apps.asr.audio import SAMPLE_RATE, resample
from lbdl_apps.asr.speech import VOICES, synthesize_many
from lbdl_apps.core.data import datasets_root
from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.outputs import atomic_path

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASES = (
    "turn on the light",
    "turn off the light",
    "open the door",
    "close the door",
    "call my mother",
    "play some music",
    "stop the music",
    "what time is it",
    "set an alarm",
    "good morning",
    "good night",
    "thank you very much",
    "yes please",
    "no thanks",
    "go left",
    "go right",
    "move forward",
    "move back",
    "start recording",
    "stop recording",
    "how is the weather",
    "read the news",
    "volume up",
    "volume down",
)
VERSION = 3  # bump when the recipe changes: cached files of older recipes are not reused


def _read_cache(path: Path, count: int) -> tuple[list[np.ndarray], list[str]] | None:
    """The cached clips and texts, or None (after saying so) when the cache file is corrupt
    or half written: it is then made again."""
    try:
        with open(path, "rb") as handle, np.load(handle) as stored:
            texts = json.loads(str(stored["texts"]))
            waves = [stored[f"a{i}"].astype(np.float32) / 32767 for i in range(count)]
        if len(texts) == count:
            return waves, texts
    except Exception:  # numpy and zipfile raise many kinds for a damaged file
        pass
    report(f"warning: {path}: the built-in data cache is damaged; making it again")
    path.unlink(missing_ok=True)
    return None


def cache_dir() -> Path:
    """Where downloaded and generated datasets live ($LBDL_DATA or ~/.cache/lbdl/datasets)."""
    return datasets_root()


KINDS = ("mixed", "digits", "digit", "phrases")


def _text(rng: np.random.Generator, kind: str, max_digits: int) -> str:
    if kind == "phrases" or (kind == "mixed" and rng.random() < 0.3):
        return PHRASES[rng.integers(len(PHRASES))]
    count = 1 if kind == "digit" else int(rng.integers(1, max_digits + 1))
    return " ".join(DIGITS[d] for d in rng.integers(0, 10, count))


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) noise of unit power."""
    color = rng.integers(3)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(len(spectrum)), 1.0)
    noise = np.fft.irfft(spectrum / f ** (color / 2), n)
    return (noise / (noise.std() + 1e-8)).astype(np.float32)


def _place(rng: np.random.Generator, speech: np.ndarray, snr_db: float) -> np.ndarray:
    """Pad with 0-0.3 s of silence each side, add noise at `snr_db`, set a random peak level
    in [0.25, 1]. A clip without speech is noise alone at an RMS level of 0.003-0.1."""
    pad = rng.integers(0, int(0.3 * SAMPLE_RATE), 2)
    wave = np.concatenate([np.zeros(pad[0], np.float32), speech, np.zeros(pad[1], np.float32)])
    noise = _noise(rng, len(wave))
    if not speech.any():
        return (noise * 10 ** rng.uniform(-2.5, -1.0)).astype(np.float32)
    wave = wave + noise * np.sqrt(np.mean(speech**2)) * 10 ** (-snr_db / 20)
    gain = 10 ** rng.uniform(-0.6, 0.0) / (np.abs(wave).max() + 1e-8)
    return (wave * gain).astype(np.float32)


def make_speech(
    count: int,
    seed: int,
    kind: str = "mixed",
    max_digits: int = 4,
    silence: float = 0.05,
    snr_db: tuple[float, float] = (10.0, 40.0),
) -> tuple[list[np.ndarray], list[str]]:
    """`count` synthesized utterances (16 kHz float32) and their transcripts.

    kind: "digits" (strings of 1 to `max_digits`), "digit" (one), "phrases" or "mixed"
    (digit strings and phrases); a fraction `silence` are noise-only clips with an
    empty transcript. Cached under cache_dir()/asr-builtin; the same arguments give the
    same audio."""
    if kind not in KINDS:
        raise LbdlError(f"built-in speech: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    recipe = {
        "version": VERSION,
        "count": count,
        "seed": seed,
        "kind": kind,
        "max_digits": max_digits,
        "silence": silence,
        "snr_db": list(snr_db),
    }
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "asr-builtin" / f"{kind}-{count}-{seed}-{key}.npz"
    if path.is_file():
        cached = _read_cache(path, count)
        if cached is not None:
            return cached
    rng = np.random.default_rng(seed)
    texts, specs = [], []
    for _ in range(count):
        texts.append("" if rng.random() < silence else _text(rng, kind, max_digits))
        specs.append(
            {
                "text": texts[-1],
                "voice": VOICES[rng.integers(len(VOICES))],
                "rate": int(rng.integers(120, 260)),
                "pitch": int(rng.integers(20, 80)),
                "pitch_range": int(rng.integers(20, 90)),
            }
        )
    spoken = synthesize_many([s for s in specs if s["text"]])
    from_espeak = iter(spoken)
    waves = []
    for text in texts:
        speech = resample(next(from_espeak), 22_050) if text else np.zeros(0, np.float32)
        if not text:  # a noise-only clip of 0.5-2 s
            speech = np.zeros(int(rng.uniform(0.5, 2.0) * SAMPLE_RATE), np.float32)
        waves.append(_place(rng, speech, rng.uniform(*snr_db)))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pcm = {
            f"a{i}": np.round(np.clip(w, -1, 1) * 32767).astype(np.int16)
            for i, w in enumerate(waves)
        }
        np.savez(handle, texts=json.dumps(texts), **pcm)
    return [p.astype(np.float32) / 32767 for p in pcm.values()], texts
