"""Audio in, log-mel spectrogram out: the front end of the speech recognizer (book 6.5).

Files are read with soundfile (wav, flac, ogg, mp3), mixed down to mono and resampled to
16 kHz with torchaudio; the model sees an 80-bin log-mel spectrogram with 25 ms windows
every 10 ms, clamped to 8 decades below its maximum, then either scaled to about [-1, 1]
(Whisper) or, by default, with each mel band's mean over the utterance removed (cepstral mean
normalization: a microphone or room multiplies every band by its own gain, a shift of the log
that this cancels, so voices recorded on other equipment look alike), or with only its
overall mean removed (the spectrum's shape kept, for batch norms adapted per speaker).
Whisper models get Whisper's own front end (`whisper_log_mel`): the Slaney mel filter bank of
librosa, the same log10 and clamp, (x + 4) / 4, and windows padded to 30 s.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor

from lbdl_apps.core.errors import LbdlError

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
N_MELS = 80
WINDOW_FRAMES = 3000  # Whisper's window: 30 s of 10 ms frames
NORMALIZATIONS = ("band-mean", "level-mean", "whisper")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


def read_audio(path: str | Path) -> np.ndarray:
    """A sound file as float32 mono at 16 kHz; LbdlError naming the file when it is unreadable,
    empty, or in a sample format soundfile cannot decode."""
    import soundfile

    path = Path(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = str(error).split(":")[-1].strip() or type(error).__name__
        raise LbdlError(f"{path}: not a readable audio file ({reason})") from None
    except OSError as error:
        raise LbdlError(f"{path}: cannot read ({error.strerror})") from None
    if data.shape[0] == 0:
        raise LbdlError(f"{path}: audio file holds no samples")
    if not np.isfinite(data).all():
        raise LbdlError(f"{path}: audio file holds samples that are not numbers (NaN or inf)")
    return resample(data.mean(axis=1), rate)


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float waveform from `rate` to `target` Hz (torchaudio, sinc filter)."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate == target:
        return wave
    with torch.no_grad():
        return _resampler(rate, target)(torch.from_numpy(wave)).numpy()


def band_limit(wave: np.ndarray, rate: int) -> np.ndarray:
    """A 16 kHz waveform passed through `rate` Hz and back: nothing above rate / 2 is left,
    as in a recording made at that rate (synthesized speech mixed into 8 kHz data)."""
    if rate >= SAMPLE_RATE:
        return np.asarray(wave, dtype=np.float32)
    return resample(resample(wave, SAMPLE_RATE, rate), rate)


@lru_cache(maxsize=16)
def _resampler(rate: int, target: int) -> torchaudio.transforms.Resample:
    """A resampler with its sinc kernel computed once per pair of rates."""
    return torchaudio.transforms.Resample(rate, target)


@lru_cache(maxsize=1)
def _mel_transform() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=2.0
    )


def normalize_log_mel(mel: Tensor, normalization: str = "whisper") -> Tensor:
    """log10 of a power mel spectrogram (..., 80, T), floored 8 decades below its max, then
    "whisper": (x + 4) / 4; "band-mean": minus each band's mean over time, / 2; "level-mean":
    minus the mean over all bands and times, / 2 (only the overall level removed: the spectral
    shape a band mean would cancel is kept, for `--adapt` to normalize per speaker)."""
    log = mel.clamp(min=1e-10).log10()
    peak = log.amax(dim=(-2, -1), keepdim=True)
    log = torch.maximum(log, peak - 8.0)
    if normalization == "whisper":
        return (log + 4.0) / 4.0
    if normalization == "band-mean":
        return (log - log.mean(dim=-1, keepdim=True)) / 2.0
    if normalization == "level-mean":
        return (log - log.mean(dim=(-2, -1), keepdim=True)) / 2.0
    raise LbdlError(f"--normalization {normalization}: choose {', '.join(NORMALIZATIONS)}")


def warp_bands(mel: Tensor, factor: float) -> Tensor:
    """Vocal tract length perturbation on a log-mel spectrogram (..., 80, T) (Jaitly & Hinton,
    2013): the band centred at f takes the value at f / factor (linear interpolation between
    bands), so formants move by `factor` while pitch harmonics' spacing and timing stay; bands
    whose source lies past the top keep the top band's value."""
    bands = mel.shape[-2]
    top = _hz_to_mel(SAMPLE_RATE / 2)
    centres = torch.linspace(0.0, top, bands + 2, dtype=torch.float64)[1:-1]
    source = _hz_to_mel(_mel_to_hz(centres) / factor) / top * (bands + 1) - 1
    source = source.clamp(0, bands - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=bands - 1)
    weight = (source - low).to(mel.dtype)[:, None]  # (bands,) -> (bands, 1): over every frame
    return mel[..., low, :] * (1 - weight) + mel[..., high, :] * weight


def _hz_to_mel(hz: float | Tensor) -> Tensor:
    """The HTK mel scale of torchaudio's MelSpectrogram."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def log_mel(
    wave: np.ndarray | Tensor,
    normalization: str = "whisper",
    band_gains_db: Tensor | None = None,
) -> Tensor:
    """One 16 kHz waveform -> its (80, samples // 160) normalized log-mel spectrogram (the
    last centered frame dropped, as Whisper: 30 s give exactly 3000 frames), each band's power
    first multiplied by its gain in `band_gains_db` (80 values in dB) when given."""
    wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if len(wave) < N_FFT:
        raise LbdlError(f"audio too short: {len(wave)} samples, at least {N_FFT} needed")
    mel = _mel_transform()(wave)[..., :-1]
    if band_gains_db is not None:
        # gains (80,) -> (80, 1): each band's power scaled in every frame
        mel = mel * 10.0 ** (band_gains_db.to(mel.dtype)[:, None] / 10.0)
    return normalize_log_mel(mel, normalization)


def random_equalizer(
    max_db: float, rng: np.random.Generator, points: int = 6, bands: int = N_MELS
) -> Tensor:
    """Gains in dB for the `bands` mel bands of a random equalizer, as another microphone or
    room would apply: drawn in [-max_db, max_db] at `points` bands spread evenly on the mel
    scale, linear between them."""
    knots = torch.from_numpy(rng.uniform(-max_db, max_db, points).astype(np.float32))
    # (points,) -> (1, 1, points), linear to (1, 1, bands) -> (bands,)
    return torch.nn.functional.interpolate(
        knots[None, None], size=bands, mode="linear", align_corners=True
    )[0, 0]


def _hz_to_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, 15 mels there,
    logarithmic above (27 mels per factor 6.4)."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    log_part = min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def _slaney_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)),
                    f_sp * mels)  # fmt: skip


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> Tensor:
    """The (n_mels, n_fft / 2 + 1) mel filter bank of Whisper, computed as librosa's
    `filters.mel(sr, n_fft, n_mels)` does (Whisper ships its output as mel_filters.npz):
    triangles between n_mels + 2 points evenly spaced on Slaney's mel scale from 0 to
    rate / 2, each scaled by 2 / its width in Hz (Slaney's area normalization)."""
    bins = np.fft.rfftfreq(n=n_fft, d=1.0 / rate)
    edges = _slaney_to_hz(np.linspace(_hz_to_slaney(np.float64(0.0)),
                                      _hz_to_slaney(np.float64(rate / 2)), n_mels + 2))  # fmt: skip
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)  # (n_mels + 2, bins): Hz from each edge
    weights = np.zeros((n_mels, len(bins)), dtype=np.float32)  # librosa's float32, then
    weights[:] = np.maximum(0, np.minimum(-ramps[:-2] / widths[:-1, None],  # the scaling
                                          ramps[2:] / widths[1:, None]))  # fmt: skip
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights)


def whisper_log_mel(wave: np.ndarray | Tensor, n_mels: int = N_MELS) -> Tensor:
    """A 16 kHz waveform -> Whisper's (n_mels, samples // 160) log-mel spectrogram: the power
    of a 400-sample Hann STFT every 160 samples, the Slaney mel filter bank, log10, clamped to
    8 decades below the maximum, (x + 4) / 4. The frames at the end see silence after the
    audio, as Whisper's do (it appends 30 s of zeros; `pad_frames` then pads to 3000)."""
    wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if len(wave) < N_FFT:
        raise LbdlError(f"audio too short: {len(wave)} samples, at least {N_FFT} needed")
    padded = torch.nn.functional.pad(wave, (0, N_FFT))  # zeros: what follows the audio
    window = torch.hann_window(N_FFT)
    power = torch.stft(padded, N_FFT, HOP, window=window, return_complex=True).abs() ** 2
    log = (mel_filters(n_mels) @ power).clamp(min=1e-10).log10()
    log = torch.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0)[:, : len(wave) // HOP]


def pad_frames(mel: Tensor, frames: int = WINDOW_FRAMES) -> Tensor:
    """The first `frames` frames of a (n_mels, T) spectrogram, zero-padded up to `frames`
    (Whisper's pad_or_trim of a window: 30 s of 10 ms frames)."""
    mel = mel[:, :frames]
    return torch.nn.functional.pad(mel, (0, frames - mel.shape[-1]))
