"""lbdl's DQN agents by name against CleanRL's own Q-network (issue 26): for each cleanrl:<Game>
name, CleanRL's QNetwork (as cleanrl/dqn_atari.py defines it) with random weights is saved as
CleanRL saves it, lbdl loads it by name; both then compute Q(s, .) for the same batch of
stacked frames. Throughput in observations/s (best of alternating rounds, one thread), their
ratio and the largest difference of the Q-values.

    python bench/zoo_dqn.py [--quick]       (bench/zoo_speed.py gathers the rows)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from zoo_clip import best_rates

GAMES = {"Pong": 6, "Breakout": 4, "BeamRider": 9, "SpaceInvaders": 6}  # minimal action sets


class QNetwork(nn.Module):  # cleanrl/dqn_atari.py, as published (n_actions for `env`)
    def __init__(self, n_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, x):
        return self.network(x / 255.0)


def measure_one(game: str, quick: bool) -> dict[str, Any]:
    from lbdl_apps.dqn.api import load

    torch.manual_seed(0)
    theirs = QNetwork(GAMES[game]).eval()
    file = f"{game}NoFrameskip-v4-dqn_atari-seed1.cleanrl_model"
    torch.save(theirs.state_dict(), Path(os.environ["LBDL_HOME"]) / "downloads" / file)
    ours = load(f"cleanrl:{game}").q_network
    batch = 32
    frames = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)
    as_float = frames.float()  # CleanRL feeds torch.Tensor(obs): float frames
    with torch.inference_mode():
        diff = float((ours(frames) - theirs(as_float)).abs().max())
        ours_rate, theirs_rate = best_rates(
            lambda: ours(frames), lambda: theirs(torch.Tensor(frames.numpy())), batch,
            3 if quick else 20,
        )  # fmt: skip
    return {
        "name": f"cleanrl:{game}",
        "ours_per_s": ours_rate,
        "theirs_per_s": theirs_rate,
        "ratio": ours_rate / theirs_rate,
        "max_abs_diff": diff,
        "input": f"{batch} observations 4x84x84 uint8",
        "publisher": "CleanRL dqn_atari QNetwork, random weights",
    }


def measure(quick: bool) -> list[dict[str, Any]]:
    """One row per cleanrl: name (quick: Pong)."""
    torch.set_num_threads(1)
    games = ["Pong"] if quick else list(GAMES)
    previous = os.environ.get("LBDL_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["LBDL_HOME"] = home
        (Path(home) / "downloads").mkdir()
        try:
            return [measure_one(game, quick) for game in games]
        finally:
            if previous is None:
                os.environ.pop("LBDL_HOME")
            else:
                os.environ["LBDL_HOME"] = previous


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for row in measure(parser.parse_args().quick):
        print(f"{row['name']}: ours {row['ours_per_s']:.3g}/s, theirs {row['theirs_per_s']:.3g}/s,"
              f" ratio {row['ratio']:.2f}, max diff {row['max_abs_diff']:.2g} ({row['input']})")
