"""`lbdl denoise` as a task of core's run (book 6.1): its data, model, loss and validation for
`train`, and `evaluate`: PSNR/SSIM on full images of a split of any data, beside the
degraded input and a classical baseline."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lbdl_apps.core.errors import LbdlError, report
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import atomic_path, output_folder, write_json
from lbdl_apps.core.run import SupervisedTask, TrainingSets, run_training
from lbdl_apps.core.train_state import Monitor
from lbdl_apps.denoise.api import TASK, Restorer, load
from lbdl_apps.denoise.cli import EvaluateArgs, TrainArgs
from lbdl_apps.denoise.data import (
    CenterPairs,
    DenoiseData,
    ImageSource,
    PatchPairs,
    default_patches_per_epoch,
    describe,
    load_denoise_data,
)
from lbdl_apps.denoise.degrade import Degradation, apply_all, classical_baseline, parse_specs
from lbdl_apps.denoise.loss import LOSSES, restoration_loss
from lbdl_apps.denoise.metrics import evaluate_restorer, psnr_255, ssim_01
from lbdl_apps.denoise.model import RestorerConfig, build_model, default_config, size_multiple

PROTOCOL = (
    "per image RandomState(seed) (ranges: seed + index); PSNR peak 255, float64, degraded "
    "input not clipped; SSIM data range 1"
)


class DenoiseTask(SupervisedTask[TrainArgs, DenoiseData]):
    """(degraded, clean) patches made on the fly; the best epoch has the best validation PSNR
    (the lowest training loss when there are no validation images)."""

    name = TASK
    monitor = Monitor("val_psnr", "max")

    def check(self, args: TrainArgs) -> None:
        if args.loss not in LOSSES:
            raise LbdlError(f"--loss {args.loss}: choose one of {', '.join(LOSSES)}")
        parse_specs(args.degrade)
        default_config(args.model, 3)  # an unknown --model, before any data is read

    def load_data(self, args: TrainArgs, seed: int) -> DenoiseData:
        return load_denoise_data(
            args.data,
            parse_specs(args.degrade),
            channels=args.channels,
            val_fraction=args.val_fraction,
            seed=seed,
            skip_bad=args.skip_bad,
        )

    def model_config(self, args: TrainArgs, data: DenoiseData) -> RestorerConfig:
        config = default_config(args.model, data.channels)
        if args.width is not None:
            config = replace(config, width=args.width)
        if args.depth is not None:
            config = replace(config, depth=args.depth)
        multiple = size_multiple(config)
        if args.patch_size % multiple:
            raise LbdlError(
                f"--patch-size {args.patch_size}: must be a multiple of {multiple} for this "
                "U-Net (2 ** (depth - 1))"
            )
        return config

    build_model = staticmethod(build_model)

    def datasets(self, args: TrainArgs, data: DenoiseData, model: nn.Module) -> TrainingSets:
        degradations = parse_specs(args.degrade)
        length = args.patches_per_epoch or default_patches_per_epoch(len(data.train))
        train = PatchPairs(data.train, degradations, args.patch_size, length, data.channels)
        val = None
        if len(data.val):
            val = CenterPairs(data.val, degradations, args.patch_size, data.channels)
        self.say(
            f"data: {data.source}; {len(data.train)} train, {len(data.val)} val images; "
            f"{len(train)} patches of {args.patch_size} px per epoch; degradation "
            f"{describe(degradations)}; {data.channels}-channel {args.model} "
            f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)"
        )
        return TrainingSets(train, val)

    def loss(self, args: TrainArgs, data: DenoiseData):
        return partial(restoration_loss, kind=args.loss)

    def evaluator(self, args: TrainArgs, data: DenoiseData, model: nn.Module):
        return evaluate_restorer

    def metadata(self, args: TrainArgs, data: DenoiseData) -> dict[str, Any]:
        multiple = size_multiple(self.model_config(args, data))
        return {
            "degradations": [d.spec for d in parse_specs(args.degrade)],
            "preprocessing": {"channels": data.channels, "range": [0, 1], "multiple": multiple},
            "patch_size": args.patch_size,
        }

    def choose_monitor(self, args: TrainArgs, data: DenoiseData) -> Monitor:
        return self.monitor if len(data.val) else Monitor("val_loss", "min")


def train(args: TrainArgs, common: Common) -> dict[str, float]:
    """Train, keep the best checkpoint (by validation PSNR); return the best epoch's metrics."""
    return run_training(DenoiseTask(), args, common)


# ----------------------------------------------------------------------------------------------
# Evaluation on full images


@dataclass
class EvalResult:
    """The scores of `evaluate` per method (input, baseline, model), per image, and where
    they were written."""

    scores: dict[str, dict[str, float]]  # method -> psnr, ssim, seconds_per_image
    per_image: list[dict[str, Any]]
    baseline: str
    images: int
    folder: Path
    split: str = "all"


def evaluation_images(restorer: Restorer, args: EvaluateArgs) -> tuple[list[ImageSource], str, str]:
    """The clean images `evaluate` scores: the splits of --data (a folder is one split:
    all of it) or of the checkpoint's own data (its validation images) that `--split` means
    (core.evaluation.split_names); with a description of them and the split's label."""
    meta = restorer.meta
    given = args.data is not None
    source = args.data if given else meta.get("data")
    loaded = load_denoise_data(
        source,
        restorer.degradations,
        channels=restorer.channels,
        val_fraction=0.0 if given else meta.get("val_fraction", 0.1),
        seed=meta.get("seed", 0),
    )
    splits = loaded.splits()
    names = split_names(args.split, given, splits, source or "the built-in dead leaves")
    label = split_label(names, splits)
    described = str(source) if given else f"{source or 'built-in'} ({label} images)"
    return [splits[name] for name in names], described, label  # type: ignore[misc]


def _each_image(sources: Sequence[ImageSource], channels: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, clean float64 (H, W, C) image) of every image of the sources, in order."""
    for source in sources:
        for i in range(len(source)):
            clean = source[i].astype(np.float64)
            if clean.shape[2] < channels:
                clean = np.repeat(clean, 3, axis=2)
            yield source.name(i), clean


def _restore_one(
    restorer: Restorer,
    degraded: np.ndarray,
    infos: list[dict[str, Any]],
    args: EvaluateArgs,
) -> tuple[str, dict[str, np.ndarray], dict[str, float]]:
    """The baseline's name, the outputs of each method (input, baseline, model) and the
    seconds the baseline and the model took."""
    outputs: dict[str, np.ndarray] = {"input": degraded}
    baseline = "input"
    t0 = time.perf_counter()
    if args.baseline:
        baseline, outputs["baseline"] = classical_baseline(degraded, infos)
    t1 = time.perf_counter()
    outputs["model"] = restorer.restore_array(degraded, args.tile, args.overlap).astype(np.float64)
    t2 = time.perf_counter()
    return baseline, outputs, {"baseline": t1 - t0, "model": t2 - t1}


def _score_images(
    restorer: Restorer,
    sources: Sequence[ImageSource],
    specs: Sequence[Degradation],
    args: EvaluateArgs,
    seed: int,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]], str]:
    """Per method the sums of PSNR, SSIM and seconds, the per-image rows, and the baseline's
    name; each image degraded with its own fixed seed (the benchmark protocol)."""
    fixed = all(d.fixed for d in specs)
    sums = {m: {"psnr": 0.0, "ssim": 0.0, "seconds": 0.0} for m in ("input", "baseline", "model")}
    rows, baseline = [], "input"
    for i, (name, clean) in enumerate(_each_image(sources, restorer.channels)):
        # fixed levels: RandomState(seed) for every image (the protocol); ranges: one seed each
        rng = np.random.RandomState(seed if fixed else seed + i)
        degraded, infos = apply_all(clean, specs, rng)
        baseline, outputs, seconds = _restore_one(restorer, degraded, infos, args)
        row: dict[str, Any] = {"image": name, "height": clean.shape[0], "width": clean.shape[1]}
        for method, output in outputs.items():
            psnr, ssim = psnr_255(clean, output), ssim_01(clean, output)
            row[f"{method}_psnr"], row[f"{method}_ssim"] = round(psnr, 4), round(ssim, 5)
            sums[method]["psnr"] += psnr
            sums[method]["ssim"] += ssim
        for method, spent in seconds.items():
            sums[method]["seconds"] += spent
        row["strengths"] = ";".join(
            f"{x['kind']}={x['strength']:g}" for x in infos if "strength" in x
        )
        rows.append(row)
    return sums, rows, baseline


def _means(
    sums: dict[str, dict[str, float]], n: int, baseline: str, measured: bool
) -> dict[str, dict[str, float]]:
    """The mean scores per method, the baseline under its own name (no duplicate row when
    the baseline is the input itself)."""
    return {
        (baseline if m == "baseline" else m): {
            "psnr": sums[m]["psnr"] / n,
            "ssim": sums[m]["ssim"] / n,
            "seconds_per_image": sums[m]["seconds"] / n,
        }
        for m in ("input", "baseline", "model")
        if m != "baseline" or (measured and baseline != "input")
    }


def evaluate(args: EvaluateArgs, common: Common) -> EvalResult:
    """PSNR/SSIM of the degraded input, the classical baseline and the model on full images,
    each degraded with a fixed seed per image (the benchmark protocol for Gaussian noise:
    a fresh RandomState(seed) per image, sigma on the 0-255 scale, PSNR not clipped);
    writes metrics.json and per_image.csv into the output folder."""
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    restorer = load(args.checkpoint, common.torch_device(), args)
    specs = parse_specs(args.degrade) if args.degrade else restorer.degradations
    sources, described, split = evaluation_images(restorer, args)
    sums, rows, baseline = _score_images(restorer, sources, specs, args, common.seed)
    n = len(rows)
    scores = _means(sums, n, baseline, args.baseline)
    summary = {
        "checkpoint": str(args.checkpoint),
        "data": described,
        "split": split,
        "images": n,
        "degradations": [d.spec for d in specs],
        "seed": common.seed,
        "protocol": PROTOCOL,
        "baseline": baseline,
        "psnr": {k: v["psnr"] for k, v in scores.items()},
        "ssim": {k: v["ssim"] for k, v in scores.items()},
        "seconds_per_image": {k: v["seconds_per_image"] for k, v in scores.items()},
        "model_gain_db": scores["model"]["psnr"] - scores["input"]["psnr"],
    }
    write_json(folder / "metrics.json", summary)
    with atomic_path(folder / "per_image.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not all(math.isfinite(v["psnr"]) for v in scores.values()):
        report("warning: some images are restored exactly (infinite PSNR)")
    return EvalResult(scores, rows, baseline, n, folder, split)
