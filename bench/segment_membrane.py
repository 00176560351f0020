"""EM membrane segmentation: `lbdl segment` (U-Net) trained on ../shared/data/membrane/train
with a seeded 5 of its 25 images held out; pixel accuracy, the IoU of each class (class 0 =
membrane, the hard one; class 1 = cell) and mIoU on the held-out images at full size
(sliding window) with the last epoch's weights, plus the wall time. Goal: pixel accuracy
>= 0.92, membrane IoU >= 0.70. The same figures with `--tta` (mean over the four flips of
each image) are reported beside, and those of the best epoch's checkpoint, which training
picks on these same held-out images (so they flatter it).

Also inference images/s of this U-Net and of torchvision's fcn_resnet50 (random weights,
no backbone weights) at the same input size and batch, measured in turn (A B A B, best of
each) in the same process.

    python bench/segment_membrane.py --quick   # under ~2 minutes, prints only
    python bench/segment_membrane.py           # full: writes bench/results/segment_membrane.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from lbdl_apps.core.options import Common
from lbdl_apps.segment.api import load
from lbdl_apps.segment.cli import EvaluateArgs, TrainArgs
from lbdl_apps.segment.task import Evaluation, evaluate
from lbdl_apps.segment.task import train as train_model

try:  # python bench/x.py puts bench/ first on sys.path; python -m bench.x does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane" / "train"


def held_out(checkpoint: Path, out: Path, common: Common, tta: bool = False) -> Evaluation:
    """`lbdl segment evaluate CHECKPOINT --split val [--tta]`: the seeded held-out images."""
    args = EvaluateArgs(checkpoint=str(checkpoint), out=out, split="val", tta=tta)
    return evaluate(args, common)


def images_per_s(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(batch)
        return repeats * len(batch) / (time.perf_counter() - start)


def inference_speed(unet: torch.nn.Module, size: int, batch: int, rounds: int, repeats: int):
    """Images/s of our U-Net (1 gray channel) and fcn_resnet50 (3 channels, the gray image
    repeated), batch x size x size, alternating A B A B, best of each."""
    torch.manual_seed(0)
    fcn = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=2, aux_loss=False
    ).eval()
    unet = unet.eval()
    gray = torch.rand(batch, 1, size, size)
    rgb = gray.expand(-1, 3, -1, -1).contiguous()
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(images_per_s(unet, gray, repeats))
        theirs.append(images_per_s(lambda x: fcn(x)["out"], rgb, repeats))
    return max(ours), max(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that only prints")
    parser.add_argument("--result", default="segment_membrane", help="name of the JSON written")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=int, default=16, help="U-Net base width")
    parser.add_argument("--elastic", type=float, default=0.0, help="elastic deformation, pixels")
    parser.add_argument("--ema", type=float, default=None, help="EMA decay of the weights")
    parser.add_argument("--dice", type=float, default=0.5, help="weight of the Dice loss")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: absent (the membrane data lives beside the project)")
    torch.set_num_threads(args.threads)
    quick = args.quick
    train_args = TrainArgs(
        data=str(args.data),
        model="unet",
        width=args.width,
        depth=4,
        blocks=2,
        image_size=128,
        epochs=args.epochs or (2 if quick else 40),
        repeat=4 if quick else 16,
        batch_size=8,
        lr=5e-3,
        warmup=1.0,
        val_fraction=0.2,  # 5 of 25 images held out (seeded)
        dice=args.dice,
        elastic=args.elastic,
        ema=args.ema,
    )
    common = Common(threads=args.threads, seed=args.seed, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_args.run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        train_model(train_args, common)
        train_s = time.perf_counter() - start
        # the held-out images are also the validation set that picks model.safetensors, the
        # best epoch: the figures come from the last epoch's weights, chosen by nothing
        checkpoint = train_args.run_dir / "last.safetensors"
        start = time.perf_counter()
        last = held_out(checkpoint, Path(tmp) / "eval", common)
        scores, iou, labels = last.scores, last.iou, last.labels
        eval_s = time.perf_counter() - start
        tta = held_out(checkpoint, Path(tmp) / "tta", common, tta=True)
        flipped, flipped_iou = tta.scores, tta.iou
        chosen = held_out(train_args.run_dir / "model.safetensors", Path(tmp) / "best", common)
        best, best_iou = chosen.scores, chosen.iou
        unet = load(checkpoint).model
    ours, fcn = inference_speed(unet, 256, 4, rounds=1 if quick else 3, repeats=1 if quick else 3)
    figures = {
        "pixel_acc": round(scores["pixel_acc"], 4),
        "membrane_iou": round(iou[0], 4),
        "cell_iou": round(iou[1], 4),
        "miou": round(scores["miou"], 4),
        "constant_miou": round(scores["constant_miou"], 4),
        "tta_pixel_acc": round(flipped["pixel_acc"], 4),
        "tta_membrane_iou": round(flipped_iou[0], 4),
        "tta_miou": round(flipped["miou"], 4),
        "best_epoch_pixel_acc": round(best["pixel_acc"], 4),
        "best_epoch_membrane_iou": round(best_iou[0], 4),
        "train_s": round(train_s, 1),
        "evaluate_s": round(eval_s, 1),
        "unet_images_per_s": round(ours, 2),
        "fcn_resnet50_images_per_s": round(fcn, 2),
        "unet_vs_fcn_resnet50": round(ours / fcn, 2),
    }
    goals = {"pixel_acc": 0.92, "membrane_iou": 0.70}
    result = {
        "figures": figures,
        "goals": goals,
        "goals_met": all(figures[k] >= v for k, v in goals.items()),
        "protocol": {
            "data": str(args.data),
            "held_out": f"5 of 25 images, seeded split (seed {args.seed})",
            "classes": labels,
            "class_0": "membrane (mask value 0)",
            "train": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(train_args).items()
                if k != "run_dir"
            },
            "inference": "batch 4 of 256x256, eval mode, no_grad; U-Net 1 channel, "
            "fcn_resnet50 3 channels, random weights; best of alternating rounds",
        },
        **environment(),
        "torchvision": torchvision.__version__,
    }
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print("goals met" if result["goals_met"] else "goals NOT met", goals)
    if not quick:
        print(f"written: {write_result(args.result, result)}")


if __name__ == "__main__":
    main()
