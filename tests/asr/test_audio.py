"""The front end of `lbdl asr` (book 6.5): audio reading, mixdown, resampling, log-mel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from lbdl_apps.asr.audio import SAMPLE_RATE, band_limit, log_mel, read_audio
from lbdl_apps.core.errors import LbdlError


def chirp(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)


def test_log_mel_matches_a_direct_torchaudio_computation() -> None:
    wave = chirp(1.0, SAMPLE_RATE)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16_000, n_fft=400, win_length=400, hop_length=160, n_mels=80
    )(torch.from_numpy(wave))[:, :-1]
    log = torch.log10(torch.clamp(mel, min=1e-10))
    expected = (torch.maximum(log, log.max() - 8.0) + 4.0) / 4.0
    got = log_mel(wave)
    assert got.shape == (80, 100)  # 10 ms hop: 100 frames a second
    torch.testing.assert_close(got, expected)


def test_stereo_is_mixed_down_and_any_rate_resampled(tmp_path: Path) -> None:
    left = chirp(0.5, 8000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    soundfile.write(tmp_path / "stereo.wav", stereo, 8000)
    wave = read_audio(tmp_path / "stereo.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == 2 * len(left)  # 8 kHz -> 16 kHz
    # the mixdown is the mean of the channels: half the amplitude of the left one
    assert np.abs(wave).max() == pytest.approx(0.25, abs=0.03)
    soundfile.write(tmp_path / "hi.flac", chirp(0.5, 44_100), 44_100)
    assert len(read_audio(tmp_path / "hi.flac")) == 8000


def unsupported_wav() -> bytes:
    """A RIFF/WAVE header whose format tag (0x4242) no decoder knows, then some data."""
    fmt = (0x4242).to_bytes(2, "little") + (1).to_bytes(2, "little")
    fmt += (16_000).to_bytes(4, "little") + (32_000).to_bytes(4, "little")
    fmt += (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    body += b"data" + (64).to_bytes(4, "little") + bytes(64)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def test_bad_audio_files_are_named_errors(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_text("not audio at all")
    (tmp_path / "zero.wav").write_bytes(b"")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    (tmp_path / "odd.wav").write_bytes(unsupported_wav())
    for name, reason in [
        ("text.wav", "not a readable audio file"),
        ("zero.wav", "not a readable audio file"),
        ("empty.wav", "audio file holds no samples"),
        ("odd.wav", "not a readable audio file"),
        ("absent.wav", "not a readable audio file|cannot read"),
    ]:
        with pytest.raises(LbdlError, match=rf"{name}: ({reason})"):
            read_audio(tmp_path / name)


def test_band_limit_removes_what_an_8khz_recording_cannot_hold() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 6000 * t)
    limited = band_limit((low + high).astype(np.float32), 8000)
    spectrum = np.abs(np.fft.rfft(limited))  # 1 Hz per bin over one second
    assert spectrum[6000] < 0.01 * spectrum[1000]
    assert 0.9 < spectrum[1000] / np.abs(np.fft.rfft(low))[1000] < 1.1
    assert np.allclose(band_limit(low, 16_000), low)


def test_band_mean_normalization_cancels_a_microphone_gain_per_band() -> None:
    """A recording chain multiplies each band's power by its own gain: the per-band mean
    removal gives the same features for both, Whisper's scaling does not."""
    from lbdl_apps.asr.audio import normalize_log_mel

    mel = torch.rand(80, 50) + 0.1
    gains = torch.logspace(-1, 1, 80)[:, None]  # -10 dB to +10 dB across the bands
    same = normalize_log_mel(mel * gains, "band-mean")
    assert torch.allclose(same, normalize_log_mel(mel, "band-mean"), atol=1e-5)
    assert same.mean(dim=-1).abs().max() < 1e-5
    assert not torch.allclose(normalize_log_mel(mel * gains), normalize_log_mel(mel), atol=0.1)
    with pytest.raises(LbdlError, match="--normalization"):
        normalize_log_mel(mel, "unknown")


def test_level_mean_normalization_cancels_the_overall_level_and_keeps_the_spectral_shape() -> None:
    """A louder recording (every band times the same gain) gives the same features; a per-band
    gain, which band-mean would cancel, changes them (the shape of the spectrum is kept)."""
    from lbdl_apps.asr.audio import normalize_log_mel

    mel = torch.rand(80, 50) + 0.1
    same = normalize_log_mel(mel * 30.0, "level-mean")
    assert torch.allclose(same, normalize_log_mel(mel, "level-mean"), atol=1e-5)
    assert abs(float(same.mean())) < 1e-5
    gains = torch.logspace(-1, 1, 80)[:, None]
    shaped = normalize_log_mel(mel * gains, "level-mean")
    assert (shaped - same).abs().max() > 0.4  # 10 dB = one decade = 0.5 after / 2
    assert torch.allclose(shaped - same, (gains.log10() - gains.log10().mean()) / 2, atol=1e-4)


def test_random_equalizer_applies_smooth_band_gains_within_its_range() -> None:
    """The gains stay within +-max_db, vary slowly across neighbouring bands, differ between
    draws, and multiply each band's power by exactly their value in dB."""
    from lbdl_apps.asr.audio import random_equalizer

    rng = np.random.default_rng(0)
    draws = [random_equalizer(12.0, rng) for _ in range(20)]
    for gains in draws:
        assert gains.shape == (80,) and float(gains.abs().max()) <= 12.0
        assert float(gains.diff().abs().max()) <= 24.0 / 15  # knots 79 / 5 bands apart
    assert float(torch.stack(draws).std(dim=0).min()) > 2.0
    wave = np.random.default_rng(1).standard_normal(SAMPLE_RATE).astype(np.float32)
    plain = log_mel(wave, "whisper")
    equalized = log_mel(wave, "whisper", draws[0])
    floor = plain > plain.amax() - 1.9  # (log10 + 4) / 4: away from the 8-decade floor
    change_db = (equalized - plain) * 4 * 10  # back to dB of power
    assert torch.allclose(change_db[floor], draws[0][:, None].expand_as(plain)[floor], atol=1e-3)
