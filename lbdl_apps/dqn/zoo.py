"""CleanRL's published Atari DQN agents, by name (book 6.7; `lbdl models`): the Q-networks of
cleanrl/dqn_atari.py (seed 1) on the Hugging Face hub, each a plain torch state dict, played
with the preprocessing they were trained with (cleanrl.py); and such a file on disk,
recognised by its keys and shapes (its game then comes from --env). Torch is imported only
when a file is converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lbdl_apps.core.zoo import Pretrained, PublisherFormat, Source, register, register_format

HUB = "https://huggingface.co/cleanrl/{repo}/resolve/main/dqn_atari.cleanrl_model"
GAMES = {  # game: sha256 of its dqn_atari.cleanrl_model (the hub's Git LFS object id), if known
    "Pong": "1ffa4e32dc1be3ec0465d9db898229bca4bb61fb9c35c9d9b55332c51e1d4735",
    "BeamRider": "31ae6ed50f621be49bb196b3e7006757e5014c8f161fe1a1e16eaf0aa487c6fa",
    "Breakout": "",
    "SpaceInvaders": "",
}


def env_id(game: str) -> str:
    return f"{game}NoFrameskip-v4"


for _game, _sha in GAMES.items():
    _repo = f"{env_id(_game)}-dqn_atari-seed1"
    register(Pretrained(
        name=f"cleanrl:{_game}",
        task="dqn",
        # every game's file is called dqn_atari.cleanrl_model: kept under its repository's name
        # TODO(core): Source(file=..., save_as=...) so that the offline line names both
        sources=(Source(HUB.format(repo=_repo), _sha, 0, f"{_repo}.cleanrl_model"),),
        license="MIT (CleanRL)",
        description=f"CleanRL dqn_atari Nature DQN on {env_id(_game)} (seed 1)",
        convert="lbdl_apps.dqn.zoo:convert_" + _game.lower(),
    ))  # fmt: skip


def cleanrl_checkpoint(path: Path, game_env: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """CleanRL's QNetwork state dict -> our Nature Q-network, with CleanRL's preprocessing
    for `game_env` ("" when the file does not say: --env gives it)."""
    from dataclasses import asdict

    from lbdl_apps.core.checkpoint import load_tensors
    from lbdl_apps.core.errors import LbdlError
    from lbdl_apps.dqn.cleanrl import FRAME, STACK, from_cleanrl_state_dict, is_cleanrl_q_network
    from lbdl_apps.dqn.data import EnvSettings
    from lbdl_apps.dqn.model import QNetworkConfig

    sd = load_tensors(path, "CleanRL Q-network")
    if not is_cleanrl_q_network(sd):
        raise LbdlError(f"{path}: not the state dict of CleanRL's Atari QNetwork")
    n_actions = int(sd["network.9.weight"].shape[0])
    config = QNetworkConfig("nature", n_actions, False, in_channels=STACK, frame_size=FRAME)
    settings = EnvSettings(
        env_id=game_env, atari=True, frame_skip=4, noop_max=30, screen_size=FRAME, stack=STACK,
        sticky_actions=0.0, wrappers="cleanrl",
    )  # fmt: skip
    meta = {"task": "dqn", "config": asdict(config), "env": settings.to_dict()}
    return from_cleanrl_state_dict(sd), meta


def convert_pong(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return cleanrl_checkpoint(files[0], env_id("Pong"))


def convert_beamrider(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return cleanrl_checkpoint(files[0], env_id("BeamRider"))


def convert_breakout(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return cleanrl_checkpoint(files[0], env_id("Breakout"))


def convert_spaceinvaders(files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    return cleanrl_checkpoint(files[0], env_id("SpaceInvaders"))


def _matches(path: Path) -> bool:
    from lbdl_apps.core.checkpoint import load_tensors
    from lbdl_apps.core.errors import LbdlError
    from lbdl_apps.dqn.cleanrl import is_cleanrl_q_network

    if not path.is_file():
        return False
    try:
        return is_cleanrl_q_network(load_tensors(path, "CleanRL Q-network"))
    except LbdlError:
        return False


register_format(PublisherFormat(
    "CleanRL dqn_atari Q-network", "dqn", _matches, lambda path: cleanrl_checkpoint(path, "")
))  # fmt: skip
