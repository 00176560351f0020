"""The optimisation of deep Q-learning (book 6.7): the online and target Q-networks, Adam,
and rounds of gradient steps on batches drawn from the replay memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.loss import td_loss, td_targets
from lbdl_apps.dqn.model import QNetworkConfig, build_q_network
from lbdl_apps.dqn.replay import Batch, ReplayMemory


@dataclass
class Learner:
    """The online and target Q-networks, their optimizer and one gradient step."""

    online: nn.Module
    target: nn.Module
    optimizer: torch.optim.Optimizer
    args: TrainArgs
    device: torch.device
    updates: int = 0

    @classmethod
    def create(cls, config: QNetworkConfig, args: TrainArgs, device: torch.device) -> Learner:
        online = build_q_network(config).to(device)
        target = build_q_network(config).to(device)
        target.load_state_dict(online.state_dict())
        target.requires_grad_(False)
        fused = device.type in ("cpu", "cuda")  # one kernel for all parameters: ~10% faster steps
        optimizer = torch.optim.Adam(
            online.parameters(), lr=args.lr, eps=args.adam_eps, fused=fused or None
        )
        return cls(online, target, optimizer, args, device)

    def train_round(self, memory: ReplayMemory, updates: int) -> list[Tensor]:
        """`updates` gradient steps; returns their losses (on the device).

        Neither the memory nor the target network changes during a round, so its batches
        are drawn at once and, without Double DQN, their Bellman targets come from a single
        forward pass of the target network."""
        size = self.args.batch_size
        batch = self._on_device(memory.sample(size * updates))
        obs, actions, returns, next_obs, dones, discounts = batch
        double = self.args.double
        targets = None if double else td_targets(returns, next_obs, dones, discounts, self.target)
        losses = []
        for first in range(0, size * updates, size):
            part = slice(first, first + size)
            if double:
                target = td_targets(
                    returns[part],
                    next_obs[part],
                    dones[part],
                    discounts[part],
                    self.target,
                    self.online,
                )
            else:
                target = targets[part]
            losses.append(self._step(obs[part], actions[part], target))
        self.updates += updates
        return losses

    def _on_device(self, batch: Batch) -> tuple[Tensor, ...]:
        """obs, actions, returns, next_obs, dones, discounts as tensors on the device."""
        names = ("obs", "actions", "returns", "next_obs", "dones", "discounts")
        return tuple(torch.from_numpy(getattr(batch, name)).to(self.device) for name in names)

    def _step(self, obs: Tensor, actions: Tensor, target: Tensor) -> Tensor:
        """One gradient step of the TD loss between Q(s, a) and its Bellman target."""
        q_taken = self.online(obs).gather(1, actions[:, None]).squeeze(1)  # (B, A) -> (B,)
        loss = td_loss(q_taken, target, self.args.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters, self.args.max_grad_norm)
        self.optimizer.step()
        return loss.detach()

    @property
    def parameters(self) -> list[nn.Parameter]:
        return self.optimizer.param_groups[0]["params"]
