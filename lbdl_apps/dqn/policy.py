"""Acting (book 6.7): the epsilon schedule, epsilon-greedy actions, and the returns of a
Q-network playing whole episodes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.data import EnvSettings, make_env

MAX_EVAL_STEPS = 27_000  # agent steps per evaluation episode (108k Atari frames, as in v5)


def epsilon_at(step: int, args: TrainArgs) -> float:
    """Linear decay from eps_start to eps_end over the first eps_fraction of the steps."""
    span = max(1.0, args.eps_fraction * args.total_steps)
    return args.eps_start + (args.eps_end - args.eps_start) * min(1.0, step / span)


def select_actions(
    q_net: nn.Module,
    obs: np.ndarray,
    epsilon: float,
    n_actions: int,
    rng: np.random.Generator,
    device: torch.device,
) -> np.ndarray:
    """Epsilon-greedy actions: random with probability epsilon, else argmax_a Q(s, a)."""
    actions = rng.integers(n_actions, size=len(obs))
    greedy = rng.random(len(obs)) >= epsilon
    if greedy.any():
        with torch.inference_mode():
            q = q_net(torch.as_tensor(obs[greedy], device=device))  # (G, A)
        actions[greedy] = q.argmax(dim=1).cpu().numpy()
    return actions


def evaluate_policy(
    q_net: nn.Module,
    settings: EnvSettings,
    episodes: int,
    epsilon: float,
    seed: int,
    device: torch.device,
) -> list[float]:
    """Returns (unclipped, whole games) of `episodes` episodes played epsilon-greedily."""
    env = make_env(settings)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    returns = []
    q_net.eval()
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            for _ in range(MAX_EVAL_STEPS):
                action = select_actions(q_net, obs[None], epsilon, n_actions, rng, device)[0]
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            done = "episode" in info  # else cut at MAX_EVAL_STEPS: the return so far
            returns.append(
                float(info["episode"]["r"] if done else env.get_wrapper_attr("episode_returns"))
            )
    finally:
        env.close()
        q_net.train()
    return returns
