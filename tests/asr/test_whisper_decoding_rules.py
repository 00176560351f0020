"""The pieces of Whisper's long-form decoding, without real weights: the timestamp rules
against openai-whisper's ApplyTimestampRules on random logits, the prompt (previous text,
language, task) against its DecodingTask's, the language detected once per file by a
random multilingual model, segments from timestamp
pairs and the seek they imply, the fallback schedule, dynamic time warping against
openai-whisper's, the VAD time map, subtitles with words, and lbdl's own models refusing the
options only Whisper models follow (one line, exit 2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lbdl_apps.asr.api import Segment, Transcript, Word, load
from lbdl_apps.asr.outputs import to_srt, to_vtt
from lbdl_apps.asr.vad import TimeMap
from lbdl_apps.asr.whisper_decode import WhisperOptions, initial_tokens
from lbdl_apps.asr.whisper_filters import TimestampRules
from lbdl_apps.asr.whisper_timing import dtw, median_filter
from lbdl_apps.asr.whisper_transcribe import LongForm, temperatures, timestamp_segments
from tests.asr.test_cli import untrained
from tests.asr.whisper_files import (
    MULTILINGUAL,
    noise_wave,
    random_whisper,
    save_openai,
    whisper_tokenizer,
)
from tests.cli_helpers import assert_user_error, lbdl

whisper = pytest.importorskip("whisper")


def test_timestamp_rules_are_whispers() -> None:
    from whisper.decoding import ApplyTimestampRules
    from whisper.tokenizer import get_tokenizer

    ours_tokenizer, theirs_tokenizer = whisper_tokenizer(), get_tokenizer(False)
    begin = ours_tokenizer.timestamp_begin
    assert begin == theirs_tokenizer.timestamp_begin
    sample_begin = 3
    ours = TimestampRules(ours_tokenizer, sample_begin, 50)
    theirs = ApplyTimestampRules(theirs_tokenizer, sample_begin, 50)
    generator = torch.Generator().manual_seed(0)
    histories = [[], [begin + 3], [begin + 3, 400], [begin + 3, 400, begin + 9],
                 [begin + 3, 400, begin + 9, begin + 9], [begin, 11, 12]]  # fmt: skip
    for history in histories:
        tokens = torch.tensor([[50257, 50362, 50360, *history]] * 4)
        logits = torch.randn(4, 51864, generator=generator) * 3
        logits[1, begin:] += 8  # timestamps likelier than text: forced
        ours_logits, theirs_logits = logits.clone(), logits.clone()
        ours(ours_logits, tokens)
        theirs.apply(theirs_logits, tokens)
        assert torch.equal(ours_logits, theirs_logits), history


def test_beam_top_k_is_torch_topk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grouped top-k of beam search gives torch.topk's values and tokens: on random
    rows of Whisper's vocabularies without ranking them whole, and where the best tie or are
    -inf (then torch.topk ranks them)."""
    from lbdl_apps.asr.whisper_beam import top_k

    widths: list[int] = []  # of the rows that torch.topk ranked
    topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk",
                        lambda self, *a, **k: widths.append(self.shape[-1]) or topk(self, *a, **k))
    generator = torch.Generator().manual_seed(0)
    for n in (51864, 51865, 200):
        for case in ("random", "half -inf", "ties", "few finite"):
            x = torch.randn(5, n, generator=generator)
            if case == "half -inf":
                x[:, : n // 2] = float("-inf")  # the best in the other half only
            elif case == "ties":
                x = (x * 2).round()  # many values equal
            elif case == "few finite":
                x[:, 3:] = float("-inf")  # 3 finite values, 6 asked for
            widths.clear()
            top, tokens = top_k(x, 6)
            expected = topk(x, 6, dim=-1)
            assert torch.equal(top, expected.values) and torch.equal(tokens, expected.indices)
            assert (n in widths) == (case in ("ties", "few finite")), (n, case, widths)


def test_segments_from_timestamp_pairs_and_the_seek() -> None:
    b = 50363  # <|0.00|>
    # a complete segment, then an unfinished one: seek to the last complete timestamp
    pieces, moved, single = timestamp_segments([b, 1, 2, b + 50, b + 50, 3, b + 100, 4], b, 10.0,
                                               3000)  # fmt: skip
    assert [(s, e) for s, e, _ in pieces] == [(10.0, pytest.approx(11.0))]
    assert moved == 100 and not single
    # ending on a single timestamp: no speech after it, the whole window is done
    pieces, moved, single = timestamp_segments([b, 1, b + 50, b + 60, 2, b + 80, b + 80], b, 0.0,
                                               2500)  # fmt: skip
    assert single is False and moved == 80 * 2
    pieces, moved, single = timestamp_segments([b, 1, b + 50, b + 60, 2, b + 80], b, 0.0, 2500)
    assert single and moved == 2500 and pieces[-1][2] == [b + 60, 2, b + 80]
    # no pair: one segment to the last timestamp
    pieces, moved, _ = timestamp_segments([b, 1, 2], b, 5.0, 1000)
    assert pieces == [(5.0, 15.0, [b, 1, 2])] and moved == 1000


def test_fallback_temperatures_follow_whispers_cli() -> None:
    assert temperatures(0.0, 0.2) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperatures(0.0, 0.6) == (0.0, 0.6)
    assert temperatures(0.5, 0.0) == (0.5,)


def test_dtw_and_median_filter_are_whispers(monkeypatch: pytest.MonkeyPatch) -> None:
    import whisper.timing as timing

    # their numba functions' Python code (compiling them takes longer than the test)
    monkeypatch.setattr(timing, "backtrace", timing.backtrace.py_func)
    rng = np.random.default_rng(0)
    for shape in ((6, 40), (25, 300)):
        for cost in (rng.normal(size=shape), rng.integers(0, 3, size=shape).astype(float)):
            assert np.array_equal(np.stack(dtw(cost)), timing.dtw_cpu.py_func(cost))
    x = torch.randn(3, 12, 90)
    assert torch.equal(median_filter(x, 7), timing.median_filter(x, 7))


def test_vad_times_map_back_onto_the_file() -> None:
    chunks = [{"start": 16000, "end": 48000}, {"start": 80000, "end": 96000}]  # 1-3 s, 5-6 s
    mapping = TimeMap.of(chunks, 160000)
    words = [Word(" a", 0.5, 1.0, 0.9), Word(" b", 2.2, 2.8, 0.9)]  # speech time
    segments = mapping.restore([Segment(0.0, 2.0, "x", 0, 0), Segment(0.5, 3.0, "a b", 0, 0,
                                                                      words=words)])  # fmt: skip
    assert (segments[0].start, segments[0].end) == (1.0, 3.0)
    assert [(w.start, w.end) for w in words] == [(1.5, 2.0), (5.2, 5.8)]
    assert (segments[1].start, segments[1].end) == (1.5, 5.8)


def test_subtitles_with_words() -> None:
    words = [Word(" Good", 0.2, 0.5, 1.0), Word(" morning.", 0.6, 1.24, 1.0)]
    transcript = Transcript("a.wav", "Good morning.", 2.0,
                            [Segment(0.0, 1.5, "Good morning.", 0, 0, words=words)])  # fmt: skip
    assert "00:00:00,200 --> 00:00:01,240\nGood morning." in to_srt(transcript)
    assert "00:00:00.200 --> 00:00:01.240\nGood <00:00:00.600>morning." in to_vtt(transcript)


def test_own_models_refuse_whisper_options(tmp_path: Path) -> None:
    checkpoint = untrained(tmp_path / "model.safetensors")
    clip = tmp_path / "a.wav"
    soundfile.write(clip, np.zeros(8000, np.float32), 16000)
    for flags in (("--word-timestamps",), ("--vad",), ("--initial-prompt", "hello")):
        done = lbdl("asr", "transcribe", checkpoint, clip, *flags, "--out", tmp_path / "o")
        assert_user_error(done, flags[0], "Whisper")


def test_the_prompt_is_whispers(tmp_path: Path) -> None:
    from whisper.decoding import DecodingOptions, DecodingTask

    model = random_whisper(MULTILINGUAL)
    ours = whisper_tokenizer(MULTILINGUAL["n_vocab"])
    for previous in ([], [11, 12, 13], list(range(300))):  # 300: only the last 223 are kept
        for language, task in (("en", "transcribe"), ("de", "translate")):
            theirs = DecodingTask(model, DecodingOptions(language=language, task=task,
                                                         prompt=previous or None))  # fmt: skip
            options = WhisperOptions(language=language, task=task, prompt=tuple(previous),
                                     without_timestamps=False)  # fmt: skip
            tokens, sot_index = initial_tokens(ours, options, MULTILINGUAL["n_text_ctx"])
            assert tokens == list(theirs.initial_tokens) and sot_index == theirs.sot_index


def test_a_multilingual_model_detects_each_files_language(tmp_path: Path) -> None:
    recognizer = load(save_openai(random_whisper(MULTILINGUAL), tmp_path / "m.pt"))
    quick = LongForm(decoding=WhisperOptions(sample_len=4), temperatures=(0.0,))
    found = recognizer.transcribe_audio([noise_wave(2.0), noise_wave(3.0, seed=1)], 4, quick)
    assert all(t.language in recognizer.tokenizer.languages for t in found)
    told = replace(quick, decoding=replace(quick.decoding, language="fr"))
    assert [t.language for t in recognizer.transcribe_audio([noise_wave(2.0)], 4, told)] == ["fr"]
