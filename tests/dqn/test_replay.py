"""The replay memory (book 6.7): right s, a, r, s', done across episode boundaries, ring
wrap-around, n-step returns and truncations; frames stored once; the RAM check."""

from __future__ import annotations

import numpy as np
import pytest

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.dqn.replay import ReplayMemory, check_memory


def frame(episode: int, t: int) -> np.ndarray:
    """A 2x2 frame that says which episode and step it comes from."""
    return np.full((2, 2), episode * 100 + t, dtype=np.uint16)


def fill(memory: ReplayMemory, lengths: list[int], truncate_last: bool = False) -> dict:
    """Play episodes of the given lengths in one env; reward of step t of episode e is
    e * 10 + t, action t % 3. Returns {(episode, t): slot frames} of what was written."""
    memory.start(frame(0, 0)[None])
    for episode, length in enumerate(lengths):
        for t in range(length):
            last = t == length - 1
            truncated = last and truncate_last and episode == len(lengths) - 1
            terminated = last and not truncated
            next_frame = frame(episode + 1, 0) if last else frame(episode, t + 1)
            memory.add(
                np.array([t % 3]),
                np.array([episode * 10.0 + t]),
                np.array([terminated]),
                np.array([truncated]),
                next_frame[None],
                np.array([last]),
                frame(episode, t + 1)[None] if last else None,
            )
    return {}


def stacked(episode: int, t: int, stack: int) -> np.ndarray:
    """What gymnasium's FrameStackObservation gives at step t: the last `stack` frames,
    the first frame repeated at the start of an episode."""
    return np.stack([frame(episode, max(0, t - k)) for k in range(stack - 1, -1, -1)])


def decode(obs: np.ndarray) -> tuple[int, int]:
    value = int(obs.reshape(-1)[-1])
    return value // 100, value % 100


def test_transitions_across_episode_boundaries():
    memory = ReplayMemory(1000, 1, (2, 2), np.uint16, stack=4, gamma=0.9, seed=0)
    fill(memory, [3, 5, 2, 6])
    batch = memory.sample(400)
    for i in range(400):
        episode, t = decode(batch.obs[i])
        np.testing.assert_array_equal(batch.obs[i], stacked(episode, t, 4))
        assert batch.actions[i] == t % 3
        assert batch.returns[i] == pytest.approx(episode * 10 + t)
        # s' is the episode's own next frame, even when the episode ended there
        np.testing.assert_array_equal(batch.next_obs[i], stacked(episode, t + 1, 4))
        length = [3, 5, 2, 6][episode]
        assert batch.dones[i] == (t == length - 1)
        assert batch.discounts[i] == pytest.approx(0.9)
    assert len({decode(o) for o in batch.obs}) > 10  # the draws cover many transitions


def test_wrap_around_keeps_only_whole_recent_transitions():
    memory = ReplayMemory(12, 1, (2, 2), np.uint16, stack=4, seed=1)
    lengths = [7, 7, 7, 7]
    fill(memory, lengths)
    assert memory.frames.shape == (1, 12, 2, 2)  # one frame per step, not 2 x 4
    batch = memory.sample(300)
    seen = set()
    for i in range(300):
        episode, t = decode(batch.obs[i])
        seen.add((episode, t))
        np.testing.assert_array_equal(batch.obs[i], stacked(episode, t, 4))
        np.testing.assert_array_equal(batch.next_obs[i], stacked(episode, t + 1, 4))
        assert batch.actions[i] == t % 3
        assert batch.returns[i] == pytest.approx(episode * 10 + t)
    # the 12 newest slots hold the last frames of episode 2 and episode 3: older episodes
    # were overwritten and are never returned
    assert {e for e, _ in seen} <= {2, 3}
    assert (3, 5) in seen


def test_n_step_returns_stop_at_termination():
    gamma = 0.5
    memory = ReplayMemory(1000, 1, (2, 2), np.uint16, stack=1, n_step=3, gamma=gamma, seed=2)
    fill(memory, [5, 4])
    batch = memory.sample(300)
    for i in range(300):
        episode, t = decode(batch.obs[i])
        length = [5, 4][episode]
        k = min(3, length - t)
        expected = sum(gamma**j * (episode * 10 + t + j) for j in range(k))
        assert batch.returns[i] == pytest.approx(expected)
        assert batch.discounts[i] == pytest.approx(gamma**k)
        assert batch.dones[i] == (t + k == length)
        assert decode(batch.next_obs[i]) == (episode, t + k)


def test_truncation_bootstraps_from_the_last_frame():
    memory = ReplayMemory(1000, 1, (2, 2), np.uint16, stack=2, n_step=2, gamma=0.9, seed=3)
    fill(memory, [4, 3], truncate_last=True)
    memory.add(  # one more step so the truncated episode's transitions are complete
        np.array([0]), np.array([0.0]), np.array([False]), np.array([False]), frame(2, 1)[None]
    )
    batch = memory.sample(300)
    for i in range(300):
        episode, t = decode(batch.obs[i])
        if episode == 1 and t == 2:  # the step cut by the time limit
            assert not batch.dones[i]
            np.testing.assert_array_equal(batch.next_obs[i], stacked(1, 3, 2))
            assert batch.discounts[i] == pytest.approx(0.9)


def test_vector_envs_write_their_own_streams():
    memory = ReplayMemory(100, 2, (1,), np.float32, stack=1, seed=4)
    memory.start(np.array([[0.0], [100.0]]))
    for t in range(10):
        memory.add(
            np.array([0, 1]),
            np.array([t, -t], dtype=np.float32),
            np.array([False, False]),
            np.array([False, False]),
            np.array([[t + 1.0], [101.0 + t]]),
        )
    batch = memory.sample(200)
    for obs, action, ret, nxt in zip(
        batch.obs, batch.actions, batch.returns, batch.next_obs, strict=True
    ):
        env = int(obs[0] >= 100)
        t = obs[0] - 100 * env
        assert action == env
        assert ret == (t if env == 0 else -t)
        assert nxt[0] == obs[0] + 1


def test_save_and_load_round_trip(tmp_path):
    memory = ReplayMemory(50, 1, (2, 2), np.uint16, stack=4, seed=5)
    fill(memory, [6, 9])
    memory.save(tmp_path / "replay.npz")
    copy = ReplayMemory(50, 1, (2, 2), np.uint16, stack=4, seed=5)
    copy.load(tmp_path / "replay.npz")
    a, b = memory.sample(64), copy.sample(64)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.next_obs, b.next_obs)
    other = ReplayMemory(80, 1, (2, 2), np.uint16, stack=4)
    with pytest.raises(LbdlError, match="another size"):
        other.load(tmp_path / "replay.npz")


def test_an_atari_buffer_of_a_million_is_7_gb_and_too_big_is_a_clear_error():
    assert check_memory(1000, (84, 84), np.uint8) == 1000 * (84 * 84 + 16)
    with pytest.raises(LbdlError, match=r"--buffer-size .*GiB.*lower --buffer-size"):
        check_memory(10**9, (84, 84), np.uint8)
