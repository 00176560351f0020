"""Inference speed of `lbdl detect`'s SSD at 300 px (ResNet-18 backbone, SSD300's maps)
against torchvision's ssd300_vgg16 and ssdlite320_mobilenet_v3_large, all with random
weights, on the same 300 x 300 batch in the same process, measured in turn (A B C, A B C...)
and the best round of each kept. "full" includes box decoding, score threshold 0.01 and
NMS; "network" is the backbone and heads only. Goal: ours at least as fast as ssd300_vgg16.

    python bench/detect_speed.py --quick   # a few seconds, prints only
    python bench/detect_speed.py           # full: writes bench/results/detect_speed.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision

from lbdl_apps.detect.boxes import postprocess
from lbdl_apps.detect.model import build_model, default_config

try:  # python bench/x.py puts bench/ first on sys.path; python -m bench.x does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result


def images_per_s(run: Callable[[], object], batch: int, repeats: int) -> float:
    with torch.no_grad():
        run()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return repeats * batch / (time.perf_counter() - start)


def torchvision_runs(model: torch.nn.Module, images: torch.Tensor):
    """(full, network only) callables of a torchvision SSD on a batch of [0, 1] images."""
    listed = list(images)

    def network() -> object:
        batch, _ = model.transform(listed)
        features = list(model.backbone(batch.tensors).values())
        return model.head(features)

    return (lambda: model(listed)), network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that only prints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    torch.manual_seed(0)
    ours = build_model(default_config(20, "resnet18", args.size)).eval()
    vgg = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    lite = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ).eval()
    images = torch.rand(args.batch, 3, args.size, args.size)

    def ours_full() -> object:
        offsets, logits = ours(images)
        return postprocess(offsets, logits, ours.priors, conf=0.01, iou=0.45, max_det=200)

    runs = {
        "ours_resnet18_ssd": (ours_full, lambda: ours(images)),
        "ssd300_vgg16": torchvision_runs(vgg, images),
        "ssdlite320_mobilenet_v3_large": torchvision_runs(lite, images),
    }
    best = {name: {"full": 0.0, "network": 0.0} for name in runs}
    for _ in range(rounds):
        for name, (full, network) in runs.items():
            for kind, run in (("full", full), ("network", network)):
                speed = images_per_s(run, args.batch, repeats)
                best[name][kind] = max(best[name][kind], speed)
    for name, speeds in best.items():
        print(
            f"{name:32s} full {speeds['full']:6.2f} img/s   network {speeds['network']:6.2f} img/s"
        )
    ratio = best["ours_resnet18_ssd"]["full"] / best["ssd300_vgg16"]["full"]
    print(f"ours / ssd300_vgg16 (full): {ratio:.2f}x")
    if not args.quick:
        result = {
            "images_per_s": best,
            "ratio_vs_ssd300_vgg16_full": round(ratio, 3),
            "goal": "ours >= ssd300_vgg16 (ratio >= 1)",
            "parameters_m": {
                "ours_resnet18_ssd": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                "ssd300_vgg16": round(sum(p.numel() for p in vgg.parameters()) / 1e6, 2),
                "ssdlite320_mobilenet_v3_large": round(
                    sum(p.numel() for p in lite.parameters()) / 1e6, 2
                ),
            },
            "settings": {
                "batch": args.batch,
                "size": args.size,
                "rounds": rounds,
                "repeats": repeats,
            },
            **environment(),
        }
        print(f"wrote {write_result('detect_speed', result)}")


if __name__ == "__main__":
    main()
