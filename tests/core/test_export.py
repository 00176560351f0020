"""core.export and core.runtime on small real networks: every format round-trips to PyTorch's
outputs, int8 (static with calibration for convolutions, dynamic for linear layers) stays
close and is smaller, the ONNX Runtime cache is reused until its checkpoint changes, and
the errors are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.export import (
    Deployment,
    Graph,
    OnnxModule,
    calibration_batches,
    export_deployment,
    export_graph,
    need,
)
from lbdl_apps.core.options import ExportArgs, Inference
from lbdl_apps.core.runtime import Autocast, deploy, runtime_of


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def conv_graph(holder: dict | None = None) -> Graph:
    def attach(module: nn.Module) -> None:
        assert holder is not None
        holder["model"] = module

    return Graph(
        "net",
        conv_net(),
        (images(2),),
        ["images"],
        ["logits"],
        dynamic={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
        attach=attach if holder is not None else None,
        calibration=lambda data: [(images(32, seed=s),) for s in range(4)],
    )


def mlp_graph(holder: dict) -> Graph:
    return Graph(
        "mlp",
        mlp(),
        (torch.randn(2, 64),),
        ["x"],
        ["y"],
        dynamic={"x": {0: "batch"}, "y": {0: "batch"}},
        attach=lambda module: holder.__setitem__("model", module),
    )


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_every_format_gives_pytorchs_outputs_on_other_shapes(tmp_path: Path, format: str) -> None:
    graph = conv_graph()
    done = export_graph(graph, tmp_path / f"net.{format}", format, None)
    assert done.max_abs_diff < 1e-5
    other = images(5, seed=7)[..., :12, :20]  # another batch and size: the axes vary
    expected = graph.module(other)
    if format == "onnx":
        got = OnnxModule(done.path, ["images"], ["logits"])(other)
    elif format == "torchscript":
        got = torch.jit.load(str(done.path))(other)
    else:
        got = torch.export.load(str(done.path)).module()(other)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_static_int8_is_close_and_smaller(tmp_path: Path) -> None:
    graph = conv_graph()
    fp32 = export_graph(graph, tmp_path / "net.onnx", "onnx", None)
    int8 = export_graph(graph, tmp_path / "net.int8.onnx", "onnx", "int8")
    assert int8.quantized and int8.path.stat().st_size < 0.5 * fp32.path.stat().st_size
    test = images(64, seed=9)
    expected = graph.module(test)
    got = OnnxModule(int8.path, ["images"], ["logits"])(test)
    error = (got - expected).abs().max() / expected.abs().max()
    assert 0 < error < 0.05  # int8 is not fp32, but close
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.9


class ConvAttention(nn.Module):
    """Convolutions around one self-attention over the pixels, as the U-Nets have."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.attention = nn.Conv2d(3, 32, 3, padding=1), nn.MultiheadAttention(32, 4)
        self.out = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        tokens = h.flatten(2).permute(2, 0, 1)  # (B, C, H, W) -> (H * W, B, C)
        attended = self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.out(h + attended.permute(1, 2, 0).reshape(h.shape))


def test_static_int8_keeps_attention_in_fp32(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    graph = Graph("net", ConvAttention().eval(), (images(2),), ["images"], ["out"],
                  calibration=lambda data: [(images(2, seed=s),) for s in range(4)])  # fmt: skip
    done = export_graph(graph, tmp_path / "net.int8.onnx", "onnx", "int8")
    nodes = onnx.load(str(done.path)).graph.node
    made_by = {out: node.op_type for node in nodes for out in node.output}
    read_by = {name: node.op_type for node in nodes for name in node.input}
    convolutions = [n for n in nodes if n.op_type == "Conv"]
    assert convolutions and all(made_by[n.input[0]] == "DequantizeLinear" for n in convolutions)
    (softmax,) = [n for n in nodes if n.op_type == "Softmax"]
    # the scores and the weighted values, products of two activations, stay in fp32
    assert made_by[softmax.input[0]] != "DequantizeLinear"
    assert read_by[softmax.output[0]] != "QuantizeLinear"
    test = images(2, seed=5)
    got, expected = OnnxModule(done.path, ["images"], ["out"])(test), graph.module(test)
    assert 0 < float((got - expected).abs().max()) < 0.05 * float(expected.abs().max())


def test_dynamic_int8_of_linear_layers(tmp_path: Path) -> None:
    holder: dict = {}
    graph = mlp_graph(holder)
    assert not graph.convolutional and conv_graph().convolutional
    done = export_graph(graph, tmp_path / "mlp.int8.onnx", "onnx", "int8")
    x = torch.randn(16, 64)
    got = OnnxModule(done.path, ["x"], ["y"])(x)
    expected = graph.module(x)
    assert 0 < float((got - expected).abs().max()) < 0.05 * float(expected.abs().max())


def test_model_json_describes_the_files(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"x")
    deployment = Deployment("toy", source, [conv_graph()], {"labels": ["a", "b"]})
    export_deployment(deployment, tmp_path / "out", "onnx", None, None)
    import json

    described = json.loads((tmp_path / "out" / "model.json").read_text())
    entry = described["graphs"]["net"]
    assert entry["file"] == "net.onnx" and (tmp_path / "out" / "net.onnx").exists()
    assert entry["inputs"] == [
        {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": "float32"}
    ]
    assert entry["outputs"][0]["shape"] == ["batch", 10]
    assert entry["max_abs_diff_vs_pytorch"] < 1e-5
    assert described["labels"] == ["a", "b"] and described["task"] == "toy"


def test_onnx_runtime_is_cached_until_the_checkpoint_changes(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"weights")
    holder: dict = {}
    deployment = Deployment("toy", source, [conv_graph(holder)], {})
    deploy(deployment, Inference(runtime="onnxruntime"), torch.device("cpu"))
    assert isinstance(holder["model"], OnnxModule)
    cached = tmp_path / "model.safetensors.exported" / "net.onnx"
    made = cached.stat().st_mtime_ns
    x = images(3, seed=4)
    torch.testing.assert_close(
        holder["model"](x), deployment.graphs[0].module(x), atol=1e-5, rtol=1e-4
    )
    deploy(deployment, Inference(runtime="onnxruntime"), torch.device("cpu"))
    assert cached.stat().st_mtime_ns == made  # reused
    source.write_bytes(b"other weights")
    deploy(deployment, Inference(runtime="onnxruntime"), torch.device("cpu"))
    assert cached.stat().st_mtime_ns != made  # exported again


def test_onnx_runtime_is_exported_again_when_the_graphs_code_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer lbdl whose graph computes otherwise, with the same inputs and outputs, does
    not run the export an older one cached beside the same checkpoint."""
    import importlib

    source = tmp_path / "model.safetensors"
    source.write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    x = torch.randn(3, 4)
    outputs = []
    for scale in (2, 3):
        (tmp_path / "scaled_graph.py").write_text(
            "from torch import nn\n\n\nclass Scaled(nn.Module):\n"
            f"    def forward(self, x):\n        return x * {scale}\n"
        )
        module = importlib.reload(importlib.import_module("scaled_graph"))
        holder: dict = {}
        graph = Graph("net", module.Scaled(), (torch.randn(2, 4),), ["x"], ["y"],
                      dynamic={"x": {0: "batch"}, "y": {0: "batch"}},
                      attach=lambda m, holder=holder: holder.__setitem__("model", m))  # fmt: skip
        deploy(Deployment("toy", source, [graph], {}), Inference(runtime="onnxruntime"),
               torch.device("cpu"))  # fmt: skip
        outputs.append(holder["model"](x))
    torch.testing.assert_close(outputs[0], x * 2)
    torch.testing.assert_close(outputs[1], x * 3)


def test_runtime_defaults_and_torch_int8(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"w")
    conv, linear = conv_graph({}), mlp_graph({})
    assert runtime_of(conv, Inference()) == "torch"
    assert runtime_of(conv, Inference(quantize="int8")) == "onnxruntime"
    assert runtime_of(linear, Inference(quantize="int8")) == "onnxruntime"
    assert runtime_of(linear, Inference(quantize="int8", runtime="torch")) == "torch"
    holder: dict = {}
    deploy(
        Deployment("toy", source, [mlp_graph(holder)], {}),
        Inference(quantize="int8"),
        torch.device("cpu"),
    )
    x = torch.randn(8, 64)
    expected = mlp()(x)
    with torch.no_grad():
        got = holder["model"](x)
    assert 0 < float((got - expected).abs().max()) < 0.05 * float(expected.abs().max())
    with pytest.raises(LbdlError, match=r"convolutional.*--runtime onnxruntime"):
        deploy(
            Deployment("toy", source, [conv_graph({})], {}),
            Inference(runtime="torch", quantize="int8"),
            torch.device("cpu"),
        )


def test_autocast_keeps_fp32_outputs() -> None:
    net = mlp()
    x = torch.randn(4, 64)
    wrapped = Autocast(net, "cpu", torch.bfloat16)
    out = wrapped(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(x), atol=0.05, rtol=0.05)


def test_calibration_batches_are_seeded() -> None:
    class Random(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 100

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.rand(3)

    first = calibration_batches(Random(), lambda b: (b,), count=40, batch=16)
    again = calibration_batches(Random(), lambda b: (b,), count=40, batch=16)
    assert [b[0].shape[0] for b in first] == [16, 16, 8]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))


def test_bad_requests_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LbdlError, match="--format tflite: choose onnx"):
        ExportArgs(checkpoint="x", format="tflite")
    with pytest.raises(LbdlError, match="--format onnx, not torchscript"):
        ExportArgs(checkpoint="x", format="torchscript", quantize="int8")
    with pytest.raises(LbdlError, match="--quantize int4"):
        Inference(quantize="int4")
    with pytest.raises(LbdlError, match="--runtime tensorrt"):
        Inference(runtime="tensorrt")
    with pytest.raises(
        LbdlError, match=r"not_a_package is not installed: pip install 'lbdl-apps\[export\]'"
    ):
        need("not_a_package.quantization")
    graph = conv_graph()
    graph.calibration = None
    with pytest.raises(LbdlError, match="static int8 needs calibration"):
        export_graph(graph, tmp_path / "n.onnx", "onnx", "int8")
    assert not (tmp_path / "n.onnx").exists()


def test_an_export_that_differs_is_not_written(tmp_path: Path) -> None:
    class Noisy(nn.Module):  # different outputs at every call: the check must catch it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)

    graph = Graph("noisy", Noisy(), (torch.zeros(2, 3),), ["x"], ["y"])
    with pytest.raises(LbdlError, match="noisy: the exported outputs differ"):
        export_graph(graph, tmp_path / "noisy.pt", "torchscript", None)
    assert list(tmp_path.iterdir()) == []


def test_the_cuda_path_wraps_autocast_and_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA (amp_dtype gives a dtype) torch_module runs under autocast and compiles when
    asked; --no-amp and int8 leave autocast out. Checked here with the CPU's bf16."""
    import lbdl_apps.core.runtime as runtime

    monkeypatch.setattr(runtime, "amp_dtype", lambda device: torch.bfloat16)
    graph = mlp_graph({})
    wrapped = runtime.torch_module(graph, Inference(), torch.device("cpu"))
    assert isinstance(wrapped, Autocast) and wrapped.dtype == torch.bfloat16
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert wrapped(x).dtype == torch.float32
    assert runtime.torch_module(graph, Inference(amp=False), torch.device("cpu")) is graph.module
    compiled = runtime.torch_module(graph, Inference(compile=True), torch.device("cpu"))
    assert hasattr(compiled, "_orig_mod") and isinstance(compiled._orig_mod, Autocast)
