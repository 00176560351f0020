"""Training-time augmentation of speech (book 6.5): speed, noise and tempo perturbation,
vocal tract length perturbation, a random equalizer and SpecAugment masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

from lbdl_apps.asr.audio import SAMPLE_RATE, resample, warp_bands


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
        """The waveform perturbed: speed, then noise."""
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
        """The (80, T) log-mel spectrogram perturbed: tempo, band warp, then masks."""
        if self.stretch > 0:
            factor = math.exp(math.log1p(self.stretch) * (2 * float(torch.rand(())) - 1))
            frames = max(1, round(mel.shape[-1] * factor))
            # (80, T) -> (1, 80, T), linear in time to (1, 80, T') -> (80, T')
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
