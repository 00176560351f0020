"""Samplers (book 7.2): DDIM with eta = 1 is the ancestral DDPM step; both, run with the
exact noise predictor of Gaussian data, give back the data's distribution."""

import math

import pytest
import torch

from lbdl_apps.diffusion.sampling import ddim_step, ddpm_step, sample_loop
from lbdl_apps.diffusion.schedule import NoiseSchedule

MEAN, STD = 0.7, 0.4


def exact_predictor(schedule: NoiseSchedule):
    """E[eps | x_t] for x_0 ~ N(MEAN, STD^2): the ideal network."""

    def predict(x: torch.Tensor, t: torch.Tensor):
        ab = schedule.alpha_bar[t].float().view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MEAN) / (ab * STD**2 + 1 - ab)
        return eps, (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    return predict


def test_ddim_with_eta_1_is_the_ddpm_step() -> None:
    torch.manual_seed(0)
    s = NoiseSchedule("cosine", 100)
    x, eps, _x0, noise = (torch.randn(4, 1, 3, 3) for _ in range(4))
    for t, prev in ((99, 98), (60, 40), (5, -1)):
        ab = s.alpha_bar[t].item()
        x0_consistent = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        a = ddpm_step(s, x, t, prev, x0_consistent, noise)
        b = ddim_step(s, x, t, prev, eps, x0_consistent, noise, eta=1.0)
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("sampler", "eta", "steps"), [("ddpm", 0.0, 200), ("ddim", 1.0, 200), ("ddim", 0.0, 50)]
)
def test_samplers_recover_a_toy_gaussian(sampler: str, eta: float, steps: int) -> None:
    """(The estimate of x0 at each step ignores its uncertainty: a ~3% lower spread.)"""
    s = NoiseSchedule("cosine", 200)
    x = sample_loop(
        exact_predictor(s),
        s,
        (20000, 1, 1, 1),
        steps,
        sampler,
        eta,
        torch.Generator().manual_seed(0),
        clip_x0=False,
    )
    assert x.mean().item() == pytest.approx(MEAN, abs=0.02)
    assert x.std().item() == pytest.approx(STD, abs=0.015)


def test_ddpm_and_ddim_eta_1_give_the_same_samples_from_the_same_noise() -> None:
    s = NoiseSchedule("cosine", 50)
    run = [
        sample_loop(
            exact_predictor(s), s, (64, 1, 2, 2), 50, sampler, 1.0, torch.Generator().manual_seed(3)
        )
        for sampler in ("ddpm", "ddim")
    ]
    assert torch.allclose(run[0], run[1], atol=1e-4)


def test_guidance_gradient_moves_the_samples() -> None:
    """A constant +g gradient (log p(c | x) = g x) shifts the samples upwards."""
    s = NoiseSchedule("linear", 100)
    plain, guided = (
        sample_loop(
            exact_predictor(s),
            s,
            (4000, 1, 1, 1),
            50,
            sampler,
            0.0,
            torch.Generator().manual_seed(0),
            guide=guide,
            clip_x0=False,
        )
        for sampler, guide in (("ddim", None), ("ddim", lambda x, t: torch.full_like(x, 2.0)))
    )
    assert guided.mean() > plain.mean() + 0.05
