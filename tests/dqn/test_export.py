"""`lbdl dqn export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2) on a CartPole
agent trained here: each format gives PyTorch's Q-values on another batch, ONNX Runtime
plays the same episodes as PyTorch, int8 (dynamic, torchao or ONNX Runtime) picks the same
greedy actions on most states the agent meets and keeps its return, an Atari Q-network
takes static int8 calibrated on the frames it plays, and the requests that cannot work are
one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.export import OnnxModule
from lbdl_apps.core.options import Common, Inference
from lbdl_apps.dqn import load
from lbdl_apps.dqn.cli import TrainArgs
from lbdl_apps.dqn.export import rollout
from lbdl_apps.dqn.task import train
from tests.cli_helpers import assert_user_error, lbdl

AGREEMENT = 0.85  # int8's greedy actions: the share of fp32's on the states it meets
RETURN_KEPT = 0.75  # int8's mean greedy return: at least this share of fp32's


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP agent trained 3000 steps on CartPole-v1 (~8 s): greedy returns ~140, a random
    policy's ~22."""
    folder = tmp_path_factory.mktemp("dqn_export")
    args = TrainArgs(env="CartPole-v1", total_steps=3000, learning_starts=500, eval_every=1500,
                     eval_episodes=3, hidden="64,64", run_dir=folder / "run")  # fmt: skip
    train(args, Common(device="cpu", threads=1, quiet=True, seed=0))
    return folder / "run" / "model.safetensors"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _evaluate(checkpoint: Path, out: str, *flags: str) -> dict:
    result = lbdl("dqn", "evaluate", checkpoint, "--episodes", "5", "--greedy", "--out", out,
                  *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((Path(out) / "metrics.json").read_text())


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_export_gives_pytorchs_q_values(trained: Path, tmp_path: Path, format: str) -> None:
    result = lbdl("dqn", "export", trained, "--format", format, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["q_network"]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-4
    assert entry["inputs"] == [{"name": "observations", "shape": ["batch", 4], "dtype": "float32"}]
    assert entry["outputs"][0]["shape"] == ["batch", 2]
    assert described["environment"] == "CartPole-v1" and len(described["actions"]) == 2
    assert described["observations"]["dtype"] == "float32"
    agent = load(trained)
    states = torch.from_numpy(rollout(agent.q_network, agent.settings, 5, 0.0, agent.device))
    path = tmp_path / "out" / entry["file"]
    if format == "onnx":
        exported = OnnxModule(path, ["observations"], ["q_values"])
    elif format == "torchscript":
        exported = torch.jit.load(str(path))
    else:
        exported = torch.export.load(str(path)).module()
    with torch.no_grad():  # 5 states: another batch than the sample's 2
        torch.testing.assert_close(exported(states), agent.q_network(states), atol=1e-4, rtol=1e-4)


def test_onnx_runtime_plays_the_same_episodes(trained: Path) -> None:
    ours = _evaluate(trained, "torch")
    theirs = _evaluate(trained, "ort", "--runtime", "onnxruntime")
    assert theirs["returns"] == ours["returns"]
    assert ours["mean_return"] > 50  # trained: a random policy scores ~22
    assert (trained.parent / "model.safetensors.exported" / "q_network.onnx").exists()


def test_play_through_onnx_runtime_draws_the_same_game(pong_checkpoint: Path) -> None:
    """An Atari Q-network (CartPole's renderer, pygame, is not a dependency): the same
    frames, Q-value bars included."""
    for name, extra in [("torch", []), ("ort", ["--runtime", "onnxruntime"])]:
        result = lbdl("dqn", "play", pong_checkpoint, "--record", f"{name}.gif",
                      "--max-steps", "12", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
    with Image.open("torch.gif") as ours, Image.open("ort.gif") as theirs:
        assert ours.n_frames == theirs.n_frames
        for index in range(ours.n_frames):
            ours.seek(index)
            theirs.seek(index)
            assert np.array_equal(
                np.asarray(ours.convert("RGB")), np.asarray(theirs.convert("RGB"))
            )


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_int8_keeps_the_greedy_actions(trained: Path, runtime: str) -> None:
    """Dynamic int8 of the linear layers (torchao or ONNX Runtime): the actions change only
    on states whose two Q-values fp32 itself barely tells apart (within twice int8's largest
    error). Measured on an agent trained with these settings, on 1000 states: 90.5%
    (torchao) and 91.7% (ONNX Runtime) of the actions agree; 10 greedy episodes return 147.9
    and 146.7 against fp32's 136.9."""
    fp32 = load(trained)
    int8 = load(trained, inference=Inference(runtime=runtime, quantize="int8"))
    states = torch.from_numpy(rollout(fp32.q_network, fp32.settings, 400, 0.05, fp32.device, 5))
    with torch.no_grad():
        q, q8 = fp32.q_network(states), int8.q_network(states)  # (400, 2) each
    assert not torch.equal(q, q8)  # int8 did run
    error = float((q - q8).abs().max())
    agree = q.argmax(1) == q8.argmax(1)
    assert float(agree.float().mean()) >= AGREEMENT
    gap = (q[:, 0] - q[:, 1]).abs()  # (400,): how clearly fp32 prefers its action
    assert all(float(g) <= 2 * error for g in gap[~agree])
    ours = _evaluate(trained, f"fp32-{runtime}", "--runtime", runtime)["mean_return"]
    theirs = _evaluate(trained, f"int8-{runtime}", "--runtime", runtime, "--quantize", "int8")
    assert theirs["mean_return"] >= RETURN_KEPT * ours, (theirs["mean_return"], ours)


def test_atari_takes_static_int8_calibrated_on_played_frames(pong_checkpoint: Path) -> None:
    """The Nature CNN's convolutions do most of its multiply-adds: static int8 through ONNX
    Runtime, calibrated on 256 frames the agent meets playing Pong."""
    result = lbdl("dqn", "export", pong_checkpoint, "--quantize", "int8", "--out", "int8")
    assert result.exit_code == 0, result.output
    described = json.loads(Path("int8/model.json").read_text())
    assert described["calibration"].startswith("256 observations of ALE/Pong-v5")
    entry = described["graphs"]["q_network"]
    assert entry["int8"] and entry["inputs"][0]["dtype"] == "uint8"
    assert entry["inputs"][0]["shape"] == ["batch", 4, 84, 84]
    # untrained, its Q-values (~0.03) are mostly biases: int8's error measured 0.007; on an
    # agent trained 8000 steps on Pong (minutes, not trained here), 0.0004 of 0.08
    assert 0 < entry["max_abs_diff_vs_pytorch"] < 0.5 * entry["largest_output"]
    result = lbdl("dqn", "evaluate", pong_checkpoint, "--quantize", "int8", "--runtime", "torch")
    assert_user_error(result, "--quantize int8 --runtime torch", "convolutional")
    for env, names in [("CartPole-v1", ["Atari game"]), ("ALE/Breakout-v5", ["4 actions"])]:
        result = lbdl("dqn", "export", pong_checkpoint, "--quantize", "int8", "--calibrate", env)
        assert_user_error(result, f"--calibrate {env}", *names)


def test_requests_that_cannot_work(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        (["export", trained, "--format", "tflite"], ["--format tflite"]),
        (["export", trained, "--format", "torchscript", "--quantize", "int8"], ["--format onnx"]),
        (["export", trained, "--quantize", "int4"], ["--quantize int4", "int8"]),
        (["evaluate", trained, "--runtime", "tensorrt"], ["--runtime tensorrt"]),
        (["evaluate", trained, "--runtime", "onnxruntime", "--compile"], ["--compile"]),
        (["evaluate", trained, "--calibrate", "CartPole-v1"], ["--calibrate", "--quantize int8"]),
        (["export", trained, "--quantize", "int8", "--calibrate", "CartPole-v1"],
         ["--calibrate CartPole-v1", "dynamic int8"]),
    ]  # fmt: skip
    for args, names in cases:
        assert_user_error(lbdl("dqn", *args), *names)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [export] extra were missing
    result = lbdl("dqn", "evaluate", trained, "--runtime", "onnxruntime", "--out", "elsewhere")
    assert_user_error(result, "onnxruntime is not installed", "lbdl-apps[export]")


def test_recording_without_the_renderer_is_one_line(trained: Path) -> None:
    """CartPole draws with pygame, which is not a dependency of lbdl."""
    if importlib.util.find_spec("pygame") is not None:
        pytest.skip("pygame is installed here")
    result = lbdl("dqn", "play", trained, "--record", "cartpole.gif", "--max-steps", "3")
    assert_user_error(result, "--record", "pygame is not installed")
    assert not Path("cartpole.gif").exists()
