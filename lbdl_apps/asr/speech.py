"""Offline speech synthesis with eSpeak NG (the built-in ASR data, book 6.5).

The `espeakng-loader` package bundles libespeak-ng and its data; we drive it through
ctypes: `espeak_Initialize` in synchronous mode, a synthesis callback that collects the
16-bit PCM chunks, and `espeak_Synth`. Output: float32 mono at 22.05 kHz.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from lbdl_apps.core.errors import LbdlError

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
# English voices and variants (after "+": male/female formants). Variants with breath
# noise (f2, f3, f5) are left out: their output differs from run to run.
VOICES = (
    "en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc", "en-us+f1", "en+f4", "en+m1",
    "en+m3", "en-us+m5",
)  # fmt: skip

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_lock = threading.Lock()


class _Engine:
    """The process-wide eSpeak NG library, initialised once."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise LbdlError("built-in speech needs the espeakng-loader package") from error
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise LbdlError("eSpeak NG failed to initialise")
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]

    def _collect(self, wav, count: int, events) -> int:
        if wav and count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = go on synthesising

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int):
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise LbdlError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
        self.lib.espeak_SetParameter(ESPEAK_RANGE, pitch_range, 0)
        self.chunks = []
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0


_engine: _Engine | None = None


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50
) -> tuple[np.ndarray, int]:
    """Speak `text`: (float32 waveform in [-1, 1], sample rate 22050).

    `rate` in words per minute (80-450), `pitch` and `pitch_range` in 0-100.
    """
    global _engine
    with _lock:
        if _engine is None:
            _engine = _Engine()
        return _engine.synthesize(text, voice, rate, pitch, pitch_range), _engine.sample_rate


def synthesize_many(specs: list[dict]) -> list[np.ndarray]:
    """Speak each spec (keyword arguments of `synthesize`) in a fresh process.

    eSpeak NG keeps some state from one utterance to the next (the pitch flutter), so the
    same list gives the same audio only from the same starting state: a new process."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        spec_file, out_file = Path(folder) / "specs.json", Path(folder) / "audio.npz"
        spec_file.write_text(json.dumps(specs))
        done = subprocess.run(
            [sys.executable, "-m", "lbdl_apps.asr.speech", str(spec_file), str(out_file)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise LbdlError(f"speech synthesis with eSpeak NG failed: {last}")
        with np.load(out_file) as stored:
            return [stored[f"a{i}"] for i in range(len(specs))]


def _main(spec_file: str, out_file: str) -> None:
    import json

    with open(spec_file) as handle:
        specs = json.load(handle)
    audio = {f"a{i}": synthesize(**spec)[0] for i, spec in enumerate(specs)}
    np.savez(out_file, **audio)


if __name__ == "__main__":
    import sys

    _main(*sys.argv[1:3])
