"""Training and evaluation runs of `lbdl denoise`, shared by the CLI, the tour and the benchmark."""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.distributed import finish_run, init_distributed, is_main_process
from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.runs import make_run_dir, save_run_config, start_run
from lbdl_apps.core.train import TrainConfig, Trainer, TrainOptions
from lbdl_apps.denoise.api import TASK, Restorer, load
from lbdl_apps.denoise.data import (
    CenterPairs,
    DenoiseData,
    ImageSource,
    PatchPairs,
    default_patches_per_epoch,
    describe,
    load_denoise_data,
)
from lbdl_apps.denoise.degrade import apply_all, classical_baseline, parse_specs
from lbdl_apps.denoise.model import build_model, default_config

LOSSES = ("mse", "l1")
DEFAULT_DEGRADE = ("gaussian:25",)


@dataclass
class TrainArgs(TrainOptions):
    """Everything `lbdl denoise train` was asked for; saved as the run's config.json."""

    model: str = "unet"
    batch_size: int = 16
    degrade: list[str] = field(default_factory=lambda: list(DEFAULT_DEGRADE))
    patch_size: int = 64
    patches_per_epoch: int | None = None
    width: int | None = None
    depth: int | None = None
    channels: int | None = None
    loss: str = "mse"
    warmup: float = 0.5


def _model_config(args: TrainArgs, channels: int) -> dict[str, Any]:
    config = default_config(args.model, channels)
    if args.width is not None:
        config["width"] = args.width
    if args.depth is not None:
        config["depth"] = args.depth
    return config


def restoration_loss(
    model: nn.Module, batch: tuple[Tensor, Tensor], kind: str = "mse"
) -> tuple[Tensor, dict[str, Any]]:
    """MSE (or L1) between the restored and the clean patches; PSNR of the batch as a metric."""
    degraded, clean = batch
    restored = model(degraded)
    mse = F.mse_loss(restored.float(), clean)
    loss = mse if kind == "mse" else F.l1_loss(restored.float(), clean)
    return loss, {"psnr": -10.0 * torch.log10(mse.detach().clamp(min=1e-10))}


@torch.no_grad()
def evaluate_restorer(model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Mean per-image PSNR and SSIM (data range 1) of the model's output and of its input."""
    local = {"data_range": 1.0, "sync_on_compute": False}  # under torchrun only rank 0 evaluates
    psnr = PeakSignalNoiseRatio(reduction="elementwise_mean", dim=(1, 2, 3), **local)
    psnr_in = PeakSignalNoiseRatio(reduction="elementwise_mean", dim=(1, 2, 3), **local)
    ssim = StructuralSimilarityIndexMeasure(**local)
    model.eval()
    for degraded, clean in loader:
        restored = model(degraded.to(device)).float().cpu().clamp(0, 1)
        psnr.update(restored, clean)
        psnr_in.update(degraded.clamp(0, 1), clean)
        ssim.update(restored, clean)
    return {
        "val_psnr": psnr.compute().item(),
        "val_ssim": ssim.compute().item(),
        "val_input_psnr": psnr_in.compute().item(),
    }


def make_datasets(data: DenoiseData, args: TrainArgs) -> tuple[PatchPairs, CenterPairs | None]:
    degradations = parse_specs(args.degrade)
    length = args.patches_per_epoch or default_patches_per_epoch(len(data.train))
    train = PatchPairs(data.train, degradations, args.patch_size, length, data.channels)
    val = None
    if len(data.val):
        val = CenterPairs(data.val, degradations, args.patch_size, data.channels)
    return train, val


def run_training(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint (by validation PSNR); return the best epoch's metrics."""
    args, common = start_run(args, common, TASK)
    if args.loss not in LOSSES:
        raise LbdlError(f"--loss {args.loss}: choose one of {', '.join(LOSSES)}")
    if args.patch_size < 8:
        raise LbdlError(f"--patch-size {args.patch_size}: must be at least 8")
    degradations = parse_specs(args.degrade)
    config = _model_config(args, 3)  # checks --model before any data is read
    device = init_distributed(common.torch_device())
    console = Console(quiet=common.quiet or not is_main_process())
    data = load_denoise_data(
        args.data,
        degradations,
        channels=args.channels,
        val_fraction=args.val_fraction,
        seed=common.seed,
        skip_bad=args.skip_bad,
    )
    config = _model_config(args, data.channels)
    model = build_model(config)
    factor = getattr(model, "factor", 1)
    if args.patch_size % factor:
        raise LbdlError(
            f"--patch-size {args.patch_size}: must be a multiple of {factor} for this U-Net "
            f"(2 ** (depth - 1))"
        )
    train_set, val_set = make_datasets(data, args)
    console.print(
        f"data: {data.source}; {len(data.train)} train, {len(data.val)} val images; "
        f"{len(train_set)} patches of {args.patch_size} px per epoch; degradation "
        f"{describe(degradations)}; {data.channels}-channel {args.model} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)"
    )
    run_dir = make_run_dir(TASK, args.name, args.run_dir, args.exist_ok or args.resume is not None)
    save_run_config(run_dir, TASK, args, common, config)
    meta = {
        "task": TASK,
        "config": config,
        "degradations": [d.spec for d in degradations],
        "preprocessing": {"channels": data.channels, "range": [0, 1], "multiple": factor},
        "data": args.data,
        "seed": common.seed,
        "val_fraction": args.val_fraction,
        "patch_size": args.patch_size,
    }
    trainer = Trainer(
        model,
        train_set,
        val_set,
        loss_fn=partial(restoration_loss, kind=args.loss),
        evaluate_fn=evaluate_restorer,
        config=TrainConfig.from_args(
            args,
            common.seed,
            monitor="val_psnr" if val_set is not None else "val_loss",
            mode="max" if val_set is not None else "min",
        ),
        run_dir=run_dir,
        device=device,
        checkpoint_meta=meta,
        quiet=common.quiet,
    )
    best = trainer.fit(resume=args.resume is not None)
    finish_run(run_dir)
    return best


# ----------------------------------------------------------------------------------------------
# Evaluation on full images


def psnr_255(clean: np.ndarray, other: np.ndarray) -> float:
    """PSNR with peak 255 in float64 (the benchmark protocol: not clipped)."""
    mse = np.mean((clean.astype(np.float64) * 255.0 - other.astype(np.float64) * 255.0) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim_01(clean: np.ndarray, other: np.ndarray) -> float:
    """SSIM (torchmetrics, data range 1) of two float (H, W, C) images, `other` clipped."""
    a = torch.from_numpy(np.ascontiguousarray(clean.transpose(2, 0, 1), np.float32))[None]
    b = torch.from_numpy(np.ascontiguousarray(np.clip(other, 0, 1).transpose(2, 0, 1), np.float32))
    return float(ssim_fn(b[None], a, data_range=1.0))


@dataclass
class EvalResult:
    scores: dict[str, dict[str, float]]  # method -> psnr, ssim, seconds_per_image
    per_image: list[dict[str, Any]]
    baseline: str
    images: int
    folder: Path


def evaluation_images(restorer: Restorer, data: str | None) -> tuple[ImageSource, str]:
    """With --data: all its images; otherwise the validation images of the checkpoint's data."""
    meta = restorer.meta
    specs = restorer.degradations
    channels = restorer.channels
    if data is not None:
        loaded = load_denoise_data(data, specs, channels=channels, val_fraction=0.0)
        return loaded.train, str(data)
    source = meta.get("data")
    loaded = load_denoise_data(
        source,
        specs,
        channels=channels,
        val_fraction=meta.get("val_fraction", 0.1),
        seed=meta.get("seed", 0),
    )
    if len(loaded.val) == 0:
        raise LbdlError(
            f"{source}: the checkpoint's data has no validation images; pass --data FOLDER"
        )
    return loaded.val, f"{source or 'built-in'} (validation images)"


def run_evaluation(
    checkpoint: Path,
    data: str | None,
    out: Path | None,
    degrade: list[str] | None,
    common: Common,
    tile: int = 256,
    overlap: int = 32,
    baseline: bool = True,
    console: Console | None = None,
) -> EvalResult:
    """PSNR/SSIM of the degraded input, the classical baseline and the model on full images,
    each degraded with a fixed seed per image (the benchmark protocol for Gaussian noise:
    a fresh RandomState(seed) per image, sigma on the 0-255 scale, PSNR not clipped);
    writes metrics.json and per_image.csv into the output folder."""
    restorer = load(checkpoint, common.torch_device())
    specs = parse_specs(degrade) if degrade else restorer.degradations
    images, described = evaluation_images(restorer, data)
    fixed = all(d.fixed for d in specs)
    methods = ["input", "baseline", "model"]
    sums = {m: {"psnr": 0.0, "ssim": 0.0, "seconds": 0.0} for m in methods}
    rows = []
    baseline_name = "input"
    for i in range(len(images)):
        clean = images[i].astype(np.float64)
        if clean.shape[2] < restorer.channels:
            clean = np.repeat(clean, 3, axis=2)
        # fixed levels: RandomState(seed) for every image (the protocol); ranges: one seed each
        rng = np.random.RandomState(common.seed if fixed else common.seed + i)
        degraded, infos = apply_all(clean, specs, rng)
        outputs: dict[str, np.ndarray] = {"input": degraded}
        t0 = time.perf_counter()
        if baseline:
            baseline_name, outputs["baseline"] = classical_baseline(degraded, infos)
        t1 = time.perf_counter()
        outputs["model"] = restorer.restore_array(degraded, tile, overlap).astype(np.float64)
        t2 = time.perf_counter()
        row: dict[str, Any] = {"image": images.name(i), "height": clean.shape[0],
                               "width": clean.shape[1]}  # fmt: skip
        for method, output in outputs.items():
            psnr, ssim = psnr_255(clean, output), ssim_01(clean, output)
            row[f"{method}_psnr"], row[f"{method}_ssim"] = round(psnr, 4), round(ssim, 5)
            sums[method]["psnr"] += psnr
            sums[method]["ssim"] += ssim
        sums["baseline"]["seconds"] += t1 - t0
        sums["model"]["seconds"] += t2 - t1
        row["strengths"] = ";".join(
            f"{x['kind']}={x['strength']:g}" for x in infos if "strength" in x
        )
        rows.append(row)
    n = len(rows)
    scores = {
        (baseline_name if m == "baseline" else m): {
            "psnr": sums[m]["psnr"] / n,
            "ssim": sums[m]["ssim"] / n,
            "seconds_per_image": sums[m]["seconds"] / n,
        }
        for m in methods
        if m != "baseline" or (baseline and baseline_name != "input")  # no duplicate row
    }
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "metrics.json") as tmp:
        summary = {
            "checkpoint": str(checkpoint),
            "data": described,
            "images": n,
            "degradations": [d.spec for d in specs],
            "seed": common.seed,
            "protocol": "per image RandomState(seed) (ranges: seed + index); PSNR peak 255, "
            "float64, degraded input not clipped; SSIM data range 1",
            "baseline": baseline_name,
            "psnr": {k: v["psnr"] for k, v in scores.items()},
            "ssim": {k: v["ssim"] for k, v in scores.items()},
            "seconds_per_image": {k: v["seconds_per_image"] for k, v in scores.items()},
            "model_gain_db": scores["model"]["psnr"] - scores["input"]["psnr"],
        }
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(folder / "per_image.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not all(math.isfinite(v["psnr"]) for v in scores.values()):
        report("warning: some images are restored exactly (infinite PSNR)")
    return EvalResult(scores, rows, baseline_name, n, folder)
