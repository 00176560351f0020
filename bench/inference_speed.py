"""Inference on this CPU, each app in four variants (issue 27; book 8.2): PyTorch fp32,
PyTorch int8 (torchao, linear layers), ONNX Runtime fp32 and ONNX Runtime int8 (static with
calibration for convolutional networks, dynamic otherwise). Per app and variant: the
throughput of its main network on a fixed batch, the accuracy the app's own `evaluate`
measures through that variant, the FLOPs per input, and the fraction of this CPU's fp32
peak it reaches (the peak measured with a large matmul in the same run). Goals: int8 >= 2x
fp32 (same runtime) on at least five apps and never slower, within 1 point of accuracy
(0.2 dB of PSNR); ONNX Runtime fp32 >= PyTorch fp32.

Each app's bench/inference_<app>.py gives a `case(workdir, quick, checkpoints)`: a model it
trains within a budget (or one found in --checkpoints DIR) and how to score it.

    python bench/inference_speed.py                  # writes bench/results/inference_speed.json
    python bench/inference_speed.py --quick          # a check that it runs, prints only
    python bench/inference_speed.py --only denoise --checkpoints runs/

With --only, the apps measured replace theirs in the JSON and the others are kept (each
app's row holds the peak of its own run).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, read_result, write_result
from inference_common import Case, repeated

from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.export import Graph, Inputs
from lbdl_apps.core.options import Inference
from lbdl_apps.core.runtime import onnx_module, torch_module

APPS = ("classify", "denoise", "segment", "detect", "asr", "clip", "dqn", "diffusion")
VARIANTS = {
    "torch_fp32": Inference(runtime="torch"),
    "torch_int8": Inference(runtime="torch", quantize="int8"),
    "onnxruntime_fp32": Inference(runtime="onnxruntime"),
    "onnxruntime_int8": Inference(runtime="onnxruntime", quantize="int8"),
}


def peak_flops(seconds: float = 2.0) -> float:
    """This CPU's fp32 matmul rate now (FLOP/s): 1024 x 1024 products, best of the runs."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - start))
    return best


def flops_per_input(module: nn.Module, inputs: Inputs, batch: int) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return counter.get_total_flops() / batch


def throughput(module: nn.Module, inputs: Inputs, batch: int, seconds: float) -> float:
    """Inputs per second: the median of timed calls after two warm-up calls."""
    times = []
    with torch.no_grad():
        for _ in range(2):
            module(*inputs)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            start = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def runner(graph: Graph, source: Path, variant: Inference) -> nn.Module:
    if variant.runtime == "torch":
        return torch_module(graph, variant, torch.device("cpu"))
    return onnx_module(graph, source, variant)


def measure_case(case: Case, peak: float, seconds: float) -> dict[str, Any]:
    """Every variant of one app: throughput, accuracy, FLOPs and share of the peak."""
    deployment = case.deployment()
    graph = deployment.graphs[0]
    inputs = case.timed_inputs(graph) if case.timed_inputs else repeated(graph, case.batch)
    flops = flops_per_input(graph.module, inputs, case.batch)
    row: dict[str, Any] = {"checkpoint": str(case.checkpoint), "metric": case.metric,
                           "graph": graph.name, "batch": case.batch, "flops_per_input": flops,
                           "variants": {}, **case.notes}  # fmt: skip
    for name, variant in VARIANTS.items():
        try:
            module = runner(graph, deployment.source, variant)
        except LbdlError as error:
            row["variants"][name] = {"unavailable": str(error)}
            print(f"  {name}: {error}", flush=True)
            continue
        per_s = throughput(module, inputs, case.batch, seconds)
        score = case.accuracy(variant)
        row["variants"][name] = {
            "per_s": per_s,
            "accuracy": score,
            "peak_fraction": flops * per_s / peak,
        }
        print(f"  {name}: {per_s:.4g}/s, {case.metric} {score:.4g}", flush=True)
    row.update(_ratios(row["variants"], case))
    return row


def _ratios(variants: dict[str, dict[str, Any]], case: Case) -> dict[str, Any]:
    """int8 over fp32 per runtime, ONNX Runtime over PyTorch, and the accuracy changes."""

    def per_s(name: str) -> float | None:
        return variants.get(name, {}).get("per_s")

    out: dict[str, Any] = {}
    for runtime in ("torch", "onnxruntime"):
        fp32, int8 = per_s(f"{runtime}_fp32"), per_s(f"{runtime}_int8")
        if fp32 and int8:
            out[f"{runtime}_int8_speedup"] = int8 / fp32
            change = (
                variants[f"{runtime}_int8"]["accuracy"] - variants[f"{runtime}_fp32"]["accuracy"]
            )
            out[f"{runtime}_int8_accuracy_change"] = change
    speedups = [out[k] for k in ("onnxruntime_int8_speedup", "torch_int8_speedup") if k in out]
    out["int8_speedup"] = max(speedups) if speedups else None
    if per_s("onnxruntime_fp32") and per_s("torch_fp32"):
        out["onnxruntime_over_torch_fp32"] = per_s("onnxruntime_fp32") / per_s("torch_fp32")
    changes = [abs(out[k]) for k in out if k.endswith("_accuracy_change")]
    out["int8_within_tolerance"] = bool(changes) and max(changes) <= case.tolerance
    out["tolerance"] = case.tolerance
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a check that it runs")
    parser.add_argument("--only", nargs="*", help="apps to measure (default: all)")
    parser.add_argument("--checkpoints", type=Path, help="reuse models trained before here")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = peak_flops()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    earlier = read_result("inference_speed") if args.only and not args.quick else None
    apps: dict[str, Any] = dict((earlier or {}).get("apps", {}))
    with tempfile.TemporaryDirectory() as scratch:
        for app in args.only or APPS:
            try:
                module = importlib.import_module(f"inference_{app}")
            except ModuleNotFoundError:
                continue
            print(f"{app}:", flush=True)
            # models trained here go to --checkpoints DIR when given: a rerun finds them
            workdir = (args.checkpoints or Path(scratch)) / app
            case = module.case(workdir, args.quick, args.checkpoints)
            apps[app] = measure_case(case, peak, 0.5 if args.quick else args.seconds)
            apps[app]["peak_gflops_fp32"] = peak / 1e9
            if not args.quick:  # after each app: a long run cut short keeps what it measured
                print(f"wrote {write_result('inference_speed', summary(apps, peak))}", flush=True)
    if args.quick:
        print(f"int8 >= 2x: {summary(apps, peak)['apps_int8_at_least_2x']}")


def summary(apps: dict[str, Any], peak: float) -> dict[str, Any]:
    return {
        "benchmark": "inference_speed",
        "peak_gflops_fp32": peak / 1e9,
        "apps": apps,
        "apps_int8_at_least_2x": [a for a, r in apps.items() if (r.get("int8_speedup") or 0) >= 2],
        "goal": "int8 >= 2x fp32 on >= 5 apps, never slower; accuracy within tolerance; "
        "ONNX Runtime fp32 >= PyTorch fp32",
        **environment(),
    }


if __name__ == "__main__":
    main()
