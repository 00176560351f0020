"""CleanRL's Atari DQN agents by name (`cleanrl:Pong`, ...; book 6.7), proven against CleanRL's
own code with random weights: its QNetwork as cleanrl/dqn_atari.py defines it gives the same
Q-values as ours; its make_env (Stable-Baselines3's atari wrappers and gym's observation
wrappers, as CleanRL imports them) gives the same observations as ours, lost lives included;
then `lbdl dqn play` by name, and a CleanRL file on disk with --env."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from lbdl_apps.core import zoo
from lbdl_apps.dqn.api import load
from lbdl_apps.dqn.cleanrl import cleanrl_env
from lbdl_apps.dqn.data import _register_ale
from tests.cli_helpers import assert_user_error, lbdl


class QNetwork(nn.Module):  # cleanrl/dqn_atari.py, as published
    def __init__(self, env):
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
            nn.Linear(512, env.single_action_space.n),
        )

    def forward(self, x):
        return self.network(x / 255.0)


class Envs:  # what QNetwork reads of CleanRL's vector environment
    def __init__(self, n_actions: int) -> None:
        self.single_action_space = gym.spaces.Discrete(n_actions)


def cleanrl_file(path: Path, n_actions: int, seed: int = 0) -> QNetwork:
    """CleanRL's `torch.save(q_network.state_dict(), ...)` of a random QNetwork."""
    torch.manual_seed(seed)
    network = QNetwork(Envs(n_actions)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return network


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(zoo.urllib.request, "urlopen", offline)
    return tmp_path / "home"


def downloaded(home: Path, game: str) -> Path:
    return home / "downloads" / f"{game}NoFrameskip-v4-dqn_atari-seed1.cleanrl_model"


@pytest.mark.parametrize(("game", "n_actions"), [("Pong", 6), ("Breakout", 4)])
def test_names_give_cleanrls_q_values(home: Path, game: str, n_actions: int) -> None:
    theirs = cleanrl_file(downloaded(home, game), n_actions)
    agent = load(f"cleanrl:{game}")
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        expected = theirs(torch.Tensor(obs.numpy()))  # CleanRL feeds float frames
        assert torch.allclose(agent.q_network(obs), expected, atol=1e-4)
    assert agent.n_actions == n_actions
    assert agent.settings.env_id == f"{game}NoFrameskip-v4"
    assert agent.settings.wrappers == "cleanrl" and agent.settings.sticky_actions == 0.0


def cleanrls_make_env(env_id: str) -> gym.Env:
    """cleanrl/dqn_atari.py's make_env (capture_video off), with gym 0.23's ResizeObservation
    and GrayScaleObservation (cv2), the ones its published networks were trained with."""
    atari = pytest.importorskip("stable_baselines3.common.atari_wrappers")
    _register_ale()
    env = gym.make(env_id)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = atari.NoopResetEnv(env, noop_max=30)
    env = atari.MaxAndSkipEnv(env, skip=4)
    env = atari.EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = atari.FireResetEnv(env)
    env = atari.ClipRewardEnv(env)
    box = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    env = gym.wrappers.TransformObservation(
        env, lambda o: cv2.resize(o, (84, 84), interpolation=cv2.INTER_AREA), box
    )
    gray = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    env = gym.wrappers.TransformObservation(
        env, lambda o: cv2.cvtColor(o, cv2.COLOR_RGB2GRAY), gray
    )
    return gym.wrappers.FrameStackObservation(env, 4)


def test_the_preprocessing_is_cleanrls(home: Path) -> None:
    """The same observations, rewards and game ends over lost lives and a game over; CleanRL's
    vector environment reset its env at each episode end (a lost life too)."""
    game = "BreakoutNoFrameskip-v4"
    ours, theirs = cleanrl_env(game), cleanrls_make_env(game)
    rng = np.random.default_rng(0)
    a, _ = ours.reset(seed=3)
    b, _ = theirs.reset(seed=3)
    assert a.shape == (4, 84, 84) and np.array_equal(a, b)
    lives_lost = games = 0
    for _ in range(600):
        action = int(rng.integers(4))
        a, ra, ta, _, info = ours.step(action)
        b, rb, tb, _, theirs_info = theirs.step(action)
        assert ra == rb
        if tb and "episode" not in theirs_info:  # a lost life: CleanRL's autoreset
            b, _ = theirs.reset()
            lives_lost += 1
        elif tb:
            assert ta and info["episode"]["r"] == theirs_info["episode"]["r"]
            games += 1
            a, _ = ours.reset(seed=games)
            b, _ = theirs.reset(seed=games)
        assert np.array_equal(a, b)
    assert lives_lost >= 3
    ours.close()
    theirs.close()


def test_play_by_name_records_a_video(home: Path, tmp_path: Path) -> None:
    cleanrl_file(downloaded(home, "Pong"), 6)
    video = tmp_path / "pong.mp4"
    result = lbdl("dqn", "play", "cleanrl:Pong", "--record", video, "--max-steps", "20")
    assert result.exit_code == 0, result.output
    assert video.stat().st_size > 0 and "PongNoFrameskip-v4" in result.output


def test_a_cleanrl_file_on_disk_needs_its_game(tmp_path: Path) -> None:
    path = tmp_path / "dqn_atari.cleanrl_model"
    cleanrl_file(path, 4)
    assert_user_error(lbdl("dqn", "play", path, "--record", tmp_path / "b.gif"),
                      "dqn_atari.cleanrl_model", "--env")  # fmt: skip
    gif = tmp_path / "b.gif"
    result = lbdl("dqn", "play", path, "--env", "BreakoutNoFrameskip-v4", "--record", gif,
                  "--max-steps", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_user_error(lbdl("dqn", "play", path, "--env", "PongNoFrameskip-v4", "--record", gif),
                      "6 actions", "has 4")  # fmt: skip


def test_names_not_cached_or_unknown_are_one_line(home: Path) -> None:
    line = assert_user_error(lbdl("dqn", "evaluate", "cleanrl:Pong"), "cleanrl:Pong",
                             "cannot be reached")  # fmt: skip
    assert "PongNoFrameskip-v4-dqn_atari-seed1.cleanrl_model" in line
    assert_user_error(lbdl("dqn", "evaluate", "cleanrl:Tetris"), "not a known model name")
    assert_user_error(lbdl("dqn", "evaluate", "openai:ViT-B-32"), "is a clip model")
