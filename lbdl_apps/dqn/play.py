"""`lbdl dqn play`: watch an agent in a window or record it to MP4/GIF, with its Q-values
and the return so far drawn beside the game."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.outputs import atomic_path
from lbdl_apps.dqn.api import Agent
from lbdl_apps.dqn.data import make_env

VIDEO_SUFFIXES = (".mp4", ".gif")
PANEL_WIDTH = 190


def check_video_path(path: Path) -> None:
    """A video path must end in .mp4 or .gif and its folder must exist."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise LbdlError(f"--record {path}: use a .mp4 or .gif file name")
    if not path.parent.is_dir():
        raise LbdlError(f"--record {path}: folder {path.parent} does not exist")


def play(
    agent: Agent,
    episodes: int = 1,
    epsilon: float = 0.0,
    render: str | None = None,
    record: Path | None = None,
    max_steps: int | None = None,
    overlay: bool = True,
    seed: int = 0,
    fps: int = 30,
) -> list[float]:
    """Play `episodes` episodes (at most `max_steps` agent steps in all); returns the
    returns (of finished episodes and of the one cut short)."""
    if record is not None:
        check_video_path(record)
    returns: list[float] = []
    frames = _frames(agent, episodes, epsilon, render, record, max_steps, overlay, seed, returns)
    if record is None:
        for _ in frames:
            pass
    elif record.suffix.lower() == ".gif":
        images = [Image.fromarray(image) for image in frames]
        if not images:
            raise LbdlError(f"--record {record}: no frame to write")
        with atomic_path(record) as tmp:
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=int(1000 / fps),
                loop=0,
            )
    else:
        _write_mp4(frames, record, fps)
    return returns


def _write_mp4(frames: Iterator[np.ndarray], record: Path, fps: int) -> None:
    """Stream RGB frames into an MP4 file (OpenCV, mp4v), written under a temporary name."""
    writer = None
    with atomic_path(record) as tmp:
        tmp_mp4 = tmp.with_suffix(".mp4")  # OpenCV picks the container from the suffix
        try:
            for image in frames:
                if writer is None:
                    height, width = image.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(tmp_mp4), fourcc, fps, (width, height))
                writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if writer is None:
                raise LbdlError(f"--record {record}: no frame to write")
            writer.release()
            tmp_mp4.replace(tmp)
        finally:
            tmp_mp4.unlink(missing_ok=True)


def _frames(
    agent: Agent,
    episodes: int,
    epsilon: float,
    render: str | None,
    record: Path | None,
    max_steps: int | None,
    overlay: bool,
    seed: int,
    returns: list[float],
) -> Iterator[np.ndarray]:
    """Run the episodes, appending their returns to `returns`; yield each rendered frame
    (with the overlay) when recording."""
    recording = record is not None
    mode = "human" if render == "human" else ("rgb_array" if recording else None)
    env = make_env(agent.settings, render_mode=mode)
    actions = env.unwrapped.get_action_meanings() if agent.settings.atari else None
    rng = np.random.default_rng(seed)
    steps = 0
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done and (max_steps is None or steps < max_steps):
                q = agent.q_values(obs)
                action = (
                    int(rng.integers(agent.n_actions))
                    if rng.random() < epsilon
                    else int(q.argmax())
                )
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                total = float(
                    info["episode"]["r"] if done else env.get_wrapper_attr("episode_returns")
                )
                steps += 1
                if recording:
                    image = _render(env)
                    yield _with_overlay(image, q, action, total, actions) if overlay else image
            returns.append(total)
            if max_steps is not None and steps >= max_steps:
                break
    finally:
        env.close()


def _render(env: Any) -> np.ndarray:
    """The environment's frame; a renderer that is not installed (pygame for classic
    control) is one line saying what to install."""
    from gymnasium.error import DependencyNotInstalled

    try:
        return env.render()
    except DependencyNotInstalled as error:
        raise LbdlError(f"--record: {error}") from None


def _with_overlay(
    image: np.ndarray, q: np.ndarray, action: int, total: float, names: list[str] | None
) -> np.ndarray:
    """The frame enlarged to at least 400 px high, a panel beside it with the return so far
    and Q(s, a) of every action as bars (the chosen one in green)."""
    scale = max(1, int(np.ceil(400 / image.shape[0])))
    frame = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    panel = np.zeros((frame.shape[0], PANEL_WIDTH, 3), dtype=np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(panel, f"return {total:g}", (8, 24), font, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    low, high = float(q.min()), float(q.max())
    span = max(high - low, 1e-6)
    row = max(14, min(26, (frame.shape[0] - 50) // max(1, len(q))))
    for i, value in enumerate(q):
        y = 50 + i * row
        color = (80, 220, 80) if i == action else (170, 170, 170)
        name = names[i] if names else str(i)
        width = int(60 * (value - low) / span)
        cv2.rectangle(panel, (120, y - row // 2), (120 + width + 1, y + row // 2 - 3), color, -1)
        text = f"{name[:9]} {value:.2f}"
        cv2.putText(panel, text, (8, y + 4), font, 0.38, color, 1, cv2.LINE_AA)
    return np.concatenate([frame, panel], axis=1)
