"""Raccoon detection: `lbdl detect` trained on ../shared/data/raccoon (160 images, Pascal
VOC XML, one class) with a seeded fifth held out; mAP@.5 and mAP@[.5:.95] on the held-out
images, the wall time and the process CPU time. No pretrained weights can be downloaded
here, so the SSD learns from scratch (a small ResNet backbone at 128 px by default); with
ImageNet weights, add --backbone resnet18 --pretrained DEFAULT.

    python bench/detect_raccoon.py --quick   # under ~2 minutes, prints only
    python bench/detect_raccoon.py           # full: writes bench/results/detect_raccoon.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from lbdl_apps.core.options import Common
from lbdl_apps.detect.cli import EvaluateArgs, TrainArgs
from lbdl_apps.detect.task import evaluate, train

try:  # python bench/x.py puts bench/ first on sys.path; python -m bench.x does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon"


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that only prints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbone", default="resnet-small")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: absent (the raccoon data lives beside the project)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train_args = TrainArgs(
            data=str(args.data),
            backbone=args.backbone,
            pretrained=args.pretrained,
            image_size=args.image_size,
            epochs=2 if args.quick else args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=1.0,
            val_fraction=0.2,
            run_dir=run_dir,
        )
        common = Common(threads=args.threads, seed=args.seed, quiet=args.quick)
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        best = train(train_args, common)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        held_out = EvaluateArgs(
            checkpoint=str(run_dir / "model.safetensors"), out=Path(tmp) / "eval"
        )
        scores = evaluate(held_out, common).scores  # the seeded held-out fifth
    result = {
        "map_50": scores["map_50"],
        "map": scores["map"],
        "map_75": scores["map_75"],
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "best_epoch": best.get("epoch"),
        "split": "seeded 80/20 of the 160 shared images (128 train, 32 held out)",
        "settings": {
            k: getattr(train_args, k)
            for k in ("backbone", "pretrained", "image_size", "epochs", "batch_size", "lr")
        },
        **environment(),
    }
    print(
        f"mAP@.5 {scores['map_50']:.4f}  mAP@[.5:.95] {scores['map']:.4f}  "
        f"train {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU (threads {args.threads})"
    )
    if not args.quick:
        print(f"wrote {write_result('detect_raccoon', result)}")


if __name__ == "__main__":
    main()
