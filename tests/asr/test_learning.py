"""`lbdl asr` learns (book 6.5): a short training on built-in synthesized digits lowers the
loss and transcribes held-out synthesized digits far better than chance."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lbdl_apps.asr.cli import EvaluateArgs, TrainArgs
from lbdl_apps.asr.task import evaluate
from lbdl_apps.asr.task import train as run_training
from lbdl_apps.core.checkpoint import read_checkpoint
from lbdl_apps.core.options import Common


def test_short_training_on_builtin_digits_beats_chance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = TrainArgs(
        builtin="digit",
        builtin_size=600,  # + 60 validation and 60 test clips, drawn apart
        width=64,
        depth=1,
        heads=2,
        epochs=5,
        batch_size=8,
        lr=3e-3,
        warmup=0.5,
        vocab_size=300,
        max_tokens=8,
        label_smoothing=0.0,
        run_dir=run,
        exist_ok=True,
    )
    scores = run_training(args, Common(quiet=True, threads=1))
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["train_loss"]) < 0.75 * float(rows[0]["train_loss"])
    # chance: guessing the most frequent digit gives a WER of about 0.9
    assert scores["test_wer"] < 0.5, scores
    checkpoint = str(run / "model.safetensors")
    options = EvaluateArgs(checkpoint=checkpoint, out=tmp_path / "eval", split="test", beam_size=2)
    result = evaluate(options, Common(threads=1))
    evaluated, rows_scored, folder = result.scores, result.rows, result.folder
    assert evaluated["wer"] == pytest.approx(scores["test_wer"], abs=0.15)
    assert len(rows_scored) == 60 and (folder / "results.csv").is_file()
    prior = read_checkpoint(run / "model.safetensors")[1]["token_prior"]  # for --adapt-passes
    assert sum(prior.values()) == 600 * 2  # each digit's token and the end token


@pytest.mark.parametrize("frontend", ["conv1d", "conv2d"])
def test_overfits_a_handful_of_real_spoken_digits(shared_data: Path, frontend: str) -> None:
    """20 FSDD recordings (two of each digit, one speaker) are learnt to zero WER: the
    encoder's features, through either front end, carry the audio to the decoder."""
    import random

    import torch

    from lbdl_apps.asr.data import SpeechDataset, make_collate, read_fsdd
    from lbdl_apps.asr.decode import greedy_decode
    from lbdl_apps.asr.loss import speech_loss
    from lbdl_apps.asr.metrics import word_and_char_error
    from lbdl_apps.asr.model import build_model, default_config
    from lbdl_apps.asr.tokenizer import TextTokenizer

    files = sorted((shared_data / "fsdd").rglob("*_jackson_*.wav"))
    utterances = read_fsdd([f for f in files if int(f.stem.split("_")[2]) < 2])
    assert len(utterances) == 20
    tokenizer = TextTokenizer.train((u.text for u in utterances), 64)
    dataset = SpeechDataset(utterances, tokenizer)
    items = [dataset[i] for i in range(len(dataset))]
    collate = make_collate(tokenizer.sot, tokenizer.pad)
    torch.manual_seed(0)
    random.seed(0)
    config = default_config("nano", tokenizer.vocab_size, 8, frontend=frontend)
    model = build_model(replace(config, dim=64, encoder_depth=1, decoder_depth=1, heads=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss, _ = speech_loss(model, collate(random.sample(items, 8)))
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch = collate(items)
    found = greedy_decode(model, batch.mel, batch.frames, tokenizer.specials, 8)
    hyps = [tokenizer.decode(h.tokens) for h in found]
    assert loss.item() < 0.05 * first
    assert word_and_char_error([u.text for u in utterances], hyps)["wer"] == 0.0, hyps
    check_adaptation(model, tokenizer, utterances, frontend)


def check_adaptation(model, tokenizer, utterances: list, frontend: str) -> None:
    """Test-time adaptation re-estimates the batch-norm statistics from the audio alone: with
    the stored statistics spoilt, transcription fails, and adapting to the clips (without
    their texts) brings it back. A model without batch norm says so."""
    from lbdl_apps.asr.api import Recognizer
    from lbdl_apps.asr.metrics import word_and_char_error
    from lbdl_apps.core.errors import LbdlError

    recognizer = Recognizer(model, {"tokenizer": tokenizer.to_json()}, torch.device("cpu"))
    waves = [u.load() for u in utterances]
    references = [u.text for u in utterances]

    def wer() -> float:
        found = recognizer.transcribe_waves(waves)
        return word_and_char_error(references, [s[0].text for s in found])["wer"]

    if frontend == "conv1d":
        with pytest.raises(LbdlError, match="no batch norm"):
            recognizer.adapt(waves)
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.running_mean += 2.0
        norm.running_var *= 5.0
    assert wer() > 0.5
    assert recognizer.adapt(waves, batch_size=8) == len(waves)
    assert all(not norm.training and norm.momentum == 0.1 for norm in norms)
    assert wer() <= 0.1
    check_information_maximisation(recognizer, waves, references)


def check_information_maximisation(recognizer, clean: list, references: list[str]) -> None:
    """On the clips with noise added (0 dB, another microphone), passes of information
    maximisation after the batch norms' adaptation lower their loss without raising the WER,
    change the encoder alone and leave every parameter trainable again. Without a token prior
    in the checkpoint, the user is told."""
    import numpy as np

    from lbdl_apps.asr.adapt import maximize_information, token_prior
    from lbdl_apps.asr.metrics import word_and_char_error
    from lbdl_apps.core.errors import LbdlError

    rng = np.random.default_rng(0)
    waves = [w + rng.normal(0, w.std(), len(w)).astype(np.float32) for w in clean]

    def wer() -> float:
        found = recognizer.transcribe_waves(waves)
        return word_and_char_error(references, [s[0].text for s in found])["wer"]

    with pytest.raises(LbdlError, match="no token prior"):
        maximize_information(recognizer, waves, passes=1)
    recognizer.meta["token_prior"] = token_prior(recognizer.tokenizer, references)
    model = recognizer.model
    recognizer.adapt(waves, batch_size=10)
    adapted = wer()
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    losses = maximize_information(recognizer, waves, passes=6, lr=1e-4, batch_size=10)
    assert len(losses) == 6 and sum(losses[-3:]) / 3 < 0.9 * losses[0], losses
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder.items())
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    assert wer() <= adapted


def test_the_same_seed_gives_the_same_weights_from_the_api(tmp_path: Path) -> None:
    """run_training seeds before it builds the model: whatever random numbers were drawn
    before, two runs with one seed end with identical weights."""
    weights = []
    for i, draws in enumerate((0, 5)):
        torch.rand(draws)  # another caller's use of the generator
        args = TrainArgs(
            builtin="digit", builtin_size=40, width=32, depth=1, heads=2, epochs=1,
            batch_size=8, vocab_size=270, max_tokens=8, speed=0.1, noise_snr=10.0,
            freq_masks=1, time_masks=1, run_dir=tmp_path / f"run{i}", exist_ok=True,
        )  # fmt: skip
        run_training(args, Common(quiet=True, threads=1, seed=3))
        weights.append(load_file(str(tmp_path / f"run{i}" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
