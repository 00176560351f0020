"""Built-in scenes: `lbdl detect` (SSD, small ResNet backbone, 64 px) trained on the scenes
made on the fly, then mAP@.5 and mAP@[.5:.95] on held-out scenes from another stream.
Goal: mAP@.5 >= 0.90 after at most 10 minutes of CPU training. Records the wall time and
the process CPU time (the machine is shared: CPU time is what the training itself used).

    python bench/detect_scenes.py --quick   # under ~2 minutes, prints only
    python bench/detect_scenes.py           # full: writes bench/results/detect_scenes.json
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


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that only prints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train_args = TrainArgs(
            epochs=1 if quick else args.epochs,
            scenes=128 if quick else args.scenes,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=0.3,
            run_dir=run_dir,
        )
        common = Common(threads=args.threads, seed=args.seed, quiet=quick)
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        best = train(train_args, common)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        held_out = EvaluateArgs(
            checkpoint=str(run_dir / "model.safetensors"), out=Path(tmp) / "eval"
        )
        evaluation = evaluate(held_out, common)  # the held-out scenes of the other stream
        scores, per_class = evaluation.scores, evaluation.per_class
    result = {
        "map_50": scores["map_50"],
        "map": scores["map"],
        "map_75": scores["map_75"],
        "ap_per_class": per_class,
        "goal_map_50": 0.90,
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "best_epoch": best.get("epoch"),
        "held_out_scenes": max(train_args.scenes // 5, 8),
        "settings": {
            "epochs": train_args.epochs,
            "scenes": train_args.scenes,
            "batch_size": train_args.batch_size,
            "lr": train_args.lr,
            "image_size": 64,
            "backbone": "resnet-small",
        },
        **environment(),
    }
    print(
        f"mAP@.5 {scores['map_50']:.4f}  mAP@[.5:.95] {scores['map']:.4f}  "
        f"train {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU (threads {args.threads})"
    )
    if not quick:
        print(f"wrote {write_result('detect_scenes', result)}")


if __name__ == "__main__":
    main()
