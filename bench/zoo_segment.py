"""lbdl's VOC segmentation models by name against torchvision's own models (issue 26): for
voc:fcn_resnet50, voc:deeplabv3 and voc:lraspp, torchvision builds the architecture with
random weights (batch-norm statistics randomized too), its state dict is put where lbdl
looks for torchvision's file, and lbdl loads it by name; both then segment the same image at
torchvision's scale (520 x 520; 128 x 128 with --quick). Throughput in images/s (best of
alternating rounds, one thread), their ratio and the largest difference of the logits.

    python bench/zoo_segment.py [--quick]      (bench/zoo_speed.py gathers the rows)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

NAMES = {  # name: torchvision builder (torchvision.models.segmentation)
    "voc:fcn_resnet50": "fcn_resnet50",
    "voc:deeplabv3": "deeplabv3_resnet50",
    "voc:lraspp": "lraspp_mobilenet_v3_large",
}


def best_rates(
    ours: Callable[[], Any], theirs: Callable[[], Any], items: int, rounds: int, budget: float
):
    """Items per second of each, best of alternating timed calls (after a warm-up): at least
    `rounds` each, more until `budget` seconds have passed (at most 50), so that a fast
    model's rate is not one noisy call."""
    ours()
    theirs()
    best = [float("inf"), float("inf")]
    start, done = time.perf_counter(), 0
    while done < rounds or (time.perf_counter() - start < budget and done < 50):
        for i, run in enumerate((ours, theirs)):
            began = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - began)
        done += 1
    return items / best[0], items / best[1]


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm statistics and affine parameters (at 0 / 1 they would hide a wrong
    mapping)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.8, 1.2)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def measure_one(name: str, quick: bool) -> dict[str, Any]:
    import torchvision.models.segmentation as segmentation

    from lbdl_apps.core import zoo
    from lbdl_apps.segment import load

    torch.manual_seed(0)
    aux = {} if name == "voc:lraspp" else {"aux_loss": True}  # as torchvision's files are
    builder = getattr(segmentation, NAMES[name])
    theirs = randomized(builder(weights=None, weights_backbone=None, **aux))
    file = zoo.find(name).sources[0].file
    torch.save(theirs.state_dict(), Path(os.environ["LBDL_HOME"]) / "downloads" / file)
    ours = load(name).model
    side = 128 if quick else 520
    images = torch.randn(1, 3, side, side)
    with torch.inference_mode():
        diff = float((ours(images) - theirs(images)["out"]).abs().max())
        ours_rate, theirs_rate = best_rates(
            lambda: ours(images),
            lambda: theirs(images),
            1,
            2 if quick else 3,
            2.0 if quick else 20.0,
        )
    return {
        "name": name,
        "ours_per_s": ours_rate,
        "theirs_per_s": theirs_rate,
        "ratio": ours_rate / theirs_rate,
        "max_abs_diff": diff,
        "input": f"1 image 3x{side}x{side} (logits at the input size)",
        "publisher": f"torchvision {NAMES[name]}, random weights",
    }


def measure(quick: bool) -> list[dict[str, Any]]:
    """One row per named segmentation model (quick: 128 x 128, two rounds)."""
    torch.set_num_threads(1)
    previous = os.environ.get("LBDL_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["LBDL_HOME"] = home
        (Path(home) / "downloads").mkdir()
        try:
            return [measure_one(name, quick) for name in NAMES]
        finally:
            if previous is None:
                os.environ.pop("LBDL_HOME")
            else:
                os.environ["LBDL_HOME"] = previous


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for row in measure(parser.parse_args().quick):
        print(
            f"{row['name']}: ours {row['ours_per_s']:.3g}/s, theirs {row['theirs_per_s']:.3g}/s,"
            f" ratio {row['ratio']:.2f}, max diff {row['max_abs_diff']:.2g} ({row['input']})"
        )
