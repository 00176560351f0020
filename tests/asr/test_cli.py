"""`lbdl asr` from the command line: transcription end to end on real wav files in a
subprocess, output formats, the no-speech threshold, and the rules for bad input
(DESIGN.md: a user error is one line and exit 2; a batch names each bad file and exits 3)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lbdl_apps.asr.adapt import token_prior
from lbdl_apps.asr.api import TASK, Segment, Transcript, load
from lbdl_apps.asr.model import build_model, default_config
from lbdl_apps.asr.outputs import to_srt, to_vtt
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.checkpoint import read_checkpoint, save_checkpoint
from tests.asr.test_audio import unsupported_wav
from tests.cli_helpers import assert_user_error, lbdl, lbdl_subprocess


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def untrained(path: Path, frontend: str = "conv1d") -> Path:
    """An (untrained) recognizer saved as `train` saves it: weights, config, tokenizer."""
    tokenizer = TextTokenizer.train(["one two three", "good morning"], vocab_size=280)
    config = default_config("nano", tokenizer.vocab_size, max_tokens=12, frontend=frontend)
    config = replace(config, dim=32, heads=2, encoder_depth=1, decoder_depth=1)
    torch.manual_seed(0)
    meta = {"task": TASK, "config": asdict(config), "tokenizer": tokenizer.to_json(), "data": None}
    save_checkpoint(path, build_model(config).state_dict(), meta)
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return untrained(tmp_path / "model.safetensors")


def speech_like(path: Path, seconds: float, rate: int = 16_000, channels: int = 1) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    wave = wave + 0.01 * rng.standard_normal(len(t))
    soundfile.write(path, np.stack([wave] * channels, 1) if channels > 1 else wave, rate)
    return path


@pytest.mark.slow
def test_transcribe_end_to_end_in_a_subprocess(tmp_path: Path, checkpoint: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    speech_like(clips / "short.wav", 1.0)
    speech_like(clips / "stereo_44k.wav", 2.0, rate=44_100, channels=2)
    speech_like(tmp_path / "long.flac", 61.0, rate=8000)  # three 30-second windows
    (clips / "not_audio.wav").write_text("hello")
    (clips / "zero_bytes.wav").write_bytes(b"")
    soundfile.write(clips / "empty.wav", np.zeros(0), 16_000)
    (clips / "odd_format.wav").write_bytes(unsupported_wav())
    done = lbdl_subprocess(
        "asr", "transcribe", checkpoint, clips, tmp_path / "long.flac", "--out", tmp_path / "out",
        cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    for bad in ("not_audio.wav", "zero_bytes.wav", "empty.wav", "odd_format.wav"):
        assert bad in done.stderr
    assert "Traceback" not in done.stderr
    assert "3 files processed, 4 failed" in done.stdout
    out = tmp_path / "out"
    for name in ("short", "stereo_44k", "long"):
        assert {p.suffix for p in out.glob(f"{name}.*")} == {".txt", ".json", ".srt", ".vtt"}
    long = json.loads((out / "long.json").read_text())
    assert [(s["start"], s["end"]) for s in long["segments"]] == [(0, 30), (30, 60), (60, 61)]
    assert long["duration"] == pytest.approx(61.0)
    assert (out / "long.vtt").read_text().startswith("WEBVTT")


def test_predict_is_transcribe_and_the_no_speech_threshold(
    tmp_path: Path, checkpoint: Path
) -> None:
    clip = speech_like(tmp_path / "a.wav", 1.5)
    result = lbdl("asr", "predict", checkpoint, clip, "--out", "o", "--format", "json",
                  "--no-speech-threshold", "1.0")  # fmt: skip
    assert result.exit_code == 0, result.output
    loud = json.loads(Path("o/a.json").read_text())
    assert loud["text"]  # an untrained model babbles: the threshold lets it through
    assert not list(Path("o").glob("a.txt"))  # only the asked format
    result = lbdl("asr", "transcribe", checkpoint, tmp_path / "*.wav", "--out", "o2",
                  "--format", "txt,json", "--no-speech-threshold", "0.0")  # fmt: skip
    assert result.exit_code == 0, result.output
    silent = json.loads(Path("o2/a.json").read_text())
    assert silent["text"] == "" and Path("o2/a.txt").read_text() == "\n"
    assert silent["segments"][0]["no_speech_prob"] > 0.0


def test_batched_transcription_equals_one_file_at_a_time(tmp_path: Path, checkpoint) -> None:
    paths = [speech_like(tmp_path / f"{i}.wav", s) for i, s in enumerate([0.5, 1.7, 1.1])]
    recognizer = load(checkpoint)
    together = [t.text for t in recognizer.transcribe(paths, batch_size=3)]
    alone = [recognizer.transcribe([p])[0].text for p in paths]
    assert together == alone
    beams = recognizer.transcribe(paths, beam_size=3)
    assert len(beams) == 3 and all(isinstance(t.text, str) for t in beams)


def test_transcribe_adapt_to_the_batch(tmp_path: Path) -> None:
    """--adapt re-estimates the batch norms on the readable files first; a bad file is still
    named once and the batch exits 3; a model without batch norm is a user error."""
    conv2d = untrained(tmp_path / "conv2d.safetensors", "conv2d")
    clips = [speech_like(tmp_path / f"{i}.wav", s) for i, s in enumerate([0.5, 1.3])]
    (tmp_path / "bad.wav").write_text("not audio")
    result = lbdl("asr", "transcribe", conv2d, *clips, tmp_path / "bad.wav", "--adapt",
                  "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.stderr.count("bad.wav") == 1
    assert (tmp_path / "out" / "0.json").is_file() and (tmp_path / "out" / "1.txt").is_file()
    stored = load(conv2d).model.encoder.frontend.norms[0].running_mean
    adapted = load(conv2d)
    adapted.transcribe(clips, adapt=True)
    assert not torch.equal(adapted.model.encoder.frontend.norms[0].running_mean, stored)
    assert_user_error(lbdl("asr", "transcribe", conv2d, tmp_path / "bad.wav", "--adapt"),
                      "--adapt", "no audio")  # fmt: skip
    assert_user_error(lbdl("asr", "transcribe", untrained(tmp_path / "conv1d.safetensors"),
                           clips[0], "--adapt"), "--adapt", "no batch norm")  # fmt: skip


def test_transcribe_adapt_passes(tmp_path: Path) -> None:
    """--adapt-passes adapts the batch norms, then tunes the encoder for that many passes
    (implying --adapt; a model without batch norm gets the passes alone); a checkpoint
    without the token prior of its training texts is a user error."""
    conv2d = untrained(tmp_path / "conv2d.safetensors", "conv2d")
    clips = [speech_like(tmp_path / f"{i}.wav", s) for i, s in enumerate([0.5, 1.3])]
    assert_user_error(lbdl("asr", "transcribe", conv2d, *clips, "--adapt-passes", "2"),
                      "--adapt-passes", "no token prior")  # fmt: skip
    state, meta = read_checkpoint(conv2d)
    tokenizer = TextTokenizer.from_json(meta["tokenizer"])
    meta["token_prior"] = token_prior(tokenizer, ["one two three", "good morning"])
    save_checkpoint(conv2d, state, meta)
    result = lbdl("asr", "transcribe", conv2d, *clips, "--adapt-passes", "2",
                  "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "1.txt").is_file()
    conv1d = untrained(tmp_path / "conv1d.safetensors")  # no batch norm: the passes alone
    state, meta = read_checkpoint(conv1d)
    save_checkpoint(conv1d, state, meta | {"token_prior": token_prior(tokenizer, ["one two"])})
    assert lbdl("asr", "transcribe", conv1d, clips[0], "--adapt-passes", "1").exit_code == 0


def test_the_checkpoint_preprocessing_gives_the_features(tmp_path: Path) -> None:
    """A recognizer computes its features as its training did: with the normalization stored
    in the checkpoint (none stored: Whisper scaling, as before the option existed)."""
    from lbdl_apps.asr.audio import log_mel, read_audio

    path = untrained(tmp_path / "plain.safetensors")
    wave = read_audio(speech_like(tmp_path / "a.wav", 0.5))
    mel, frames = load(path).features([wave])
    assert torch.equal(mel[0], log_mel(wave, "whisper")) and frames.tolist() == [mel.shape[-1]]
    state, meta = read_checkpoint(path)
    meta["preprocessing"] = {"normalization": "level-mean"}
    save_checkpoint(path, state, meta)
    mel, _ = load(path).features([wave])
    assert torch.equal(mel[0], log_mel(wave, "level-mean"))
    assert not torch.allclose(mel[0], log_mel(wave, "whisper"))


def test_subtitle_formats() -> None:
    transcript = Transcript(
        "x.wav", "hello there", 62.5,
        [Segment(0.0, 30.0, "hello", -0.1, 0.0), Segment(30.0, 60.0, "", -1, 0.9),
         Segment(60.0, 62.5, "there", -0.2, 0.1)],
    )  # fmt: skip
    assert to_srt(transcript) == (
        "1\n00:00:00,000 --> 00:00:30,000\nhello\n\n2\n00:01:00,000 --> 00:01:02,500\nthere\n\n"
    )
    assert to_vtt(transcript).splitlines()[:4] == [
        "WEBVTT", "", "00:00:00.000 --> 00:00:30.000", "hello",
    ]  # fmt: skip


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, checkpoint: Path) -> None:
    clip = speech_like(tmp_path / "a.wav", 0.5)
    assert_user_error(lbdl("asr", "transcribe", tmp_path / "none.safetensors", clip),
                      "none.safetensors", "no such file")  # fmt: skip
    assert_user_error(lbdl("asr", "transcribe", checkpoint, clip, "--format", "docx"),
                      "--format docx")  # fmt: skip
    assert_user_error(lbdl("asr", "transcribe", checkpoint, tmp_path / "missing.wav"),
                      "missing.wav", "no such file")  # fmt: skip
    (tmp_path / "pictures").mkdir()
    assert_user_error(lbdl("asr", "transcribe", checkpoint, tmp_path / "pictures"),
                      "pictures", "no audio files")  # fmt: skip
    result = lbdl("asr", "transcribe", checkpoint, clip, tmp_path / "b.wav", "--strict")
    assert_user_error(result, "b.wav")
    (tmp_path / "b.wav").write_text("not audio")
    assert_user_error(lbdl("asr", "transcribe", checkpoint, tmp_path / "b.wav", "--strict"),
                      "b.wav", "not a readable audio file")  # fmt: skip
    assert_user_error(lbdl("asr", "train", "--data", tmp_path / "nowhere"), "nowhere")
    assert_user_error(lbdl("asr", "train", "--data", clip), "a manifest must be")
    assert_user_error(lbdl("asr", "train", "--model", "huge"), "--model huge")
    assert_user_error(lbdl("asr", "train", "--split-by", "age"), "--split-by age")
    assert_user_error(lbdl("asr", "train", "--frontend", "lstm"), "--frontend lstm")
    assert_user_error(lbdl("asr", "evaluate", checkpoint, "--split", "dev"), "--split dev")
    (tmp_path / "m.csv").write_text("audio,text\na.wav,hi\n")
    assert_user_error(lbdl("asr", "train", "--data", tmp_path / "m.csv"), "cannot split 1 item")
    assert_user_error(lbdl("asr", "evaluate", checkpoint, "--data", tmp_path / "m.csv",
                           "--split", "test"), "--split test", "no test split")  # fmt: skip


def test_predict_and_transcribe_help() -> None:
    for name in ("predict", "transcribe"):
        result = lbdl("asr", name, "--help")
        assert result.exit_code == 0, result.output
        assert "--beam-size" in result.output and "--adapt-passes" in result.output


def speakers_folder(root: Path, speakers: dict[str, int]) -> Path:
    """A folder of wav + txt pairs, one subfolder (speaker) per name with so many clips."""
    for speaker, count in speakers.items():
        (root / speaker).mkdir(parents=True)
        for i in range(count):
            speech_like(root / speaker / f"{i}.wav", 0.3 + 0.05 * i)
            (root / speaker / f"{i}.txt").write_text("one two" if i % 2 else "good morning")
    return root


def test_evaluate_splits_mean_what_split_names_says(tmp_path: Path, checkpoint: Path) -> None:
    """Without --data: the checkpoint's held-out test split, or the one asked for (all: every
    utterance); with --data (a new speaker's folder): all of it, whatever its size."""
    from lbdl_apps.asr.data import load_speech_data

    own = speakers_folder(tmp_path / "own", {"ann": 8, "bob": 8})
    state, meta = read_checkpoint(checkpoint)
    settings = {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}
    save_checkpoint(checkpoint, state, meta | settings | {"data": str(own)})
    data = load_speech_data(str(own), seed=0, val_fraction=0.25, test_fraction=0.25)
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test), "all": 16}
    assert sizes["test"] and sizes["val"] and sizes["train"] < 16

    def evaluated(*extra: str | Path) -> dict:
        result = lbdl("asr", "evaluate", checkpoint, "--out", "ev", "--exist-ok", "--show", "0",
                      *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(Path("ev/metrics.json").read_text())

    found = evaluated()
    assert (found["split"], found["utterances"]) == ("test", sizes["test"])
    assert {"wer", "cer", "beam_size", "adapt", "adapt_passes"} <= set(found)
    for split in ("all", "train", "val", "test"):
        found = evaluated("--split", split)
        assert (found["split"], found["utterances"]) == (split, sizes[split])
    new = speakers_folder(tmp_path / "new", {"cid": 7})
    found = evaluated("--data", new)
    assert (found["split"], found["utterances"], found["data"]) == ("all", 7, str(new))
    assert len(Path("ev/results.csv").read_text().splitlines()) == 1 + 7
    found = evaluated("--data", new, "--split", "all")
    assert (found["split"], found["utterances"]) == ("all", 7)
