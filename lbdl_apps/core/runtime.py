"""Where a loaded app runs its networks (`--runtime`, `--quantize`, `--compile`; book 8.2):
PyTorch as trained, PyTorch int8 (torchao: dynamic int8 of the linear layers), or ONNX
Runtime in fp32 or int8, exported on the first use and cached beside the checkpoint (or
under $LBDL_HOME/exported when that folder cannot be written). On CUDA, PyTorch runs under
autocast (bf16 where supported, else fp16), optionally compiled."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbdl_apps.core.device import amp_dtype
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.export import (
    CALIBRATION_INPUTS,
    Deployment,
    Graph,
    OnnxModule,
    check_calibration,
    export_graph,
    need,
    quiet,
)
from lbdl_apps.core.options import Inference
from lbdl_apps.core.outputs import atomic_path, json_text


def deploy(deployment: Deployment, inference: Inference | None, device: torch.device) -> None:
    """Put each graph of `deployment` where `inference` runs it, through its `attach`."""
    if inference is None:
        inference = Inference()
    if inference.quantize:
        check_calibration(deployment, inference.calibrate)
    for graph in deployment.graphs:
        if graph.attach is None:
            continue
        runtime = runtime_of(graph, inference)
        if runtime == "torch":
            graph.attach(torch_module(graph, inference, device))
        else:
            graph.attach(onnx_module(graph, deployment.source, inference))


def runtime_of(graph: Graph, inference: Inference) -> str:
    """The runtime of one graph: the one asked for, else ONNX Runtime for int8 (static int8
    of convolutions runs only there, and its dynamic int8 of linear layers is the fastest
    on a CPU: torchao's is slower than fp32 without torch.compile), else torch."""
    if inference.runtime is not None:
        return inference.runtime
    return "onnxruntime" if inference.quantize else "torch"


def torch_module(graph: Graph, inference: Inference, device: torch.device) -> nn.Module:
    """The graph's module for PyTorch: int8 linear layers (torchao), under autocast on CUDA,
    compiled when asked."""
    module = graph.module
    if inference.quantize:
        if graph.convolutional:
            raise LbdlError(
                f"--quantize int8 --runtime torch: {graph.name} is convolutional, and PyTorch's "
                "int8 here is for linear layers; use --runtime onnxruntime"
            )
        module = torch_int8(module)
    dtype = amp_dtype(device) if inference.amp else None
    if dtype is not None and not inference.quantize:
        module = Autocast(module, device.type, dtype)
    return torch.compile(module) if inference.compile else module


def torch_int8(module: nn.Module) -> nn.Module:
    """A copy of `module` whose linear layers compute in int8 (torchao: int8 weights per
    channel, activations quantized per token on the fly)."""
    with quiet():  # torchao's import warns about torch internals
        torchao = need("torchao.quantization")
    quantized = copy.deepcopy(module).cpu()
    with quiet():
        torchao.quantize_(quantized, torchao.Int8DynamicActivationInt8WeightConfig())
    return quantized


class Autocast(nn.Module):
    """A module run under autocast (mixed precision), its outputs back in fp32."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *inputs: Any) -> Any:
        with torch.autocast(self.device_type, self.dtype):
            output = self.module(*inputs)
        if isinstance(output, tuple):
            return tuple(_fp32(t) for t in output)
        return _fp32(output)


def _fp32(value: Any) -> Any:
    return value.float() if isinstance(value, Tensor) and value.is_floating_point() else value


def onnx_module(graph: Graph, source: Path, inference: Inference) -> OnnxModule:
    """The graph through ONNX Runtime: the cached export when it was made from this very
    checkpoint with the same settings, else a new export (checked against PyTorch)."""
    int8 = inference.quantize == "int8"
    folder = cache_folder(source)
    path = folder / f"{graph.name}{'.int8' if int8 else ''}.onnx"
    stamp = path.with_name(path.name + ".json")
    wanted = _stamp(source, graph, inference)
    if not (path.exists() and stamp.exists() and _read(stamp) == wanted):
        export_graph(graph, path, "onnx", inference.quantize, inference.calibrate)
        with atomic_path(stamp) as tmp:
            tmp.write_text(json_text(wanted))
    return OnnxModule(path, graph.input_names, graph.output_names)


def cache_folder(source: Path) -> Path:
    """<checkpoint>.exported/ beside the checkpoint, or $LBDL_HOME/exported/<hash>/ when
    that folder cannot be written."""
    beside = source.with_name(source.name + ".exported")
    if os.access(beside if beside.exists() else source.parent, os.W_OK):
        return beside
    from lbdl_apps.core.zoo import home

    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    return home() / "exported" / digest


INT8_KIND = "QDQ per channel (static); MatMul/Gemm per channel (dynamic)"  # a change remakes


def _stamp(source: Path, graph: Graph, inference: Inference) -> dict[str, Any]:
    """What an export was made from: the checkpoint (size and time), the graph's layout (its
    inputs, outputs and sample shapes) and the code that defines it (an app's newer export of
    the same checkpoint differs), and the settings."""
    status = source.stat()
    code = Path(inspect.getsourcefile(type(graph.module)) or "")
    static = bool(inference.quantize) and graph.convolutional
    return {
        "checkpoint": str(source.resolve()),
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
        "inputs": graph.input_names,
        "outputs": graph.output_names,
        "shapes": [list(x.shape) for x in graph.inputs],
        "code": hashlib.sha256(code.read_bytes()).hexdigest() if code.is_file() else None,
        "quantize": inference.quantize,
        "int8": INT8_KIND if inference.quantize else None,
        "calibrate": [inference.calibrate, CALIBRATION_INPUTS] if static else None,
        "torch": torch.__version__,
    }


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
