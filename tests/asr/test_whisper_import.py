"""Whisper checkpoints of every publisher load into lbdl and compute what openai-whisper
computes (issue 25): one random model (openai-whisper's own `Whisper(ModelDimensions)`,
small dims) saved as openai-whisper's .pt, as a transformers folder and as a CTranslate2
folder; each gives the same log-mel, encoder output and decoder logits (1e-4) and the same
greedy and beam tokens as openai-whisper's `decode` (no timestamps). Whisper's front end,
tokenizer and normaliser against openai-whisper's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lbdl_apps.asr.api import load
from lbdl_apps.asr.audio import mel_filters, pad_frames, whisper_log_mel
from lbdl_apps.asr.whisper_api import whisper_mel
from lbdl_apps.asr.whisper_decode import WhisperOptions
from lbdl_apps.core.layers import sinusoidal_embedding
from tests.asr.whisper_files import (
    MULTILINGUAL,
    hf_model,
    noise_wave,
    random_whisper,
    save_ct2,
    save_hf,
    save_openai,
    whisper_tokenizer,
)

whisper = pytest.importorskip("whisper")
SAMPLE_LEN = 24  # tokens decoded per window: enough to compare, quick


@pytest.fixture(scope="module")
def model():
    return random_whisper()


@pytest.fixture(scope="module")
def sources(model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same weights in the three publishers' layouts."""
    root = tmp_path_factory.mktemp("whisper")
    return {
        "openai-whisper": save_openai(model, root / "tiny.pt"),
        "transformers": (save_hf(model, root / "hf"), root / "hf")[1],
        "ctranslate2": save_ct2(model, root / "ct2", whisper_tokenizer()),
    }


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    """Two windows: 2 s and 7 s of a test signal, as lbdl's transcribe pads them."""
    waves = [noise_wave(2.0, 0), noise_wave(7.0, 1)]
    return torch.stack([pad_frames(whisper_mel(w, 80)) for w in waves])


def theirs(model, mel: torch.Tensor, **options) -> list:
    opts = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False,
                                   sample_len=SAMPLE_LEN, **options)  # fmt: skip
    return [whisper.decode(model, m, opts) for m in mel]


def test_mel_filters_are_whispers() -> None:
    assets = Path(whisper.__file__).parent / "assets" / "mel_filters.npz"
    with np.load(assets) as stored:
        for bands in (80, 128):
            np.testing.assert_array_equal(mel_filters(bands).numpy(), stored[f"mel_{bands}"])


@pytest.mark.parametrize("seconds", [0.5, 7.3, 30.0, 31.2])
def test_log_mel_is_whispers(seconds: float) -> None:
    """As openai-whisper's transcribe computes a window: audio + 30 s of zeros, its first
    (at most) 3000 frames, zero-padded to 3000."""
    wave = noise_wave(seconds, 3)
    full = whisper.log_mel_spectrogram(wave, 80, padding=whisper.audio.N_SAMPLES)
    content = full.shape[-1] - whisper.audio.N_FRAMES
    expected = whisper.pad_or_trim(full[:, : min(content, 3000)], 3000)
    ours = whisper_log_mel(wave)
    assert ours.shape == (80, content)
    torch.testing.assert_close(pad_frames(ours), expected, atol=1e-5, rtol=0)


def test_sinusoids_are_whispers() -> None:
    ours = sinusoidal_embedding(torch.arange(1500), 384, layout="halves")
    torch.testing.assert_close(ours, whisper.model.sinusoids(1500, 384), atol=2e-4, rtol=0)


@pytest.mark.parametrize("multilingual", [False, True])
def test_tokenizer_is_whispers(multilingual: bool) -> None:
    ours = whisper_tokenizer(51865 if multilingual else 51864)
    language, task = ("de", "translate") if multilingual else (None, None)
    theirs = whisper.tokenizer.get_tokenizer(multilingual, language=language, task=task)
    texts = ["Hello world!", " It's 3,141 km, isn't it?", "Grüße aus Köln ♪", "  two  spaces\n"]
    for text in texts:
        assert ours.encode(text) == theirs.encode(text)
        assert ours.decode(theirs.encode(text)) == theirs.decode(theirs.encode(text)) == text
    for name in ("eot", "sot", "no_speech", "no_timestamps", "timestamp_begin", "transcribe",
                 "translate", "sot_prev", "sot_lm"):  # fmt: skip
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.sot_sequence(language, task or "transcribe") == list(theirs.sot_sequence)
    assert ours.non_speech_tokens == list(theirs.non_speech_tokens)
    with_timestamps = [theirs.sot, 400, theirs.timestamp_begin + 5, 401]
    assert ours.decode(with_timestamps) == theirs.decode(with_timestamps)


@pytest.mark.parametrize("form", ["openai-whisper", "transformers", "ctranslate2"])
def test_each_publishers_file_computes_whispers_outputs(form, model, sources, mels) -> None:
    recognizer = load(sources[form])
    assert recognizer.meta["whisper"]["format"] == form
    ours = recognizer.model
    tokens = torch.tensor([[50257, 50362, 300, 11, 2000], [50257, 50362, 220, 50256, 7]])
    with torch.no_grad():
        audio = ours.encode(mels)[0]
        expected = model.encoder(mels)
        torch.testing.assert_close(audio, expected, atol=1e-4, rtol=0)
        logits = ours.decoder(tokens, audio)
        torch.testing.assert_close(logits, model.decoder(tokens, expected), atol=1e-4, rtol=0)
    options = WhisperOptions(sample_len=SAMPLE_LEN)
    found = recognizer.decode(list(mels), options)
    for result, reference in zip(found, theirs(model, mels), strict=True):
        assert result.tokens == reference.tokens
        assert result.text == reference.text
        assert result.avg_logprob == pytest.approx(reference.avg_logprob, abs=1e-5)
        assert result.no_speech_prob == pytest.approx(reference.no_speech_prob, abs=1e-5)


def test_the_transformers_file_holds_the_same_model(model, mels) -> None:
    """The test's own openai-whisper -> transformers copy is right: transformers computes
    what openai-whisper does with it."""
    hf = hf_model(model)
    tokens = torch.tensor([[50257, 50362, 300, 11, 2000]])
    with torch.no_grad():
        encoded = hf.model.encoder(input_features=mels[:1]).last_hidden_state
        torch.testing.assert_close(encoded, model.encoder(mels[:1]), atol=1e-4, rtol=0)
        logits = hf(input_features=mels[:1], decoder_input_ids=tokens).logits
        torch.testing.assert_close(logits, model(mels[:1], tokens), atol=1e-4, rtol=0)


def test_the_ctranslate2_folder_runs_in_ctranslate2(model, sources, mels) -> None:
    """The test's own CTranslate2 writer is right: CTranslate2 reads the folder and encodes
    as openai-whisper does (when ctranslate2 is installed)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    ct2 = ctranslate2.models.Whisper(str(sources["ctranslate2"]), device="cpu",
                                     compute_type="float32")  # fmt: skip
    encoded = ct2.encode(ctranslate2.StorageView.from_array(mels.numpy()), to_cpu=True)
    with torch.no_grad():
        expected = model.encoder(mels).numpy()
    np.testing.assert_allclose(np.array(encoded), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_ctranslate2s_own_converter_output_loads(quantization, model, sources, mels, tmp_path):
    """A folder written by CTranslate2's converter from the transformers folder (when
    ctranslate2 is installed): vocabulary.json, no tokenizer.json, float32 or int8 weights
    (read back as float32: int8 within a few percent)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperTokenizerFast

    hf = tmp_path / "hf"
    shutil.copytree(sources["transformers"], hf)
    WhisperTokenizerFast(tokenizer_object=whisper_tokenizer().tokenizer).save_pretrained(hf)
    converter = ctranslate2.converters.TransformersConverter(str(hf))
    folder = Path(converter.convert(str(tmp_path / "ct2"), quantization=quantization))
    assert not (folder / "tokenizer.json").exists() and (folder / "vocabulary.json").exists()
    recognizer = load(folder)
    with torch.no_grad():
        audio, expected = recognizer.model.encode(mels)[0], model.encoder(mels)
    tolerance = 1e-4 if quantization == "float32" else 0.05 * float(expected.abs().max())
    torch.testing.assert_close(audio, expected, atol=tolerance, rtol=0)
    if quantization == "float32":
        found = recognizer.decode(list(mels), WhisperOptions(sample_len=SAMPLE_LEN))
        assert [r.tokens for r in found] == [r.tokens for r in theirs(model, mels)]


def test_beam_search_is_whispers(model, sources, mels) -> None:
    recognizer = load(sources["openai-whisper"])
    found = recognizer.decode([mels[1]], WhisperOptions(beam_size=3, sample_len=SAMPLE_LEN))[0]
    reference = theirs(model, mels[1:], beam_size=3)[0]
    assert found.tokens == reference.tokens
    assert found.avg_logprob == pytest.approx(reference.avg_logprob, abs=1e-5)


def test_beam_search_batched_over_files_is_per_file(sources, mels) -> None:
    """openai-whisper's beam search takes one window at a time; lbdl's batches windows of
    several files and gives each what it alone would get."""
    recognizer = load(sources["openai-whisper"])
    options = WhisperOptions(beam_size=2, sample_len=12)
    together = recognizer.decode(list(mels), options)
    alone = [recognizer.decode([mel], options)[0] for mel in mels]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.sum_logprob for r in together] == pytest.approx([r.sum_logprob for r in alone])


def test_multilingual_prompt_and_language_detection_are_whispers(tmp_path, mels) -> None:
    model = random_whisper(MULTILINGUAL, seed=1)
    recognizer = load(save_openai(model, tmp_path / "multilingual.pt"))
    assert recognizer.tokenizer.multilingual
    for language, task in ((None, "transcribe"), ("de", "translate")):
        options = WhisperOptions(language=language, task=task, sample_len=SAMPLE_LEN)
        found = recognizer.decode(list(mels), options)
        opts = whisper.DecodingOptions(language=language, task=task, without_timestamps=True,
                                       fp16=False, sample_len=SAMPLE_LEN)  # fmt: skip
        for result, mel in zip(found, mels, strict=True):
            reference = whisper.decode(model, mel, opts)
            assert result.tokens == reference.tokens
            assert result.language == reference.language


def test_the_checkpoint_describes_itself(sources) -> None:
    meta = load(sources["ctranslate2"]).meta
    assert meta["config"].architecture == "whisper"
    info = meta["whisper"]
    assert info["special_tokens"]["sot"] == 50257 and info["special_tokens"]["eot"] == 50256
    assert info["alignment_heads"] == [[1, 0], [1, 3]]  # from the folder's config.json
    assert info["dims"]["n_audio_state"] == 64 and not info["multilingual"]
    assert meta["preprocessing"]["normalization"] == "whisper"
