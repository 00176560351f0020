"""Exported models for deployment (DESIGN.md `export`; book 8.2, quantization): the networks
of an app written as ONNX, TorchScript or a torch.export ExportedProgram, the ONNX ones
optionally in int8 (ONNX Runtime: static with calibration for convolutional networks,
dynamic for the matrix products of the others), each checked at export against PyTorch on
a sample input (the largest difference is reported; above the tolerance nothing is
written), with a model.json beside them saying their inputs, outputs and preprocessing."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.options import ExportArgs
from lbdl_apps.core.outputs import atomic_path, write_json

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
FP32_TOLERANCE = 1e-4  # largest difference of fp32 outputs, relative to their largest value
CALIBRATION_INPUTS = 256  # static int8: inputs whose activations set the ranges
# static int8 quantizes the products only: Q/DQ around every other operation (norms,
# activations, additions) cost more than int8 saves on this CPU
STATIC_INT8_OPS = ["Conv", "MatMul", "Gemm"]
CALIBRATION_MEMORY = 2 << 30  # bytes: the activations ONNX Runtime's calibrator may hold
Inputs = tuple[Tensor, ...]


@dataclass
class Graph:
    """One network of an app to export or to run elsewhere: the module as the app calls it,
    a sample of its inputs (a batch of 2: torch.export fixes an axis of size 1), their
    names and the axes that vary (name -> {axis: name}, inputs and outputs), its output
    names, `attach` to put a replacement in the module's place in the loaded app, and for
    convolutional networks `calibration(data)`: inputs for static int8 (from --calibrate
    DATA, or built-in data when None). `compare(expected, got) -> (difference, scale)`
    replaces the element-wise check where outputs are a set whose order may differ."""

    name: str
    module: nn.Module
    inputs: Inputs
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    attach: Callable[[nn.Module], None] | None = None
    calibration: Callable[[str | None], Sequence[Inputs]] | None = None
    compare: Callable[[Inputs, Inputs], tuple[float, float]] | None = None

    @cached_property
    def convolutional(self) -> bool:
        """Whether convolutions do most of the multiply-adds on the sample inputs: static
        int8 with calibration (QDQ); else dynamic int8 of the matrix products. (A count of
        weights would call the Nature DQN linear: its 3136 x 512 layer holds 1.6M of its
        1.7M weights but does 1.6M of its 9.4M multiply-adds.)"""
        counts = multiply_adds(self.module, self.inputs)
        return counts["conv"] > counts["linear"]


def multiply_adds(module: nn.Module, inputs: Inputs) -> dict[str, int]:
    """The multiply-adds of the convolutions and of the linear layers of `module` on
    `inputs` (forward hooks)."""
    counts = {"conv": 0, "linear": 0}

    def count(layer: nn.Module, _: Any, output: Tensor) -> None:
        if isinstance(layer, nn.Linear):
            counts["linear"] += output.numel() * layer.in_features
        else:  # each output value: in_channels / groups x kernel products
            counts["conv"] += output.numel() * layer.weight[0].numel()

    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def check_calibration(deployment: Deployment, calibrate: str | None) -> None:
    """--calibrate only where it is read: static int8 of a convolutional graph."""
    if calibrate is not None and not any(g.convolutional for g in deployment.graphs):
        names = " and ".join(g.name for g in deployment.graphs)
        raise LbdlError(
            f"--calibrate {calibrate}: {names} take dynamic int8 (linear layers do most of "
            "their multiply-adds), which needs no calibration"
        )


@dataclass
class Deployment:
    """What an app deploys of a loaded checkpoint: its graphs, and what model.json says of
    them beside the files (preprocessing, labels, postprocessing)."""

    task: str
    source: Path
    graphs: list[Graph]
    description: dict[str, Any]


@dataclass
class Exported:
    """One written file and how close its outputs came to PyTorch's."""

    graph: str
    path: Path
    max_abs_diff: float
    scale: float
    quantized: bool


def need(module: str, extra: str = "export") -> Any:
    """Import an optional package, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise LbdlError(f"{package} is not installed: pip install 'lbdl-apps[{extra}]'") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters' and quantizers' progress lines and warnings are not the user's."""
    loggers = [logging.getLogger(n) for n in ("root", "torch", "torch.onnx", "onnxruntime")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def export_graph(
    graph: Graph, path: Path, format: str, quantize: str | None, calibrate: str | None = None
) -> Exported:
    """Write `graph` to `path` in `format` (int8 when `quantize`), checked against PyTorch
    on its sample inputs; an fp32 file whose outputs differ is an error and not written."""
    ExportArgs(checkpoint="", format=format, quantize=quantize)  # one-line errors
    module = graph.module.eval()
    with torch.no_grad():
        expected = as_tuple(module(*graph.inputs))
    with atomic_path(path) as tmp, quiet(), _exporting(graph.name, format):
        if format == "onnx":
            write_onnx(graph, tmp)
            if quantize:
                quantize_onnx(graph, tmp, calibrate)
        elif format == "torchscript":
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(module, graph.inputs, check_trace=False), tmp)
        else:
            torch.export.save(
                torch.export.export(module, graph.inputs, dynamic_shapes=_dims(graph)), tmp
            )
        got = run_file(tmp, format, graph)
        if len(expected) != len(got):
            raise LbdlError(
                f"{graph.name}: the exported model gives {len(got)} outputs, not {len(expected)}"
            )
        diff, scale = (graph.compare or difference)(expected, got)
        if not quantize and diff > FP32_TOLERANCE * max(scale, 1.0):
            raise LbdlError(
                f"{graph.name}: the exported outputs differ from PyTorch's by {diff:.3g} "
                f"(largest output {scale:.3g}); nothing written"
            )
    return Exported(graph.name, path, diff, scale, bool(quantize))


@contextlib.contextmanager
def _exporting(name: str, format: str) -> Iterator[None]:
    """An exporter's failure as one line naming the graph and the format."""
    try:
        yield
    except LbdlError:
        raise
    except (RuntimeError, ValueError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LbdlError(f"{name}: cannot be exported to {format} ({first})") from error


def as_tuple(output: Any) -> Inputs:
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def _dims(graph: Graph) -> tuple[Any, ...] | None:
    """torch.export's dynamic shapes of the inputs, in order: their varying axes."""
    if not graph.dynamic:
        return None
    return tuple(
        {axis: torch.export.Dim.AUTO for axis in graph.dynamic.get(name, {})} or None
        for name in graph.input_names
    )


def write_onnx(graph: Graph, path: Path) -> None:
    """The graph as ONNX (opset 17, the varying axes dynamic)."""
    need("onnx")
    torch.onnx.export(
        graph.module,
        graph.inputs,
        str(path),
        input_names=graph.input_names,
        output_names=graph.output_names,
        dynamic_axes=graph.dynamic or None,
        dynamo=False,
        opset_version=17,
    )


def quantize_onnx(graph: Graph, path: Path, calibrate: str | None) -> None:
    """int8 in place (book 8.2): static for a convolutional graph (QDQ around its
    convolutions and matrix products, weights per channel, activation ranges from the
    calibration inputs), dynamic int8 of the matrix products otherwise."""
    quantization = need("onnxruntime.quantization")
    fp32 = path.with_name(path.name + ".fp32")
    path.replace(fp32)
    try:
        if not graph.convolutional:
            quantization.quantize_dynamic(  # the products only: ConvInteger is slower than fp32
                str(fp32), str(path), weight_type=quantization.QuantType.QInt8,
                nodes_to_quantize=weight_products(fp32, ("MatMul", "Gemm")), per_channel=True,
            )  # fmt: skip
            return
        if graph.calibration is None:
            raise LbdlError(f"{graph.name}: static int8 needs calibration inputs")
        feeds = [_feed(graph.input_names, inputs) for inputs in graph.calibration(calibrate)]
        quantization.quant_pre_process(str(fp32), str(fp32), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(fp32), str(path), _Reader(quantization, feeds),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            nodes_to_quantize=weight_products(fp32, STATIC_INT8_OPS),
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
        )  # fmt: skip
    finally:
        fp32.unlink(missing_ok=True)


def weight_products(path: Path, op_types: Sequence[str]) -> list[str]:
    """The nodes of `op_types` that multiply by a weight (an initializer or a constant):
    attention's products of two activations (and the softmax between them) stay in fp32,
    where int8 is both slower (QLinearSoftmax) and less exact, as in CTranslate2."""
    onnx = need("onnx")
    model = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types
        and (node.op_type == "Conv" or any(name in constants for name in node.input[1:]))
    ]


def affordable(
    model: nn.Module, sample: Tensor, fewest: int, most: int = CALIBRATION_INPUTS
) -> int:
    """How many calibration inputs (at least `fewest`) fit in CALIBRATION_MEMORY: the bytes
    of the inputs and outputs of every convolution and linear layer, measured on `sample`.
    (ONNX Runtime's CalibMaxIntermediateOutputs could bound it in the calibrator instead.)"""
    floats = [0]

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        floats[0] += inputs[0].numel() + output.numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    per_input = max(4 * floats[0] // len(sample), 1)
    return max(fewest, min(most, CALIBRATION_MEMORY // per_input))


def calibration_batches(
    dataset: Any, pick: Callable[[Any], Inputs], count: int = CALIBRATION_INPUTS, batch: int = 32
) -> list[Inputs]:
    """Static int8's calibration inputs: the first `count` items of a dataset (its random
    crops seeded, so the same every time) in batches, `pick`ed into the graph's inputs."""
    from torch.utils.data import DataLoader, Subset

    items = Subset(dataset, range(min(count, len(dataset))))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return [pick(b) for b in DataLoader(items, batch_size=batch)]


def _Reader(quantization: Any, feeds: list[dict[str, np.ndarray]]) -> Any:
    """An ONNX Runtime CalibrationDataReader over `feeds`."""

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    return Reader()


def _feed(names: list[str], inputs: Inputs) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)}


def run_file(path: Path, format: str, graph: Graph) -> Inputs:
    """The outputs of an exported file on the graph's sample inputs."""
    if format == "onnx":
        return as_tuple(OnnxModule(path, graph.input_names, graph.output_names)(*graph.inputs))
    module = (
        torch.jit.load(str(path))
        if format == "torchscript"
        else torch.export.load(str(path)).module()
    )
    with torch.no_grad():
        return as_tuple(module(*graph.inputs))


def difference(expected: Inputs, got: Inputs) -> tuple[float, float]:
    """The largest absolute difference between two output tuples and the largest output."""
    pairs = list(zip(expected, got, strict=True))
    diff = max(float((e.float() - g.float()).abs().max()) for e, g in pairs if e.numel())
    scale = max(float(e.float().abs().max()) for e, _ in pairs if e.numel())
    return diff, scale


class OnnxModule(nn.Module):
    """An ONNX file run by ONNX Runtime, called like the module it was exported from:
    tensors in (any device), tensors out on the inputs' device; one output is returned
    bare, several as a tuple."""

    def __init__(
        self, path: Path, input_names: list[str], output_names: list[str], threads: int = 0
    ) -> None:
        super().__init__()
        ort = need("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names, self.output_names = input_names, output_names

    def forward(self, *inputs: Tensor) -> Tensor | Inputs:
        device = inputs[0].device
        outputs = self.session.run(self.output_names, _feed(self.input_names, inputs))
        tensors = tuple(torch.from_numpy(np.asarray(y)).to(device) for y in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


def describe(graph: Graph, exported: Exported) -> dict[str, Any]:
    """model.json's entry of one file: its inputs and outputs (shape, varying axes named,
    dtype) and its check against PyTorch."""
    with torch.no_grad():
        outputs = as_tuple(graph.module(*graph.inputs))

    def tensors(names: list[str], values: Inputs) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "shape": [graph.dynamic.get(name, {}).get(i, n) for i, n in enumerate(t.shape)],
                "dtype": str(t.dtype).removeprefix("torch."),
            }
            for name, t in zip(names, values, strict=True)
        ]

    return {
        "file": exported.path.name,
        "inputs": tensors(graph.input_names, graph.inputs),
        "outputs": tensors(graph.output_names, outputs),
        "int8": exported.quantized,
        "max_abs_diff_vs_pytorch": exported.max_abs_diff,
        "largest_output": exported.scale,
    }


def export_deployment(
    deployment: Deployment, folder: Path, format: str, quantize: str | None, calibrate: str | None
) -> list[Exported]:
    """Every graph of `deployment` into `folder`, then model.json beside them."""
    check_calibration(deployment, calibrate)
    written, entries = [], {}
    for graph in deployment.graphs:
        name = f"{graph.name}{'.int8' if quantize else ''}{SUFFIXES[format]}"
        exported = export_graph(graph, folder / name, format, quantize, calibrate)
        written.append(exported)
        entries[graph.name] = describe(graph, exported)
    write_json(
        folder / "model.json",
        {
            "task": deployment.task,
            "checkpoint": str(deployment.source),
            "format": format,
            "quantize": quantize,
            "calibration": (calibrate or "built-in data") if quantize else None,
            "graphs": entries,
            **deployment.description,
        },
    )
    return written


def run_export(args: ExportArgs, deployment: Callable[[str], Deployment]) -> Path:
    """The `export` verb of every app: `deployment(checkpoint)` written in --format (int8
    with --quantize) into a new export folder (or --out), one line per file."""
    from lbdl_apps.core.errors import report
    from lbdl_apps.core.outputs import output_folder

    folder = output_folder(args.checkpoint, args.out, "export", args.exist_ok)
    for done in export_deployment(
        deployment(args.checkpoint), folder, args.format, args.quantize, args.calibrate
    ):
        check = "int8: largest difference" if done.quantized else "largest difference"
        report(f"wrote {done.path} ({check} from PyTorch {done.max_abs_diff:.2g})")
    report(f"wrote {folder / 'model.json'}")
    return folder
