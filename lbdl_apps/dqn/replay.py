"""Replay memory (book 6.7) that stores every frame once.

Each environment writes its own stream of frames into a ring: the newest frame of each
observation, one slot per step, plus one slot for the last frame of an ended episode. A
stacked observation is rebuilt from the slots before it (repeating the episode's first frame,
as gymnasium's FrameStackObservation does after a reset), so an Atari transition costs one
84x84 byte frame instead of the 2 x 4 frames of (s, s'), and 1M transitions fit in ~7 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.outputs import atomic_path

BYTES_PER_STEP = 8 + 4 + 4  # action, reward and flags beside the frame


@dataclass
class Batch:
    """Transitions (s, a, R, s', done, discount) with R the n-step discounted return and
    discount = gamma^k for the k steps between s and s'."""

    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    next_obs: np.ndarray
    dones: np.ndarray
    discounts: np.ndarray


def available_memory() -> int | None:
    """Bytes of RAM available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(capacity: int, frame_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The bytes a buffer of `capacity` transitions needs; LbdlError if RAM cannot hold it."""
    frame_bytes = int(np.prod(frame_shape)) * np.dtype(dtype).itemsize
    needed = capacity * (frame_bytes + BYTES_PER_STEP)
    available = available_memory()
    if available is not None and needed > available:
        raise LbdlError(
            f"--buffer-size {capacity}: the replay memory needs {needed / 2**30:.1f} GiB but only "
            f"{available / 2**30:.1f} GiB of RAM is available; lower --buffer-size"
        )
    return needed


class ReplayMemory:
    """Uniform replay of transitions from `num_envs` environments, frames stored once."""

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        frame_shape: tuple[int, ...],
        dtype: np.dtype,
        stack: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int = 0,
    ) -> None:
        self.num_envs, self.stack, self.n_step, self.gamma = num_envs, stack, n_step, gamma
        self.slots = max(capacity // num_envs, stack + n_step + 2)
        shape = (num_envs, self.slots)
        self.frames = np.zeros((*shape, *frame_shape), dtype=dtype)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.first = np.zeros(shape, dtype=bool)  # the slot holds an episode's first frame
        self.valid = np.zeros(shape, dtype=bool)  # a transition starts at this slot
        self.written = np.zeros(num_envs, dtype=np.int64)  # slots written per env, ever
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ writing
    def _write(self, env: int, frame: np.ndarray, first: bool) -> None:
        slot = self.written[env] % self.slots
        self.frames[env, slot] = frame
        self.first[env, slot] = first
        self.valid[env, slot] = False
        self.written[env] += 1

    def start(self, frames: np.ndarray) -> None:
        """The first frames of the environments' first episodes."""
        for env in range(self.num_envs):
            self._write(env, frames[env], first=True)

    def add(
        self,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_frames: np.ndarray,
        ended: np.ndarray | None = None,
        final_frames: np.ndarray | None = None,
    ) -> None:
        """One vector step: the action taken in the newest slot of each env, its reward and
        end flags, then the next frame. Where the episode ended (`ended`, by default
        terminated or truncated; a lost life may terminate a transition without ending the
        game), `final_frames` holds its last frame and `next_frames` the next episode's first."""
        if ended is None:
            ended = terminated | truncated
        for env in range(self.num_envs):
            slot = (self.written[env] - 1) % self.slots
            self.actions[env, slot] = actions[env]
            self.rewards[env, slot] = rewards[env]
            self.terminated[env, slot] = terminated[env]
            self.truncated[env, slot] = truncated[env]
            self.valid[env, slot] = True
            if ended[env]:
                self._write(env, final_frames[env], first=False)
                self._write(env, next_frames[env], first=True)
            else:
                self._write(env, next_frames[env], first=False)

    # ----------------------------------------------------------------- sampling
    def sample(self, batch_size: int) -> Batch:
        """`batch_size` transitions drawn uniformly, with n-step returns cut at episode ends."""
        oldest = np.maximum(self.written - self.slots, 0) + self.stack - 1
        newest = self.written - 1 - self.n_step  # s' of a start here is written
        ready = np.flatnonzero(newest >= oldest)
        if ready.size == 0:
            raise RuntimeError("the replay memory holds no complete transition yet")
        env = np.empty(batch_size, dtype=np.int64)
        start = np.empty(batch_size, dtype=np.int64)
        todo = np.arange(batch_size)
        for _ in range(1000):
            env[todo] = self.rng.choice(ready, size=todo.size)
            start[todo] = self.rng.integers(oldest[env[todo]], newest[env[todo]] + 1)
            todo = todo[~self.valid[env[todo], start[todo] % self.slots]]
            if todo.size == 0:
                break
        else:
            raise RuntimeError("the replay memory holds too few complete transitions")
        returns, dones, steps = self._n_step(env, start)
        return Batch(
            obs=self._stacked(env, start),
            actions=self.actions[env, start % self.slots],
            returns=returns,
            next_obs=self._stacked(env, start + steps),
            dones=dones,
            discounts=(self.gamma**steps).astype(np.float32),
        )

    def _n_step(self, env: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, ...]:
        """Discounted reward sum over up to n steps, stopping at a termination (done) or a
        truncation (bootstrap from the last frame); and the number of steps k."""
        returns = np.zeros(len(env), dtype=np.float32)
        dones = np.zeros(len(env), dtype=bool)
        steps = np.zeros(len(env), dtype=np.int64)
        running = np.ones(len(env), dtype=bool)
        for k in range(self.n_step):
            slot = (start + k) % self.slots
            returns += running * self.gamma**k * self.rewards[env, slot]
            steps += running
            terminated = self.terminated[env, slot] & running
            dones |= terminated
            running &= ~(terminated | self.truncated[env, slot])
        return returns, dones, steps

    def _stacked(self, env: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Observations ending at logical slots `last`: the `stack` frames up to it, the
        episode's first frame repeated where the episode is younger than the stack."""
        if self.stack == 1:
            return self.frames[env, last % self.slots]
        slots = (last[:, None] - np.arange(self.stack - 1, -1, -1)) % self.slots
        for k in range(self.stack - 2, -1, -1):
            after = slots[:, k + 1]
            slots[:, k] = np.where(self.first[env, after], after, slots[:, k])
        return self.frames[env[:, None], slots]

    # ---------------------------------------------------------------- save/load
    ARRAYS = (
        "frames",
        "actions",
        "rewards",
        "terminated",
        "truncated",
        "first",
        "valid",
        "written",
    )

    def save(self, path: Path) -> None:
        """Write the memory to an .npz file (uncompressed), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in self.ARRAYS})

    def load(self, path: Path) -> None:
        """Read a memory written by `save` for the same sizes; LbdlError if it does not fit."""
        try:
            with np.load(path) as saved:
                arrays = {name: saved[name] for name in self.ARRAYS}
        except (OSError, KeyError, ValueError) as error:
            raise LbdlError(f"{path}: unreadable replay memory ({error})") from None
        for name, array in arrays.items():
            if array.shape != getattr(self, name).shape:
                raise LbdlError(f"{path}: replay memory of another size ({name} {array.shape})")
            setattr(self, name, array)
