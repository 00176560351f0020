"""The forward process (book 7.2): schedules against hand-computed values, the closed form of
q(x_t | x_0) against the step-by-step chain, and the eps/v parameterisations."""

import itertools
import math

import pytest
import torch

from lbdl_apps.diffusion.schedule import NoiseSchedule


def test_linear_schedule_matches_hand_computed_values() -> None:
    s = NoiseSchedule("linear", 1000)
    step = (0.02 - 1e-4) / 999
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[1].item() == pytest.approx(1e-4 + step)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert s.alpha_bar[1].item() == pytest.approx((1 - 1e-4) * (1 - 1e-4 - step))
    # 4 steps: the same total noise as 1000, so each beta is 250x larger
    four = NoiseSchedule("linear", 4)
    assert four.betas.tolist() == pytest.approx([0.025, 0.025 + 4.975 / 3, 0.025 + 9.95 / 3, 5.0])


def test_cosine_schedule_matches_hand_computed_values() -> None:
    s = NoiseSchedule("cosine", 10)

    def f(t: float) -> float:
        return math.cos((t / 10 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 4, 8):
        assert s.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas[-1].item() == pytest.approx(0.999)  # clipped: alpha_bar(T) = 0


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_is_decreasing_inside_0_1(kind: str) -> None:
    ab = NoiseSchedule(kind, 1000).alpha_bar
    assert (ab > 0).all() and (ab < 1).all()
    assert (ab[1:] < ab[:-1]).all()
    assert ab[-1] < 0.01 and ab[0] > 0.99


def test_closed_form_matches_the_chain_of_small_steps() -> None:
    """x_t from x_0 in one draw has the mean and variance of t one-step noisings."""
    torch.manual_seed(0)
    s = NoiseSchedule("linear", 50)
    x0 = torch.full((40000, 1), 0.8)
    t = 29
    chain = x0.clone()
    for i in range(t + 1):
        beta = s.betas[i].item()
        chain = math.sqrt(1 - beta) * chain + math.sqrt(beta) * torch.randn_like(chain)
    direct = s.q_sample(x0, torch.full((40000,), t), torch.randn_like(x0))
    ab = s.alpha_bar[t].item()
    for x in (chain, direct):
        assert x.mean().item() == pytest.approx(math.sqrt(ab) * 0.8, abs=0.012)
        assert x.var().item() == pytest.approx(1 - ab, rel=0.03)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_prediction_targets_give_back_eps_and_x0(prediction: str) -> None:
    torch.manual_seed(1)
    s = NoiseSchedule("cosine", 100)
    x0, noise = torch.rand(6, 1, 4, 4) * 2 - 1, torch.randn(6, 1, 4, 4)
    t = torch.tensor([0, 10, 30, 50, 80, 99])
    x_t = s.q_sample(x0, t, noise)
    eps, x0_back = s.eps_and_x0(prediction, s.target(prediction, x0, t, noise), x_t, t)
    assert torch.allclose(eps, noise, atol=1e-4)
    assert torch.allclose(x0_back, x0, atol=1e-3 if prediction == "eps" else 1e-4)


def test_timesteps_are_evenly_spaced_and_decreasing() -> None:
    s = NoiseSchedule("linear", 1000)
    assert s.timesteps(1000) == list(range(999, -1, -1))
    ten = s.timesteps(10)
    assert len(ten) == 10 and ten[0] == 999 and ten[-1] == 0
    assert all(a > b for a, b in itertools.pairwise(ten))
    with pytest.raises(ValueError):
        s.timesteps(0)
