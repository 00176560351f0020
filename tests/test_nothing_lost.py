"""Nothing written before is lost, and every user error is one line (DESIGN.md), through the
real CLI of every app: results go to new numbered folders, an --out that holds results or is
a file is refused before any work, outputs named after inputs never collide, a write the
file system refuses is one line, damaged caches are made again, non-finite inputs and flags
are refused, and temporary files left by a killed process are cleaned."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import load_file

from lbdl_apps.core.outputs import atomic_path
from tests.cli_helpers import assert_user_error, lbdl

LEGACY = Path(__file__).parent / "data" / "legacy"
IMAGE, WAV = LEGACY / "input.png", LEGACY / "input.wav"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LBDL_DATA", str(tmp_path / "datasets"))


def ckpt(app: str) -> str:
    return str(LEGACY / f"{app}.safetensors")


# Every verb that writes into --out, with what it needs besides.
VERBS_WITH_OUT = {
    "classify predict": ["classify", "predict", ckpt("classify"), IMAGE],
    "classify evaluate": ["classify", "evaluate", ckpt("classify")],
    "denoise predict": ["denoise", "predict", ckpt("denoise"), IMAGE],
    "denoise evaluate": ["denoise", "evaluate", ckpt("denoise")],
    "segment predict": ["segment", "predict", ckpt("segment"), IMAGE],
    "segment evaluate": ["segment", "evaluate", ckpt("segment")],
    "detect predict": ["detect", "predict", ckpt("detect"), IMAGE],
    "detect evaluate": ["detect", "evaluate", ckpt("detect")],
    "detect export": ["detect", "export", ckpt("detect")],
    "asr transcribe": ["asr", "transcribe", ckpt("asr"), WAV],
    "asr evaluate": ["asr", "evaluate", ckpt("asr")],
    "clip zero-shot": ["clip", "zero-shot", ckpt("clip"), IMAGE, "--labels", "a,b"],
    "clip embed": ["clip", "embed", ckpt("clip"), IMAGE],
    "clip search": ["clip", "search", ckpt("clip"), IMAGE, "--text", "red"],
    "clip evaluate": ["clip", "evaluate", ckpt("clip")],
    "dqn evaluate": ["dqn", "evaluate", ckpt("dqn")],
    "diffusion sample": ["diffusion", "sample", ckpt("diffusion")],
    "diffusion evaluate": ["diffusion", "evaluate", ckpt("diffusion"), "--classifier", "c"],
}


@pytest.mark.parametrize("verb", VERBS_WITH_OUT)
def test_out_naming_a_file_is_one_line(tmp_path: Path, verb: str) -> None:
    (tmp_path / "taken").write_text("my notes")
    result = lbdl(*VERBS_WITH_OUT[verb], "--out", "taken")
    assert_user_error(result, "--out taken", "not a folder")
    assert (tmp_path / "taken").read_text() == "my notes"


@pytest.mark.parametrize("verb", ["classify predict", "asr transcribe", "detect export"])
def test_out_below_a_file_is_one_line(tmp_path: Path, verb: str) -> None:
    """An --out that cannot be made (as root, folder modes are not enforced: a path below a
    regular file is refused by every file system)."""
    (tmp_path / "file").write_text("")
    assert_user_error(lbdl(*VERBS_WITH_OUT[verb], "--out", "file/out"), "file/out")


def test_run_folder_below_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = lbdl("dqn", "train", "--total-steps", "100", "--run-dir", "file/run", "--quiet")
    assert_user_error(result, "file/run")


def test_predict_results_never_overwrite_earlier_ones(tmp_path: Path) -> None:
    predict = ["classify", "predict", ckpt("classify")]
    shutil.copy(IMAGE, tmp_path / "a.png")
    shutil.copy(IMAGE, tmp_path / "b.png")
    assert lbdl(*predict, "a.png", "b.png").exit_code == 0
    assert lbdl(*predict, "a.png").exit_code == 0
    first, second = tmp_path / "runs/classify/predict", tmp_path / "runs/classify/predict2"
    assert len((first / "predictions.csv").read_text().splitlines()) == 3  # kept: 2 rows
    assert len((second / "predictions.csv").read_text().splitlines()) == 2
    assert_user_error(lbdl(*predict, "a.png", "--out", first), "already holds results")
    assert len((first / "predictions.csv").read_text().splitlines()) == 3
    assert lbdl(*predict, "a.png", "--out", first, "--exist-ok").exit_code == 0


def test_evaluate_results_never_overwrite_earlier_ones(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(LEGACY / "dqn.safetensors", run / "model.safetensors")
    for _ in range(2):
        result = lbdl("dqn", "evaluate", run, "--episodes", "1")
        assert result.exit_code == 0, result.output
    assert (run / "evaluate" / "metrics.json").is_file()
    assert (run / "evaluate2" / "metrics.json").is_file()


def test_outputs_named_after_inputs_never_collide(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.open(IMAGE).rotate(90 if folder == "b" else 0).save(tmp_path / folder / "y.png")
    result = lbdl("denoise", "predict", ckpt("denoise"), "a/y.png", "b/y.png", "--out", "out")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["y_2_restored.png", "y_restored.png"]
    assert "2 images processed" in result.stdout
    one, two = (np.asarray(Image.open(tmp_path / "out" / n)) for n in written)
    assert one.shape != two.shape or not np.array_equal(one, two)
    for verb in ("segment predict", "asr transcribe"):
        args = VERBS_WITH_OUT[verb][:3]
        source = IMAGE if verb.startswith("segment") else WAV
        copies = [tmp_path / d / source.name for d in ("a", "b")]
        for copy in copies:
            shutil.copy(source, copy)
        result = lbdl(*args, *copies, "--out", f"out-{args[0]}")
        assert result.exit_code == 0, result.output
        stems = {p.name.split(".")[0].split("_mask")[0] for p in Path(f"out-{args[0]}").iterdir()}
        assert {"input", "input_2"} <= stems, stems


def test_a_failed_command_leaves_no_empty_folder(tmp_path: Path) -> None:
    result = lbdl("dqn", "train", "--env", "NoSuchGame-v9", "--total-steps", "10")
    assert result.exit_code == 2
    assert not (tmp_path / "runs").exists()
    result = lbdl("classify", "predict", ckpt("classify"), "missing.png")
    assert_user_error(result, "missing.png")
    assert not (tmp_path / "runs").exists()


def test_temporary_files_of_a_killed_writer_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".metrics.csv.abc123.tmp"
    stale.write_text("half written by a killed process")
    with atomic_path(tmp_path / "metrics.csv") as tmp:
        tmp.write_text("epoch\n1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_damaged_built_in_cache_is_made_again(tmp_path: Path) -> None:
    train = ["asr", "train", "--builtin", "digit", "--builtin-size", "10", "--epochs", "1",
             "--width", "16", "--depth", "1", "--heads", "2", "--quiet"]  # fmt: skip
    assert lbdl(*train, "--run-dir", "first").exit_code == 0
    for cached in (tmp_path / "datasets").rglob("*.npz"):
        cached.write_bytes(cached.read_bytes()[:100])  # half written by a killed process
    result = lbdl(*train, "--run-dir", "again")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert warnings and all(line.startswith("lbdl: warning: ") for line in warnings)
    assert len({line.split(": ")[2] for line in warnings}) == len(warnings)  # one per file
    first = load_file(tmp_path / "first" / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same data made again


def test_a_pretrained_file_with_python_objects_is_refused_in_one_line(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "weights.pth")
    result = lbdl("classify", "train", "--model", "resnet18", "--pretrained", "weights.pth",
                  "--epochs", "1", "--fraction", "0.01", "--quiet")  # fmt: skip
    line = assert_user_error(result, "weights.pth", "never loads")
    assert "weights_only" not in line
    assert not (tmp_path / "pwned").exists()


def test_non_finite_audio_is_a_bad_file_and_json_stays_valid(tmp_path: Path) -> None:
    wave, rate = soundfile.read(WAV, dtype="float32")
    wave[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", wave, rate, subtype="FLOAT")
    result = lbdl("asr", "transcribe", ckpt("asr"), WAV, "nan.wav", "--out", "t")
    assert result.exit_code == 3, result.output
    assert "nan.wav" in result.stderr and "not numbers" in result.stderr
    for path in (tmp_path / "t").glob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_flags_are_user_errors(value: str) -> None:
    result = lbdl("diffusion", "sample", ckpt("diffusion"), "--guidance", value)
    assert_user_error(result, "--guidance", "finite")


def test_library_warnings_are_one_line_of_ours(tmp_path: Path) -> None:
    """A JPEG whose EXIF block is cut short makes PIL warn (two lines of its own, with its
    source file): lbdl shows one line, once, and reads the pixels."""
    entry = struct.pack("<HHII", 0x010E, 2, 1000, 100)  # a description beyond the block
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    Image.new("RGB", (16, 16), (200, 30, 30)).save("exif.jpg", exif=b"Exif\x00\x00" + tiff)
    result = lbdl("classify", "predict", ckpt("classify"), "exif.jpg", "exif.jpg", "--out", "o")
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["lbdl: warning: Tag data larger than file. Skipping tag 270"], lines


@pytest.mark.parametrize("after", [0.5, 1.0, 1.5, 2.0, 4.0])
def test_sigterm_during_start_up_is_one_line_and_130(tmp_path: Path, after: float) -> None:
    """SIGTERM before training starts: while torch and the apps are imported, while the
    commands are built and the command line is read, and while the built-in shapes are made.
    Each time the process exits 130 itself (not killed by a signal) with one line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lbdl_apps", "classify", "train", "--model", "cnn",
         "--width", "4", "--depth", "1", "--quiet"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    time.sleep(after)
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lbdl: "), err


@pytest.fixture
def small_disk(tmp_path: Path):
    """A mount point factory for size-limited tmpfs file systems (root only; the tests that
    need one skip cleanly elsewhere)."""
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(point)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_a_full_disk_during_training_keeps_the_last_good_state(tmp_path: Path, small_disk):
    train = ["classify", "train", "--model", "cnn", "--width", "16", "--depth", "2",
             "--fraction", "0.02", "--quiet"]  # fmt: skip
    assert lbdl(*train, "--epochs", "1", "--run-dir", "probe").exit_code == 0
    files = [p for p in (tmp_path / "probe").iterdir() if p.is_file()]
    room = sum(p.stat().st_size for p in files) + (tmp_path / "probe/state.pt").stat().st_size // 2
    disk = small_disk(room // 1024 + 8)  # one epoch's files fit, not a second state.pt
    result = lbdl(*train, "--epochs", "3", "--run-dir", disk / "run")
    line = assert_user_error(result, "no space left on the device", "--resume")
    assert "state of an earlier epoch is kept" in line
    kept = tmp_path / "kept"
    shutil.copytree(disk / "run", kept)
    assert not list(kept.glob(".*.tmp"))  # no temporary left behind
    assert lbdl("classify", "train", "--resume", kept, "--quiet").exit_code == 0
    rows = (kept / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["1", "2", "3"]


def test_a_full_disk_while_writing_outputs_is_one_line(small_disk) -> None:
    disk = small_disk(12)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8))
    big.save("big.png")  # noise: its restored PNG does not compress below the room left
    result = lbdl("denoise", "predict", ckpt("denoise"), "big.png", "--out", disk / "out")
    assert_user_error(result, "no space left on the device")
