"""The forward (noising) process of a denoising diffusion model (book 7.2): a variance schedule
beta_1..beta_T, alpha_bar_t = prod_{s<=t} (1 - beta_s), and the closed form
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; plus the targets a network learns
(the noise eps, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0) and back."""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


def linear_betas(steps: int) -> Tensor:
    """Ho et al. (2020): beta from 1e-4 to 0.02 over 1000 steps, rescaled for other step counts
    so that the total noise stays the same (Nichol & Dhariwal 2021)."""
    scale = 1000.0 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)


def cosine_betas(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2) / f(0)."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


class NoiseSchedule:
    """beta_t, alpha_t and alpha_bar_t for t = 0..T-1 (index t is the (t+1)-th noising step),
    kept in float64 and read out as float32 per batch."""

    def __init__(self, kind: str = "linear", steps: int = 1000) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
        if steps < 1:
            raise ValueError(f"schedule steps {steps}: must be at least 1")
        self.kind, self.steps = kind, steps
        self.betas = linear_betas(steps) if kind == "linear" else cosine_betas(steps)
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)

    def _at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] shaped (B, 1, 1, ...) to broadcast against `like`."""
        out = values.to(like.device)[t.long()].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, ..., 1)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """A draw of x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)."""
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def target(self, prediction: str, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network is trained to output: the noise, or v (Salimans & Ho 2022)."""
        if prediction == "eps":
            return noise
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def eps_and_x0(self, prediction: str, output: Tensor, x_t: Tensor, t: Tensor) -> tuple:
        """The network's noise estimate and the implied clean image x_0 from its output."""
        ab = self._at(self.alpha_bar, t, x_t)
        if prediction == "eps":
            eps = output
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        else:
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * output
            eps = (1 - ab).sqrt() * x_t + ab.sqrt() * output
        return eps, x0

    def timesteps(self, count: int) -> list[int]:
        """`count` evenly spaced time indices from T-1 down to 0 (all of them when count = T)."""
        if count < 1:
            raise ValueError(f"steps {count}: must be at least 1")
        count = min(count, self.steps)
        spaced = torch.linspace(0, self.steps - 1, count).round().long().unique()
        return spaced.flip(0).tolist()
