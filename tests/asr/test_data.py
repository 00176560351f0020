"""Speech data of `lbdl asr`: the readers, the built-in synthesized speech, augmentation and
batching (book 6.5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lbdl_apps.asr.audio import SAMPLE_RATE, log_mel, warp_bands
from lbdl_apps.asr.augment import Augment
from lbdl_apps.asr.builtin import make_speech
from lbdl_apps.asr.data import (
    SpeechDataset,
    load_speech_data,
    make_collate,
    normalize_text,
    read_dataset,
)
from lbdl_apps.asr.tokenizer import TextTokenizer
from lbdl_apps.core.errors import LbdlError


def tone(path: Path, seconds: float = 0.3, rate: int = 8000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    return path


def test_manifests_csv_and_jsonl(tmp_path: Path) -> None:
    tone(tmp_path / "clips" / "a.wav")
    tone(tmp_path / "clips" / "b.flac")
    (tmp_path / "m.csv").write_text("audio,text,speaker\nclips/a.wav,hello there,ann\n")
    rows = [{"path": "clips/b.flac", "transcript": "Good Bye"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    found, kind = read_dataset(str(tmp_path / "m.csv"))
    assert kind == "manifest" and found[0].text == "hello there" and found[0].speaker == "ann"
    assert found[0].path == tmp_path / "clips" / "a.wav"
    found, _ = read_dataset(str(tmp_path / "m.jsonl"))
    assert found[0].text == "Good Bye" and len(found[0].load()) == int(0.3 * SAMPLE_RATE)
    (tmp_path / "bad.csv").write_text("file_name,words\nx.wav,hi\n")
    with pytest.raises(LbdlError, match=r"row 1: needs a column named one of audio"):
        read_dataset(str(tmp_path / "bad.csv"))


def test_folders_of_pairs_librispeech_and_fsdd(tmp_path: Path) -> None:
    tone(tmp_path / "pairs" / "bob" / "x.wav")
    (tmp_path / "pairs" / "bob" / "x.txt").write_text("turn left\n")
    tone(tmp_path / "pairs" / "bob" / "no_transcript.wav")
    found, kind = read_dataset(str(tmp_path / "pairs"))
    assert kind == "pairs"
    assert [(u.text, u.speaker) for u in found] == [("turn left", "bob")]

    chapter = tmp_path / "libri" / "19" / "198"
    tone(chapter / "19-198-0000.flac")
    tone(chapter / "19-198-0001.flac")
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 BY JANE\n")
    found, kind = read_dataset(str(tmp_path / "libri"))
    assert kind == "librispeech" and [u.text for u in found] == ["NORTHANGER ABBEY", "BY JANE"]
    assert found[1].path == chapter / "19-198-0001.flac" and found[1].speaker == "19"

    for digit, speaker in [(3, "ann"), (7, "bob"), (0, "cid"), (1, "cid")]:
        tone(tmp_path / "fsdd" / f"{digit}_{speaker}_0.wav")
    found, kind = read_dataset(str(tmp_path / "fsdd"))
    assert kind == "fsdd" and [u.text for u in found] == ["zero", "one", "three", "seven"]
    data = load_speech_data(str(tmp_path / "fsdd"), split_by="speaker", test_speakers=["cid"])
    assert {u.speaker for u in data.test} == {"cid"} and len(data.test) == 2
    assert all(u.speaker != "cid" for u in data.train + data.val)
    with pytest.raises(LbdlError, match=r"--test-speakers: zed not in the data"):
        load_speech_data(str(tmp_path / "fsdd"), test_speakers=["zed"])


def test_the_readers_are_tried_in_order_and_listed_when_none_reads(tmp_path: Path) -> None:
    from lbdl_apps.asr.data import READERS

    assert READERS.names == ["manifest", "librispeech", "fsdd", "pairs"]
    tone(tmp_path / "mixed" / "3_ann_0.wav")  # FSDD names beside a transcript: a pair
    (tmp_path / "mixed" / "3_ann_0.txt").write_text("three")
    tone(tmp_path / "mixed" / "other.wav")
    (tmp_path / "mixed" / "other.txt").write_text("hello")
    found, kind = read_dataset(str(tmp_path / "mixed"))
    assert kind == "pairs" and [u.text for u in found] == ["three", "hello"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(LbdlError, match=r"no utterances found \(expected manifest: .*; pairs: "):
        read_dataset(str(tmp_path / "empty"))


def test_fsdd_split_by_speaker_on_the_real_data(shared_data: Path) -> None:
    data = load_speech_data(str(shared_data / "fsdd"), split_by="speaker", seed=3)
    assert len(data.test_speakers) == 1
    assert {u.speaker for u in data.test} == set(data.test_speakers)
    assert not {u.speaker for u in data.train} & set(data.test_speakers)
    assert len(data.train) + len(data.val) + len(data.test) == 2000


def test_bad_records_stop_training_unless_skipped(tmp_path: Path) -> None:
    tone(tmp_path / "d" / "good.wav")
    (tmp_path / "d" / "good.txt").write_text("fine")
    (tmp_path / "d" / "broken.wav").write_bytes(b"RIFF....")
    (tmp_path / "d" / "broken.txt").write_text("bad")
    with pytest.raises(LbdlError, match=r"1 bad record, first: .*broken\.wav"):
        load_speech_data(str(tmp_path / "d"), val_fraction=0.0, test_fraction=0.0)
    data = load_speech_data(str(tmp_path / "d"), val_fraction=0, test_fraction=0, skip_bad=True)
    assert [u.text for u in data.train] == ["fine"]


def test_builtin_speech_is_deterministic_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LBDL_DATA", str(tmp_path / "a"))
    waves, texts = make_speech(12, seed=5, silence=0.2)
    monkeypatch.setenv("LBDL_DATA", str(tmp_path / "b"))  # a fresh cache: synthesized again
    again, texts_again = make_speech(12, seed=5, silence=0.2)
    assert texts == texts_again and all(
        np.array_equal(a, b) for a, b in zip(waves, again, strict=True)
    )
    assert list((tmp_path / "b" / "asr-builtin").glob("*.npz"))
    assert make_speech(12, seed=6, silence=0.2)[1] != texts
    words = {w for t in texts for w in t.split()}
    assert words and "" in texts  # spoken words and noise-only clips
    for wave, text in zip(waves, texts, strict=True):
        assert wave.dtype == np.float32 and 0.3 < len(wave) / SAMPLE_RATE < 6
        peak = np.abs(wave).max()
        assert 0.2 < peak <= 1.0 if text else peak < 0.5


@pytest.mark.parametrize("factor", [0.85, 1.0, 1.2])
def test_band_warp_moves_a_formant_by_its_factor(factor: float) -> None:
    """Vocal tract length perturbation: a 1 kHz tone warped by `factor` peaks in the band
    where a tone of 1000 * factor Hz peaks; 1.0 leaves the spectrogram unchanged."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE

    def band_profile(hz: float) -> torch.Tensor:
        return log_mel(np.sin(2 * np.pi * hz * t).astype(np.float32), "whisper")

    warped = warp_bands(band_profile(1000.0), factor)
    assert warped.shape == (80, 100)
    assert int(warped.mean(-1).argmax()) == int(band_profile(1000.0 * factor).mean(-1).argmax())
    if factor == 1.0:
        assert torch.allclose(warped, band_profile(1000.0), atol=1e-6)
    else:
        assert int(warped.mean(-1).argmax()) != int(band_profile(1000.0).mean(-1).argmax())


def test_augmentation_and_batches() -> None:
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    faster = Augment(speed=0.2).wave(wave, np.random.default_rng(1))
    assert len(faster) != len(wave) and abs(len(faster) / len(wave) - 1) <= 0.21
    noisy = Augment(noise_snr=0.0).wave(wave, np.random.default_rng(1))
    assert len(noisy) == len(wave) and not np.allclose(noisy, wave)
    mel = torch.randn(80, 100) + 5
    masked = Augment(freq_masks=2, time_masks=2, freq_width=20).spectrogram(mel)
    assert (masked == 0).any() and masked.shape == mel.shape
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 100).expand(80, 100)  # a slow rise, stretched in time
    lengths = set()
    for _ in range(20):
        stretched = Augment(stretch=0.5).spectrogram(ramp)
        lengths.add(stretched.shape[-1])
        assert stretched.shape[0] == 80 and 100 / 1.5 - 1 <= stretched.shape[-1] <= 150 + 1
        assert stretched[:, 0].max() < 0.02 and stretched[:, -1].min() > 0.98
    assert min(lengths) < 90 and max(lengths) > 110
    warped = Augment(warp=0.2).spectrogram(mel)
    assert warped.shape == mel.shape and not torch.allclose(warped, mel)

    tokenizer = TextTokenizer.train(["one two", "three"], vocab_size=270)
    from lbdl_apps.asr.data import Utterance

    utterances = [Utterance("one two", wave=wave), Utterance("", wave=wave[:8000])]
    items = [SpeechDataset(utterances, tokenizer)[i] for i in range(2)]
    batch = make_collate(tokenizer.sot, tokenizer.pad)(items)
    assert batch.mel.shape == (2, 80, 100) and batch.frames.tolist() == [100, 50]
    first = tokenizer.target("one two")
    assert batch.tokens[0, : len(first)].tolist() == [tokenizer.sot, *first[:-1]]
    assert batch.targets[1].tolist()[:2] == [tokenizer.no_speech, tokenizer.eot]
    assert batch.targets[1, 2:].eq(-100).all()
    equalized = SpeechDataset(utterances, tokenizer, Augment(eq=12.0), "level-mean")[0][0]
    change = equalized - SpeechDataset(utterances, tokenizer, None, "level-mean")[0][0]
    assert change.std(dim=1).max() < 1e-4  # a gain per band, the same in every frame
    assert change[:, 0].abs().max() > 0.05  # 1 dB = 0.05 after level-mean's / 2


def test_normalize_text_for_error_rates() -> None:
    assert normalize_text("  Hello, World!  It's  OK.") == "hello world it's ok"
