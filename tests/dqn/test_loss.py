"""The Bellman target against hand computations (with and without Double DQN), the TD
losses and the target-network update (book 6.7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lbdl_apps.dqn.loss import td_loss, td_targets, update_target

# next_obs are the target network's Q-values themselves (an identity target network)
NEXT_Q = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0], [5.0, 5.0, 0.0]])
RETURNS = torch.tensor([1.0, 0.5, -1.0])
DONES = torch.tensor([False, False, True])
DISCOUNTS = torch.tensor([0.99, 0.99**3, 0.99])


def reversing_online_network() -> nn.Module:
    """Q(s', a) = next_obs with the actions in reverse order: it prefers other actions."""
    net = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3).flip(0))
    return net


def test_dqn_target_is_r_plus_discounted_max_and_zero_after_termination():
    y = td_targets(RETURNS, NEXT_Q, DONES, DISCOUNTS, nn.Identity())
    expected = [1 + 0.99 * 3, 0.5 + 0.99**3 * 4, -1.0]
    assert y.tolist() == pytest.approx(expected)


def test_double_dqn_target_values_the_online_choice_with_the_target_network():
    y = td_targets(RETURNS, NEXT_Q, DONES, DISCOUNTS, nn.Identity(), reversing_online_network())
    # online Q rows [2,3,1], [4,-1,0], [0,5,5] pick actions 1, 0, 1; the target values them
    expected = [1 + 0.99 * 3, 0.5 + 0.99**3 * 0.0, -1.0]
    assert y.tolist() == pytest.approx(expected)


def test_huber_and_squared_losses():
    q = torch.tensor([4.0, 4.0, 0.0])
    y = torch.tensor([3.97, 0.5, -1.0])
    errors = [0.03, 3.5, 1.0]
    huber = [0.5 * e * e if e < 1 else e - 0.5 for e in errors]
    assert td_loss(q, y, "huber").item() == pytest.approx(sum(huber) / 3)
    assert td_loss(q, y, "mse").item() == pytest.approx(sum(e * e for e in errors) / 3)
    with pytest.raises(ValueError):
        td_loss(q, y, "l1")


def test_target_update_copies_or_averages():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(2.0)
        target.weight.fill_(0.0)
    update_target(target, online, tau=0.25)
    assert target.weight.tolist() == [[0.5, 0.5]]
    update_target(target, online, tau=1.0)
    assert torch.equal(target.weight, online.weight)
    assert target.weight.data_ptr() != online.weight.data_ptr()  # a copy, not the same tensor
