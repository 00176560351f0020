"""The Atari preprocessing on a real ALE game (Pong; the ROM ships with ale-py), and the
replay memory rebuilding the very observations the environment gave."""

from __future__ import annotations

import numpy as np

from lbdl_apps.dqn.data import EnvSettings, make_env, make_vector_env, newest_frames
from lbdl_apps.dqn.replay import ReplayMemory


def test_pong_observations_are_4_stacked_84x84_bytes_with_v5_settings():
    settings = EnvSettings.for_env("ALE/Pong-v5")
    assert (settings.stack, settings.frame_skip, settings.sticky_actions) == (4, 4, 0.25)
    env = make_env(settings)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.25
    assert env.unwrapped._frameskip == 1  # the emulator's skip is off; the wrapper skips 4
    assert env.action_space.n == 6  # minimal action set
    frames_before = ale.getEpisodeFrameNumber()
    _, reward, *_ = env.step(0)
    assert ale.getEpisodeFrameNumber() - frames_before == 4
    assert reward in (-1.0, 0.0, 1.0)
    env.close()
    no_sticky = make_env(EnvSettings.for_env("ALE/Pong-v5", sticky_actions=0.0))
    assert no_sticky.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    no_sticky.close()


def test_replay_rebuilds_pong_observations_across_an_episode_end():
    settings = EnvSettings.for_env("ALE/Pong-v5", noop_max=0, frame_skip=8)
    envs = make_vector_env(settings, 1)
    obs, _ = envs.reset(seed=3)
    memory = ReplayMemory(5000, 1, (84, 84), np.uint8, stack=4)
    memory.start(newest_frames(obs, 4))
    seen = [obs[0]]
    rng = np.random.default_rng(0)
    for _ in range(2000):
        actions = rng.integers(6, size=1)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        ended = terminated | truncated
        final = info["final_obs"][0][None] if ended[0] else None
        memory.add(
            actions,
            rewards,
            terminated,
            truncated,
            newest_frames(obs, 4),
            ended,
            None if final is None else newest_frames(final, 4),
        )
        if ended[0]:
            seen.append(final[0])
        seen.append(obs[0])
        if ended[0]:
            break
    envs.close()
    assert ended[0], "a random Pong game ends within 2000 steps of 8 frames"
    assert memory.frames.shape[2:] == (84, 84)  # one frame per slot
    rebuilt = memory._stacked(np.zeros(len(seen), dtype=np.int64), np.arange(len(seen)))
    np.testing.assert_array_equal(rebuilt, np.stack(seen))
