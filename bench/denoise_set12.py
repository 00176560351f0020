"""Set12 denoising at sigma 25 with `lbdl denoise train`: PSNR of our model against OpenCV
non-local means and BM3D measured in the same run, with the BENCHMARKS.md protocol.

The model is trained by the same code path as the CLI (`task.train` with `TrainArgs`) on
../shared/data/denoise/train400 (5% held out for choosing the best epoch) with a fixed noise
level (gaussian:25), for as many epochs as a short calibration says fit in the training budget
(20 wall-clock minutes by default). It is then scored on Set12 by `task.evaluate` (what
`lbdl denoise evaluate --data set12` runs): per image a fresh np.random.RandomState(0), noise
on the 0-255 scale, not clipped, PSNR with peak 255 in float64; OpenCV NLM (h = 0.9 sigma) is
measured there on the same noisy images, and BM3D (`bm3d` package, the [bench] extra) here.
Goal: NLM + 1.5 dB (~29.4 dB) within 20 minutes of CPU training; the real goal (a longer or
GPU run) is to beat BM3D (~30.0 dB) and approach DnCNN's published 30.44 dB.

    python bench/denoise_set12.py --quick      # < 2 minutes: a sliver of training, 2 BM3D images
    python bench/denoise_set12.py              # writes bench/results/denoise_set12.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lbdl_apps.core.options import Common
from lbdl_apps.denoise.cli import EvaluateArgs, TrainArgs
from lbdl_apps.denoise.metrics import psnr_255
from lbdl_apps.denoise.model import RestorerConfig, build_model, default_config
from lbdl_apps.denoise.task import evaluate
from lbdl_apps.denoise.task import train as train_model

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import command, environment, now, write_result
except ImportError:
    from bench.common import command, environment, now, write_result

NAME = "denoise_set12"
REPO = Path(__file__).resolve().parents[1]
TRAIN = "../shared/data/denoise/train400"  # relative to the repository root
TEST = "../shared/data/denoise/set12"
SIGMA = 25
BUDGET_S = 20 * 60
NLM_PUBLISHED, BM3D_PUBLISHED, DNCNN_PUBLISHED = 27.91, 29.97, 30.44
GOAL_OVER_NLM = 1.5
PATCHES_PER_EPOCH = 3200
QUICK_PATCHES = 96


def calibrate(args: TrainArgs, seconds: float = 8.0) -> float:
    """Training patches per second of this model on this machine, now (a few real steps)."""
    config = default_config(args.model, 1)
    config = replace(
        config, **{k: v for k, v in {"width": args.width, "depth": args.depth}.items() if v}
    )
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch_size, 1, args.patch_size, args.patch_size)
    done, start = 0, None
    while True:
        loss = (model(x) - x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if start is None:  # the first step warms up the kernels
            start = time.perf_counter()
            continue
        done += len(x)
        if time.perf_counter() - start > seconds:
            return done / (time.perf_counter() - start)


def run_bm3d(test: Path, limit: int | None) -> dict[str, Any]:
    """BM3D on Set12 (the protocol's noisy images); skipped with a note when not installed."""
    try:
        import bm3d
    except ImportError:
        return {"skipped": "the bm3d package is not installed (pip install bm3d, or .[bench])"}
    paths = sorted(test.glob("*.png"))[:limit]
    psnrs, start = [], time.perf_counter()
    for path in paths:
        clean = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        noisy = clean + np.random.RandomState(0).normal(0, SIGMA, clean.shape)
        denoised = bm3d.bm3d(noisy / 255.0, sigma_psd=SIGMA / 255.0)
        psnrs.append(psnr_255(clean[:, :, None] / 255, np.asarray(denoised)[:, :, None]))
    seconds = time.perf_counter() - start
    return {
        "psnr": round(float(np.mean(psnrs)), 3),
        "images": len(paths),
        "seconds_per_image": round(seconds / len(paths), 2),
        "version": getattr(bm3d, "__version__", "installed"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check that it runs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--model", default="unet", help="unet (default) or dncnn")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=BUDGET_S / 60, help="training budget")
    parser.add_argument("--epochs", type=int, help="instead of the calibrated count")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bm3d", action="store_true", help="do not run BM3D")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    parser.add_argument("--run-root", type=Path, help="keep the run folder here")
    cli = parser.parse_args()
    train, test = REPO / TRAIN, REPO / TEST
    for folder in (train, test):
        if not folder.is_dir():
            parser.error(f"{folder}: no such folder (the shared denoising data)")
    common = Common(device=cli.device, threads=cli.threads, seed=cli.seed, quiet=cli.quiet)
    common.apply()
    run_root = cli.run_root or Path(tempfile.mkdtemp(prefix="lbdl-bench-denoise-"))
    run_dir = run_root / f"set12-{time.strftime('%Y%m%d-%H%M%S')}"
    args = TrainArgs(
        data=str(train),
        model=cli.model,
        width=cli.width,
        depth=cli.depth,
        degrade=[f"gaussian:{SIGMA}"],
        patch_size=cli.patch_size,
        batch_size=cli.batch_size,
        lr=cli.lr,
        val_fraction=0.05,
        warmup=0.3,
        run_dir=run_dir,
    )
    load_before = os.getloadavg()
    start = time.perf_counter()
    if cli.quick:
        speed = None
        args.epochs, args.patches_per_epoch = 1, QUICK_PATCHES
    else:
        speed = calibrate(args)
        budget = cli.minutes * 60 * 0.9  # 10% for data loading, validation and saving
        total = speed * budget  # patches that fit in the budget, in epochs of ~3200
        args.epochs = cli.epochs or max(1, round(total / PATCHES_PER_EPOCH))
        args.patches_per_epoch = max(args.batch_size, int(total / args.epochs))
        print(f"calibration: {speed:.1f} patches/s -> {args.epochs} epochs of "
              f"{args.patches_per_epoch} patches", flush=True)  # fmt: skip
    best = train_model(args, common)
    train_s = time.perf_counter() - start
    evaluation = evaluate(
        EvaluateArgs(
            checkpoint=str(run_dir / "model.safetensors"),
            data=str(test),
            out=run_dir / "set12",
            degrade=[f"gaussian:{SIGMA}"],
        ),
        common,
    )
    scores = evaluation.scores
    bm3d = {"skipped": "--no-bm3d"} if cli.no_bm3d else run_bm3d(test, 2 if cli.quick else None)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    model_psnr, nlm_psnr = scores["model"]["psnr"], scores["opencv-nlm"]["psnr"]
    config = RestorerConfig(**json.loads((run_dir / "config.json").read_text())["model"])
    params = sum(p.numel() for p in build_model(config).parameters())
    result: dict[str, Any] = {
        "benchmark": NAME,
        "train_data": TRAIN,
        "test_data": TEST,
        "sigma": SIGMA,
        "protocol": "per image RandomState(0), noise on 0-255, not clipped; PSNR peak 255 "
        "float64, averaged over the 12 images",
        "psnr": {
            "noisy_input": round(scores["input"]["psnr"], 3),
            "opencv_nlm": round(nlm_psnr, 3),
            "bm3d": bm3d.get("psnr"),
            "model": round(model_psnr, 3),
        },
        "ssim": {k: round(v["ssim"], 4) for k, v in scores.items()},
        "gain_over_nlm_db": round(model_psnr - nlm_psnr, 3),
        "gain_over_bm3d_db": round(model_psnr - bm3d["psnr"], 3) if "psnr" in bm3d else None,
        "seconds_per_image": {
            "opencv_nlm": round(scores["opencv-nlm"]["seconds_per_image"], 3),
            "model": round(scores["model"]["seconds_per_image"], 3),
            "bm3d": bm3d.get("seconds_per_image"),
        },
        "bm3d": bm3d,
        "published": {
            "nlm_measured_here": NLM_PUBLISHED,
            "bm3d": BM3D_PUBLISHED,
            "dncnn_s": DNCNN_PUBLISHED,
        },
        "training": {
            "train_s": round(train_s, 1),
            "epochs": len(rows),
            "patches_per_epoch": args.patches_per_epoch,
            "calibrated_patches_per_s": round(speed, 2) if speed else None,
            "best_val_psnr": round(best.get("val_psnr", float("nan")), 3),
            "val_psnr_per_epoch": [round(r.get("val_psnr", float("nan")), 3) for r in rows],
            "params": params,
            "args": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in asdict(args).items()
                if k != "run_dir"
            },
        },
        "wall_s": round(wall, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "opencv": __import__("cv2").__version__,
        },
        "threads": torch.get_num_threads(),
        "date": now(),
        "command": command(),
    }
    goal = nlm_psnr + GOAL_OVER_NLM
    result["goal"] = {
        "psnr_at_least": round(goal, 3),
        "train_s_at_most": BUDGET_S,
        "psnr_met": model_psnr >= goal,
        "time_met": train_s <= BUDGET_S,
    }
    result["goal"]["met"] = result["goal"]["psnr_met"] and result["goal"]["time_met"]
    bm3d_text = f"{bm3d['psnr']:.2f} dB ({bm3d['images']} images)" if "psnr" in bm3d else (
        f"skipped: {bm3d['skipped']}")  # fmt: skip
    print(
        f"\nSet12 sigma {SIGMA}: noisy {scores['input']['psnr']:.2f} dB, OpenCV NLM "
        f"{nlm_psnr:.2f} dB, BM3D {bm3d_text}, model {model_psnr:.2f} dB "
        f"({model_psnr - nlm_psnr:+.2f} dB over NLM; goal >= {goal:.2f}); training "
        f"{train_s:.0f} s, {len(rows)} epochs; wall {wall:.0f} s; threads "
        f"{torch.get_num_threads()}; load {load_before[0]:.2f} -> {load_after[0]:.2f}",
        flush=True,
    )
    if cli.run_root is None:
        shutil.rmtree(run_root, ignore_errors=True)
    if cli.quick:
        print("quick mode: nothing written (the figures above are not the benchmark's)")
        return
    result["last_run"] = environment()
    path = write_result(NAME, result)
    print(f"{'MET' if result['goal']['met'] else 'NOT MET'}; wrote {path}")


if __name__ == "__main__":
    main()
