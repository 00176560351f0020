"""The Bellman target and the TD loss of deep Q-learning (book 6.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def td_targets(
    returns: Tensor,
    next_obs: Tensor,
    dones: Tensor,
    discounts: Tensor,
    target_net: nn.Module,
    online_net: nn.Module | None = None,
) -> Tensor:
    """y = R + gamma^k (1 - done) max_a' Q_target(s', a').

    `returns` is the (n-step) discounted reward sum and `discounts` gamma^k for the k steps
    to s'. With `online_net` (Double DQN, van Hasselt et al. 2016) the online network picks
    a' and the target network values it: y = R + gamma^k Q_target(s', argmax_a' Q(s', a')).
    """
    next_q = target_net(next_obs)
    if online_net is None:
        best = next_q.max(dim=1).values
    else:
        choice = online_net(next_obs).argmax(dim=1, keepdim=True)
        best = next_q.gather(1, choice).squeeze(1)
    return returns + discounts * (~dones) * best


def td_loss(q_taken: Tensor, targets: Tensor, kind: str = "huber") -> Tensor:
    """Mean (Huber or squared) error between Q(s, a) and the Bellman target."""
    if kind == "huber":
        return F.smooth_l1_loss(q_taken, targets)
    if kind == "mse":
        return F.mse_loss(q_taken, targets)
    raise ValueError(f"unknown TD loss {kind!r}")


@torch.no_grad()
def update_target(target_net: nn.Module, online_net: nn.Module, tau: float) -> None:
    """Copy the online weights into the target network (tau = 1) or move them towards them
    (Polyak averaging: w_target <- (1 - tau) w_target + tau w)."""
    for target, online in zip(target_net.parameters(), online_net.parameters(), strict=True):
        if tau >= 1.0:
            target.copy_(online)
        else:
            target.lerp_(online, tau)
