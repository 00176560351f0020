"""The agent loop on CartPole: epsilon schedule, target network updated only when
scheduled, learning that clearly beats a random policy, resume (book 6.7)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from lbdl_apps.core.options import Common
from lbdl_apps.dqn.agent import Run
from lbdl_apps.dqn.api import load
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.defaults import resolve
from lbdl_apps.dqn.learner import Learner
from lbdl_apps.dqn.loss import td_loss, td_targets
from lbdl_apps.dqn.model import QNetworkConfig
from lbdl_apps.dqn.policy import epsilon_at, evaluate_policy
from lbdl_apps.dqn.task import train as run_training


def test_epsilon_decays_linearly_then_stays():
    args = TrainArgs(total_steps=1000, eps_start=1.0, eps_end=0.1, eps_fraction=0.5)
    assert epsilon_at(0, args) == 1.0
    assert epsilon_at(250, args) == pytest.approx(0.55)
    assert epsilon_at(500, args) == pytest.approx(0.1)
    assert epsilon_at(900, args) == pytest.approx(0.1)


def short_run(tmp_path, total_steps: int, **options) -> tuple[Run, dict]:
    """A CartPole run trained from step 50 at every step; and its initial weights."""
    args = TrainArgs(
        total_steps=total_steps,
        learning_starts=50,
        train_freq=1,
        gradient_steps=1,
        target_update=300,
        eval_every=10**6,
        eval_episodes=1,
        hidden=[32, 32],
        run_dir=tmp_path,
        exist_ok=True,
        **options,
    )
    args = resolve(args)
    run = Run(args, Common(quiet=True), tmp_path)
    initial = {k: v.clone() for k, v in run.learner.online.state_dict().items()}
    run.train(Console(quiet=True))
    return run, initial


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_target_network_changes_only_when_scheduled(tmp_path):
    before, before_initial = short_run(tmp_path / "a", 299)
    assert before.learner.updates == 299 - 64 + 1  # from a full batch (64) on
    assert same(before.learner.target.state_dict(), before_initial)  # not yet due
    assert not same(before.learner.online.state_dict(), before_initial)
    due, _ = short_run(tmp_path / "b", 300)
    assert same(due.learner.target.state_dict(), due.learner.online.state_dict())
    polyak, polyak_initial = short_run(tmp_path / "c", 300, tau=0.5)
    target, online = polyak.learner.target.state_dict(), polyak.learner.online.state_dict()
    for key in target:
        assert torch.allclose(target[key], 0.5 * polyak_initial[key] + 0.5 * online[key])


def test_short_cartpole_training_beats_a_random_policy(tmp_path):
    summary = run_training(
        TrainArgs(total_steps=4000, eval_every=2000, eval_episodes=5, run_dir=tmp_path),
        Common(quiet=True, seed=0),
    )
    agent = load(tmp_path / "model.safetensors")
    trained = np.mean(agent.evaluate(episodes=10, epsilon=0.0, seed=123))
    random_policy = torch.nn.Linear(4, 2)
    torch.nn.init.zeros_(random_policy.weight)
    random_returns = evaluate_policy(random_policy, agent.settings, 10, 1.0, 123, agent.device)
    assert np.mean(random_returns) < 40
    assert trained > 120, summary  # random: ~22
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    assert agent.meta["env"]["env_id"] == "CartPole-v1"
    assert agent.meta["hyper_parameters"]["lr"] == 2.3e-3


def test_double_dueling_n_step_learns(tmp_path):
    run_training(
        TrainArgs(
            total_steps=4000,
            eval_every=2000,
            eval_episodes=5,
            run_dir=tmp_path,
            double=True,
            dueling=True,
            n_step=3,
        ),
        Common(quiet=True, seed=1),
    )
    agent = load(tmp_path)
    assert agent.meta["config"].dueling and agent.meta["hyper_parameters"]["n_step"] == 3
    assert np.mean(agent.evaluate(episodes=10, epsilon=0.0, seed=7)) > 150


def test_resume_continues_the_run_with_its_replay_memory(tmp_path):
    args = TrainArgs(
        total_steps=1500,
        eval_every=500,
        eval_episodes=2,
        stop_return=0.0,
        save_replay=True,
        learning_starts=200,
        hidden=[16],
        run_dir=tmp_path,
    )
    run_training(args, Common(quiet=True))  # stops at the first evaluation (return >= 0)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["progress"]["step"] == 500
    assert (tmp_path / "replay.npz").exists()
    summary = run_training(TrainArgs(resume=tmp_path), Common(quiet=True))
    assert summary["steps"] == 1000
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [500, 1000]


def test_atari_loop_with_two_envs_ends_transitions_at_lost_lives(tmp_path):
    args = TrainArgs(
        env="ALE/Breakout-v5",
        total_steps=400,
        num_envs=2,
        buffer_size=1000,
        batch_size=8,
        learning_starts=200,
        eval_every=10**6,
        eval_episodes=1,
        run_dir=tmp_path,
        exist_ok=True,
    )
    args = resolve(args)
    run = Run(args, Common(quiet=True, seed=0), tmp_path)
    summary = run.train(Console(quiet=True))
    memory = run.memory
    assert memory.frames.shape == (2, 500, 84, 84) and memory.frames.dtype == np.uint8
    assert (memory.written >= 200).all()  # both environments wrote their own stream
    # a lost life ends the transition, and the game goes on: the next slot starts a transition
    lost_lives = memory.terminated & memory.valid & np.roll(memory.valid, -1, axis=1)
    assert lost_lives.sum() >= 2
    assert summary["updates"] == (400 - 200) // 4 + 1
    assert run.learner.online(torch.from_numpy(memory.sample(4).obs)).shape == (4, 4)


@pytest.mark.parametrize("double", [False, True])
def test_a_batched_round_equals_one_gradient_step_after_another(tmp_path, double):
    """A round draws all its batches at once (and, without Double DQN, values all their
    next states in one pass); the weights must be those of the step-by-step algorithm."""
    run, _ = short_run(tmp_path, 200, double=double)
    learner, memory, size = run.learner, run.memory, run.args.batch_size
    reference = copy.deepcopy(learner)
    rng_state = copy.deepcopy(memory.rng.bit_generator.state)
    batch = memory.sample(size * 5)
    memory.rng.bit_generator.state = rng_state
    losses = learner.train_round(memory, 5)

    params = reference.parameters
    for step in range(5):
        part = slice(step * size, (step + 1) * size)
        tensors = [
            torch.from_numpy(getattr(batch, name)[part])
            for name in ("obs", "actions", "returns", "next_obs", "dones", "discounts")
        ]
        obs, actions, returns, next_obs, dones, discounts = tensors
        online = reference.online if double else None
        targets = td_targets(returns, next_obs, dones, discounts, reference.target, online)
        q_taken = reference.online(obs).gather(1, actions[:, None]).squeeze(1)
        loss = td_loss(q_taken, targets, "huber")
        reference.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, run.args.max_grad_norm)
        reference.optimizer.step()
        assert losses[step].item() == pytest.approx(loss.item(), rel=1e-5)
    for ours, theirs in zip(learner.online.parameters(), params, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert learner.updates == reference.updates + 5


@pytest.mark.parametrize(
    ("env", "asked", "expected"),
    [("ALE/Pong-v5", None, 1.5e-4), ("CartPole-v1", None, 1e-8), ("ALE/Pong-v5", 1e-6, 1e-6)],
)
def test_adam_epsilon_follows_the_environment_unless_asked(env, asked, expected):
    args = TrainArgs(env=env, adam_eps=asked)
    args = resolve(args)
    config = (
        QNetworkConfig("nature", 6, in_channels=4, frame_size=84)
        if env.startswith("ALE/")
        else QNetworkConfig("mlp", 2, obs_dim=4, hidden=[8])
    )
    learner = Learner.create(config, args, torch.device("cpu"))
    assert learner.optimizer.param_groups[0]["eps"] == expected


def test_sigterm_finishes_the_step_saves_the_state_and_resumes(tmp_path, monkeypatch):
    """SIGTERM (like Ctrl-C) during training: the step under way is finished, the state
    saved, exit code 130, the signal handlers restored; --resume goes on to the end."""
    import os
    import signal

    from lbdl_apps.dqn import agent

    calls = []

    def update_target(*args):
        calls.append(1)
        if len(calls) == 30:  # the target is updated every 10 steps: at step 300
            os.kill(os.getpid(), signal.SIGTERM)
        return real_update(*args)

    real_update = agent.update_target
    monkeypatch.setattr(agent, "update_target", update_target)
    args = TrainArgs(total_steps=1000, learning_starts=100, hidden=[16], run_dir=tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run_training(args, Common(quiet=True))
    assert stopped.value.code == 130
    assert signal.getsignal(signal.SIGTERM) is before
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["progress"]["step"] == 300
    assert (tmp_path / "last.safetensors").exists()
    monkeypatch.setattr(agent, "update_target", real_update)
    summary = run_training(TrainArgs(resume=tmp_path), Common(quiet=True))
    assert summary["steps"] == 1000
    assert json.loads((tmp_path / "config.json").read_text())["args"]["hidden"] == "16"
