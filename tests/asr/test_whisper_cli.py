"""Whisper sources on the command line (issue 25): `lbdl asr convert SRC OUT.safetensors`,
`transcribe` and `evaluate` on every source and on the registry names (offline: the
publisher's file put in $LBDL_HOME/downloads, or a Hugging Face cache copy), and the bad
inputs, each one line and exit 2: a CTranslate2 folder missing a file, a .pt holding Python
objects, an unknown or unreachable `whisper:` name, options an English-only model refuses."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path

import pytest
import soundfile

from lbdl_apps.asr.api import load
from lbdl_apps.asr.whisper_transcribe import LongForm
from lbdl_apps.core import zoo
from lbdl_apps.core.checkpoint import read_meta
from tests.asr.whisper_files import (
    noise_wave,
    random_whisper,
    save_ct2,
    save_hf,
    save_openai,
    whisper_tokenizer,
)
from tests.cli_helpers import assert_user_error, lbdl

pytest.importorskip("whisper")
# random weights fail every threshold: no temperature fallback (6 x 5 samples) in these tests
GREEDY = ("--temperature-increment", "0")


@pytest.fixture(scope="module")
def model():
    return random_whisper()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $LBDL_HOME and Hugging Face cache, and no network."""
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "lbdl"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tmp_path / "lbdl"


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "talk.wav"
    soundfile.write(path, noise_wave(3.0), 16_000)
    return path


def test_convert_then_transcribe(home, model, clip, tmp_path) -> None:
    source = save_openai(model, tmp_path / "model.pt")
    out = tmp_path / "tiny.safetensors"
    done = lbdl("asr", "convert", source, out)
    assert done.exit_code == 0, done.output
    meta = read_meta(out, "asr")
    assert meta["config"]["architecture"] == "whisper" and "<|notimestamps|>" in meta["tokenizer"]
    assert_user_error(lbdl("asr", "convert", source, out), str(out), "exists")
    done = lbdl("asr", "transcribe", out, clip, "--out", tmp_path / "out", "--beam-size", "2",
                *GREEDY)  # fmt: skip
    assert done.exit_code == 0, done.output
    written = json.loads((tmp_path / "out" / "talk.json").read_text())
    times = [(s["start"], s["end"]) for s in written["segments"]]  # Whisper's timestamps
    assert times and all(a <= b for a, b in times) and times[0][0] >= 0.0
    assert {p.suffix for p in (tmp_path / "out").iterdir()} == {".txt", ".json", ".srt", ".vtt"}


@pytest.mark.parametrize("form", ["transformers", "ctranslate2"])
def test_transcribe_takes_publishers_folders(form, home, model, clip, tmp_path) -> None:
    folder = tmp_path / form
    if form == "transformers":
        save_hf(model, folder)
    else:
        save_ct2(model, folder, whisper_tokenizer())
    recognizer = load(save_openai(model, tmp_path / "model.pt"))
    expected = recognizer.transcribe([clip], long_form=LongForm(temperatures=(0.0,)))[0].text
    done = lbdl("asr", "transcribe", folder, clip, "--out", tmp_path / "out", *GREEDY)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "talk.txt").read_text().strip() == expected.strip()


def test_a_name_uses_the_publishers_file_put_in_downloads(home, model, clip, tmp_path) -> None:
    """Offline, `whisper:tiny.en` is made from tiny.en.pt in $LBDL_HOME/downloads (and
    openai-whisper's installed gpt2.tiktoken), converted once and cached."""
    (home / "downloads").mkdir(parents=True)
    save_openai(model, home / "downloads" / "tiny.en.pt")
    done = lbdl("asr", "transcribe", "whisper:tiny.en", clip, "--out", tmp_path / "out", *GREEDY)
    assert done.exit_code == 0, done.output
    cached = zoo.converted_path(zoo.find("whisper:tiny.en"))
    assert read_meta(cached, "asr")["source"] == "whisper:tiny.en"
    (home / "downloads" / "tiny.en.pt").unlink()  # the cached conversion is enough now
    assert load("whisper:tiny.en").meta["license"] == "MIT (OpenAI Whisper)"


def test_a_name_uses_a_hugging_face_cache_copy(home, model, tmp_path) -> None:
    repo = tmp_path / "hub" / "models--openai--whisper-tiny.en"
    save_hf(model, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    recognizer = load("whisper:tiny.en")
    assert recognizer.meta["whisper"]["format"] == "transformers"
    assert zoo.is_cached(zoo.find("whisper:tiny.en"))


def test_evaluate_on_data(home, model, clip, tmp_path) -> None:
    source = save_openai(model, tmp_path / "model.pt")
    manifest = tmp_path / "data.csv"
    manifest.write_text(f"audio,text\n{clip},Seven.\n")
    done = lbdl("asr", "evaluate", source, "--data", manifest, "--out", tmp_path / "eval", *GREEDY)
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["utterances"] == 1 and metrics["cer"] >= 0.0
    assert_user_error(lbdl("asr", "evaluate", source, "--out", tmp_path / "e2"), "--data")


@pytest.mark.parametrize("missing", ["model.bin", "vocabulary.txt"])
def test_a_ctranslate2_folder_missing_a_file(missing, home, model, clip, tmp_path) -> None:
    folder = save_ct2(model, tmp_path / "ct2", whisper_tokenizer())
    (folder / missing).unlink()
    done = lbdl("asr", "transcribe", folder, clip, "--out", tmp_path / "out", *GREEDY)
    assert_user_error(done, missing)
    assert not (tmp_path / "out").exists()


def test_a_ctranslate2_folder_without_tokenizer_or_config(home, model, tmp_path) -> None:
    """As faster-whisper, a folder without tokenizer.json takes Whisper's own vocabulary
    (openai-whisper's, checked against the folder's); without config.json, Whisper's default
    alignment heads."""
    folder = save_ct2(model, tmp_path / "ct2", whisper_tokenizer())
    expected = load(folder).tokenizer.to_json()
    (folder / "tokenizer.json").unlink()
    (folder / "config.json").unlink()
    recognizer = load(folder)
    assert recognizer.tokenizer.to_json() == expected
    assert recognizer.meta["whisper"]["alignment_heads"] == [[1, h] for h in range(4)]


def test_a_ctranslate2_folder_of_another_vocabulary(home, model, tmp_path) -> None:
    folder = save_ct2(model, tmp_path / "ct2", whisper_tokenizer())
    tokens = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    tokens[300] = "not-a-gpt2-token"
    (folder / "vocabulary.txt").write_text("\n".join(tokens), encoding="utf-8")
    assert_user_error(lbdl("asr", "convert", folder, tmp_path / "x.safetensors"),
                      "vocabulary.txt", "token 300")  # fmt: skip


def test_a_truncated_model_bin(home, model, clip, tmp_path) -> None:
    folder = save_ct2(model, tmp_path / "ct2", whisper_tokenizer())
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 2])
    assert_user_error(lbdl("asr", "convert", folder, tmp_path / "x.safetensors"), "truncated")


def test_a_pt_holding_python_objects_is_refused(home, model, clip, tmp_path) -> None:
    source = save_openai(model, tmp_path / "model.pt", extra=Namespace(evil=True))
    line = assert_user_error(lbdl("asr", "transcribe", source, clip), "model.pt")
    assert "Python objects" in line and "weights_only" not in line


def test_names_offline(home, clip, tmp_path) -> None:
    assert_user_error(lbdl("asr", "transcribe", "whisper:huge", clip), "whisper:huge",
                      "whisper:tiny.en")  # fmt: skip
    line = assert_user_error(lbdl("asr", "transcribe", "whisper:base", clip), "whisper:base")
    assert "base.pt" in line and str(home / "downloads") in line and ".cache/whisper" in line


def test_options_an_english_model_refuses(home, model, clip, tmp_path) -> None:
    source = save_openai(model, tmp_path / "model.pt")
    assert_user_error(lbdl("asr", "transcribe", source, clip, "--language", "de"), "--language")
    assert_user_error(lbdl("asr", "transcribe", source, clip, "--task", "translate"), "--task")
    assert_user_error(lbdl("asr", "transcribe", source, clip, "--task", "sing"), "--task")
    assert_user_error(lbdl("asr", "transcribe", source, clip, "--adapt"), "--adapt")


def test_lbdl_models_lists_the_names(home) -> None:
    done = lbdl("models")
    assert done.exit_code == 0, done.output
    for name in ("tiny", "tiny.en", "base", "base.en", "small", "small.en"):
        assert f"whisper:{name}" in done.output


def test_sources_hold_the_published_sha256() -> None:
    """The registry's URLs are openai-whisper's own (the sha256 in their path)."""
    import whisper

    names = [n for n in zoo.REGISTRY if n.startswith("whisper:")]
    assert len(names) == 6
    for name in names:
        url = whisper._MODELS[name.split(":", 1)[1]]
        source = zoo.find(name).sources[0]
        assert source.url == url and source.sha256 == url.split("/")[-2]


@pytest.fixture(autouse=True)
def _registries() -> None:
    zoo.load_registries()


def test_a_copy_in_openai_whispers_cache_is_used(home, model, monkeypatch, tmp_path) -> None:
    cache = tmp_path / "dot-cache-whisper"
    cache.mkdir()
    save_openai(model, cache / "small.en.pt")
    entry = zoo.find("whisper:small.en")
    patched = type(entry)(**{**entry.__dict__, "look_in": (str(cache), *entry.look_in[1:])})
    monkeypatch.setitem(zoo.REGISTRY, "whisper:small.en", patched)
    assert load("whisper:small.en").meta["source"] == "whisper:small.en"
    shutil.rmtree(cache)
