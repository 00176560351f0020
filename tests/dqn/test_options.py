"""The options of `lbdl dqn`: declared once in dataclasses, checked alike from Python and
the command line; None is the environment's default."""

from __future__ import annotations

import pytest

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.dqn.cli import PlayArgs, TrainArgs
from lbdl_apps.dqn.defaults import hyper_parameters, resolve


def test_environment_defaults_fill_only_what_was_not_asked():
    cartpole = resolve(TrainArgs(lr=1e-3))
    assert (cartpole.lr, cartpole.batch_size, cartpole.hidden) == (1e-3, 64, "256,256")
    acrobot = resolve(TrainArgs(env="Acrobot-v1"))
    assert (acrobot.gradient_steps, acrobot.target_update, acrobot.train_freq) == (-1, 250, 4)
    pong = resolve(TrainArgs(env="ALE/Pong-v5", eval_every=10))
    assert (pong.learning_starts, pong.eval_every, pong.widths) == (80_000, 10, [512])
    assert resolve(pong) == pong


def test_hidden_widths_as_text_or_a_list():
    assert TrainArgs(hidden=[64, 32]).hidden == "64,32"
    assert TrainArgs(hidden="64,32").widths == [64, 32]
    assert hyper_parameters(resolve(TrainArgs(hidden="8"))).get("hidden") == [8]
    for bad in ("", "64,x", "0", "64,-1"):
        with pytest.raises(LbdlError, match="use layer widths like 256,256"):
            TrainArgs(hidden=bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tau": 0.0}, "--tau 0.0: must be in (0, 1]"),
        ({"gamma": 1.5}, "--gamma 1.5: must be at most 1.0"),
        ({"loss": "l1"}, "--loss l1: use huber or mse"),
        ({"sticky_actions": 1.0}, "--sticky-actions 1.0: must be in [0, 1)"),
        ({"gradient_steps": 0}, "--gradient-steps 0: use a positive number or -1"),
        ({"gradient_steps": -2}, "--gradient-steps -2: must be at least -1"),
        ({"total_steps": 0}, "--total-steps 0: must be at least 1"),
        ({"eval_epsilon": 2.0}, "--eval-epsilon 2.0: must be at most 1.0"),
    ],
)
def test_bad_values_are_user_errors_in_python_too(options, message):
    with pytest.raises(LbdlError) as error:
        TrainArgs(**options)
    assert str(error.value) == message


def test_play_needs_a_window_or_a_video():
    with pytest.raises(LbdlError, match="give --render human or --record"):
        PlayArgs(checkpoint="model.safetensors")
    with pytest.raises(LbdlError, match="the only window mode is 'human'"):
        PlayArgs(checkpoint="model.safetensors", render="rgb_array")
