"""`lbdl dqn` verbs: play writes a playable video, evaluate reports mean ± std, and bad
inputs give one clear line with exit 2."""

from __future__ import annotations

import json

import cv2
import pytest
from PIL import Image

from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess
from tests.dqn.conftest import write_checkpoint


def test_play_records_a_playable_mp4_with_overlay(pong_checkpoint, tmp_path):
    video = tmp_path / "pong.mp4"
    result = lbdl("dqn", "play", pong_checkpoint, "--record", video, "--max-steps", "25")
    assert result.exit_code == 0, result.output
    capture = cv2.VideoCapture(str(video))
    frames = 0
    ok, image = capture.read()
    while ok:
        frames += 1
        shape = image.shape
        ok, image = capture.read()
    assert frames == 25
    assert shape[1] > 2 * 160  # the game enlarged, the Q-value panel beside it
    assert not list(tmp_path.glob(".*tmp*"))  # nothing left of the temporary file


def test_play_records_a_gif(pong_checkpoint, tmp_path):
    gif = tmp_path / "pong.gif"
    result = lbdl(
        "dqn", "play", pong_checkpoint, "--record", gif, "--max-steps", "5", "--no-overlay"
    )
    assert result.exit_code == 0, result.output
    with Image.open(gif) as image:
        assert image.size == (160, 210)
        total_ms = 0
        for index in range(image.n_frames):  # Pillow merges identical frames, adding up time
            image.seek(index)
            total_ms += image.info["duration"]
    assert abs(total_ms - 5 * 1000 / 30) <= 10  # GIF stores times in 10 ms steps


def test_evaluate_writes_mean_and_std(cartpole_checkpoint, tmp_path):
    out = tmp_path / "ev"
    result = lbdl(
        "dqn", "evaluate", cartpole_checkpoint, "--episodes", "3", "--greedy", "--out", out
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epsilon"] == 0 and len(metrics["returns"]) == 3
    assert f"{metrics['mean_return']:.2f} ± {metrics['std_return']:.2f}" in result.output


def test_predict_is_play(pong_checkpoint, tmp_path):
    help_text = lbdl("dqn", "predict", "--help")
    assert help_text.exit_code == 0, help_text.output
    assert "--record" in help_text.output and "--max-steps" in help_text.output
    gif = tmp_path / "pong.gif"
    result = lbdl("dqn", "predict", pong_checkpoint, "--record", gif, "--max-steps", "3")
    assert result.exit_code == 0, result.output
    assert "ALE/Pong-v5: returns" in result.output and gif.stat().st_size > 0


def test_play_without_a_window_or_video_is_a_user_error(pong_checkpoint):
    assert_user_error(lbdl("dqn", "play", pong_checkpoint), "--render human", "--record")


def test_evaluate_of_a_run_folder_writes_into_it(cartpole_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cartpole_checkpoint.rename(run / "model.safetensors")
    result = lbdl("dqn", "evaluate", run, "--episodes", "2")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["epsilon"] == 0.05 and metrics["env"] == "CartPole-v1"


def test_bad_hidden_widths_are_a_user_error(tmp_path):
    result = lbdl("dqn", "train", "--hidden", "64,x", "--run-dir", tmp_path / "run")
    assert_user_error(result, "--hidden 64,x", "256,256")


def test_config_file_sets_options_and_flags_win(tmp_path):
    config = tmp_path / "dqn.toml"
    config.write_text('total-steps = 200\nlearning_starts = 100\nhidden = "8"\nlr = 0.5\n')
    run = tmp_path / "run"
    flags = ["--config", config, "--lr", "0.01", "--eval-episodes", "1", "--run-dir", run]
    result = lbdl("dqn", "train", *flags, "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["args"]
    assert (saved["total_steps"], saved["hidden"], saved["lr"]) == (200, "8", 0.01)


def test_unknown_env_id_is_a_user_error(tmp_path):
    result = lbdl("dqn", "train", "--env", "ALE/NoSuchGame-v5", "--run-dir", tmp_path / "run")
    assert_user_error(result, "ALE/NoSuchGame-v5", "unknown environment")


def test_continuous_actions_are_a_user_error(tmp_path):
    result = lbdl("dqn", "train", "--env", "Pendulum-v1", "--run-dir", tmp_path / "run")
    assert_user_error(result, "Pendulum-v1", "discrete action space")


def test_checkpoint_for_another_action_space_is_a_user_error(pong_checkpoint):
    result = lbdl("dqn", "evaluate", pong_checkpoint, "--env", "ALE/Breakout-v5")
    assert_user_error(result, "ALE/Breakout-v5", "4 actions", "6", "ALE/Pong-v5")


def test_checkpoint_for_another_observation_is_a_user_error(tmp_path):
    acrobot = write_checkpoint(tmp_path / "acrobot.safetensors", "Acrobot-v1", (6,), 3)
    result = lbdl("dqn", "evaluate", acrobot, "--env", "MountainCar-v0")
    assert_user_error(result, "MountainCar-v0", "observations of shape (2,)", "(6,)")


def test_video_in_a_missing_folder_is_a_user_error(pong_checkpoint, tmp_path):
    video = tmp_path / "absent" / "out.mp4"
    result = lbdl("dqn", "play", pong_checkpoint, "--record", video)
    assert_user_error(result, str(video), "does not exist")
    bad_suffix = lbdl("dqn", "play", pong_checkpoint, "--record", tmp_path / "out.avi")
    assert_user_error(bad_suffix, "out.avi", ".mp4 or .gif")


def test_checkpoint_of_another_task_is_a_user_error(tmp_path):
    from lbdl_apps.core.checkpoint import save_checkpoint

    path = tmp_path / "classify.safetensors"
    save_checkpoint(path, {}, {"task": "classify", "config": {}})
    assert_user_error(lbdl("dqn", "evaluate", path), "classify", "not a 'dqn'")


def test_too_big_replay_memory_is_a_user_error(tmp_path):
    result = lbdl(
        "dqn",
        "train",
        "--env",
        "ALE/Pong-v5",
        "--buffer-size",
        str(10**9),
        "--run-dir",
        tmp_path / "run",
    )
    assert_user_error(result, "--buffer-size 1000000000", "GiB")


def test_finished_run_cannot_be_resumed(tmp_path):
    run = tmp_path / "run"
    result = lbdl(
        "dqn",
        "train",
        "--total-steps",
        "300",
        "--learning-starts",
        "100",
        "--eval-episodes",
        "1",
        "--hidden",
        "16",
        "--run-dir",
        run,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert_user_error(lbdl("dqn", "train", "--resume", run), "finished its 300 steps")


@pytest.mark.slow
def test_train_then_play_in_a_real_process(tmp_path):
    train = lbdl_subprocess(
        "dqn",
        "train",
        "--total-steps",
        "600",
        "--learning-starts",
        "200",
        "--eval-every",
        "300",
        "--eval-episodes",
        "2",
        "--hidden",
        "32,32",
        "--run-dir",
        "run",
        "--threads",
        "1",
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    assert "run folder: run" in train.stdout
    for name in ("model.safetensors", "last.safetensors", "state.pt", "learning_curve.png"):
        assert (tmp_path / "run" / name).exists(), name
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3
    missing = lbdl_subprocess("dqn", "play", "run", "--record", "no/such/dir/x.mp4", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
