"""lbdl's COCO detectors by name against torchvision's own models (issue 26): for
coco:ssd300 and coco:ssdlite320, torchvision builds the detector with random weights
(weights=None, weights_backbone=None; batch-norm statistics randomized too), its state dict
is put where lbdl looks for torchvision's file, and lbdl loads it by name; both then detect
objects in the same photos, from the uint8 picture to the boxes: resize and normalization,
network, decoding, score threshold, candidates per class, NMS, as each model's defaults
say. Throughput in images/s (best of alternating rounds, one thread), their ratio and the
largest difference of the network's outputs (box offsets and the 80 classes' probabilities,
each after its own preprocessing of the photo).

    python bench/zoo_detect.py [--quick]      (bench/zoo_speed.py gathers the rows)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

NAMES = {  # name: torchvision builder
    "coco:ssd300": "ssd300_vgg16",
    "coco:ssdlite320": "ssdlite320_mobilenet_v3_large",
}
PHOTO = (480, 360)  # width, height: a photo both resize to their square input


def best_rates(ours: Callable[[], Any], theirs: Callable[[], Any], items: int, rounds: int):
    """Items per second of each, best of `rounds` alternating timed calls (after a warm-up)."""
    ours()
    theirs()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, run in enumerate((ours, theirs)):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
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


def photos(count: int) -> list[np.ndarray]:
    """Smooth random RGB pictures (H, W, 3) uint8."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = PHOTO
    small = [(rng.random((height // 20, width // 20, 3)) * 255).astype(np.uint8)
             for _ in range(count)]  # fmt: skip
    return [np.asarray(Image.fromarray(s).resize(PHOTO, Image.BILINEAR)) for s in small]


def output_difference(detector: Any, theirs: torch.nn.Module, images: list[np.ndarray]) -> float:
    """The largest difference of box offsets and class probabilities (the used classes) of
    both networks, each on its own preprocessing of the same photos."""
    from lbdl_apps.detect.zoo import coco_categories, head_labels

    _, labels = head_labels(coco_categories())
    used = [i for i, label in enumerate(labels) if label]  # columns in lbdl's class order
    batch = torch.stack([detector._input(image) for image in images])
    offsets, logits = detector.model(batch)
    floats = [torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255 for image in images]
    prepared, _ = theirs.transform(floats)
    head = theirs.head(list(theirs.backbone(prepared.tensors).values()))
    probs = logits.softmax(-1)[..., 1:]
    their_probs = head["cls_logits"].softmax(-1)[..., used]
    return max(
        float((offsets - head["bbox_regression"]).abs().max()),
        float((probs - their_probs).abs().max()),
    )


def measure_one(name: str, quick: bool) -> dict[str, Any]:
    from torchvision.models import detection

    from lbdl_apps.core import zoo
    from lbdl_apps.detect import load

    torch.manual_seed(0)
    theirs = randomized(getattr(detection, NAMES[name])(weights=None, weights_backbone=None))
    file = zoo.find(name).sources[0].file
    torch.save(theirs.state_dict(), Path(os.environ["LBDL_HOME"]) / "downloads" / file)
    detector = load(name)
    post = detector.postprocessing
    count = 1 if quick else 4
    images = photos(count)
    floats = [torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255 for image in images]
    with torch.inference_mode():
        diff = output_difference(detector, theirs, images)
        ours_rate, theirs_rate = best_rates(
            lambda: detector.detect_arrays(images, post["conf"], post["iou"], post["max_det"]),
            lambda: theirs(floats),
            count,
            2 if quick else 5,
        )
    width, height = PHOTO
    return {
        "name": name,
        "ours_per_s": ours_rate,
        "theirs_per_s": theirs_rate,
        "ratio": ours_rate / theirs_rate,
        "max_abs_diff": diff,
        "input": f"{count} photos {width}x{height} -> {detector.image_size} px (detections)",
        "publisher": f"torchvision {NAMES[name]}, random weights",
    }


def measure(quick: bool) -> list[dict[str, Any]]:
    """One row per named detector (quick: one photo, two rounds)."""
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
