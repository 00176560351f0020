"""Sampling (book 7.2): start from x_T ~ N(0, I) and denoise step by step, either with the
ancestral DDPM step x_{t-1} | x_t ~ N(x_t + f(x_t, t), sigma_t^2) of the book, or with
DDIM (Song et al. 2021), which can skip most of the steps. Both run on any decreasing
subsequence of the T training steps (the betas recomputed for the strides).

Guidance: classifier-free (Ho & Salimans 2022), eps_u + S (eps_c - eps_u); CLIP guidance
(Nichol et al. 2022), the gradient of a noised CLIP's image-text similarity added to the mean."""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.progress import Progress
from torch import Tensor

from lbdl_apps.core.progress import add_task
from lbdl_apps.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim")

# (x_t, t) -> (eps, x0): the network's estimates at time index t (B,)
Predictor = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
# (x_t, t) -> gradient of log p(condition | x_t) with respect to x_t
Guide = Callable[[Tensor, Tensor], Tensor]


def ddpm_step(
    schedule: NoiseSchedule,
    x: Tensor,
    t: int,
    prev: int,
    x0: Tensor,
    noise: Tensor,
    guide_grad: Tensor | None = None,
) -> Tensor:
    """One ancestral step from index t to prev (< t; -1 for the clean image): the Gaussian
    posterior q(x_prev | x_t, x0) with x0 the network's estimate, i.e. x_t + f(x_t, t) plus
    sigma_t z, where sigma_t^2 = beta_t (1 - alpha_bar_prev) / (1 - alpha_bar_t)."""
    ab = schedule.alpha_bar[t].item()
    ab_prev = schedule.alpha_bar[prev].item() if prev >= 0 else 1.0
    beta = 1 - ab / ab_prev
    mean = (ab_prev**0.5 * beta / (1 - ab)) * x0 + (
        (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab)
    ) * x
    variance = beta * (1 - ab_prev) / (1 - ab)
    if guide_grad is not None:
        mean = mean + variance * guide_grad
    return mean + variance**0.5 * noise if prev >= 0 else mean


def ddim_step(
    schedule: NoiseSchedule,
    x: Tensor,
    t: int,
    prev: int,
    eps: Tensor,
    x0: Tensor,
    noise: Tensor,
    eta: float = 0.0,
) -> Tensor:
    """One DDIM step: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); eta = 0 is
    deterministic, eta = 1 is the DDPM step."""
    ab = schedule.alpha_bar[t].item()
    ab_prev = schedule.alpha_bar[prev].item() if prev >= 0 else 1.0
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
    direction = max(1 - ab_prev - sigma**2, 0.0) ** 0.5
    return ab_prev**0.5 * x0 + direction * eps + sigma * noise


def sample_loop(
    predict: Predictor,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    steps: int,
    sampler: str = "ddpm",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    guide: Guide | None = None,
    clip_x0: bool = True,
    progress: Progress | None = None,
) -> Tensor:
    """Denoise x_T ~ N(0, I) of `shape` over `steps` evenly spaced time indices, counted on
    `progress` (a `core.progress.progress_bar`) when given.

    `clip_x0` clamps the x0 estimate to [-1, 1] (image data) and derives eps from it again;
    `guide` adds the gradient of log p(c | x_t): sigma_t^2 * grad to the DDPM mean, and
    -sqrt(1 - alpha_bar_t) * grad to the DDIM noise estimate (Dhariwal & Nichol 2021)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    times = schedule.timesteps(steps)
    x = torch.randn(shape, generator=generator, device="cpu").to(device)
    task = add_task(progress, "sampling", len(times)) if progress is not None else None
    for i, t in enumerate(times):
        prev = times[i + 1] if i + 1 < len(times) else -1
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        with torch.no_grad():
            eps, x0 = predict(x, t_batch)
        ab = schedule.alpha_bar[t].item()
        grad = guide(x, t_batch) if guide is not None else None
        if grad is not None and sampler == "ddim":
            eps = eps - (1 - ab) ** 0.5 * grad
            x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
            grad = None
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
        noise = torch.randn(shape, generator=generator, device="cpu").to(device)
        if sampler == "ddpm":
            x = ddpm_step(schedule, x, t, prev, x0, noise, grad)
        else:
            x = ddim_step(schedule, x, t, prev, eps, x0, noise, eta)
        if task is not None:
            progress.update(task, advance=1, refresh=True)  # type: ignore[union-attr]
    if task is not None:
        progress.remove_task(task)  # type: ignore[union-attr]
    return x
