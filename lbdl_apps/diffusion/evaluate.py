"""`lbdl diffusion evaluate`: generate samples and compare them with real images on the
features of a `lbdl classify` model (Fréchet distance, KID); for a class-conditional model,
also that classifier's accuracy on the samples of each requested class."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from lbdl_apps.core.checkpoint import atomic_path
from lbdl_apps.core.cli_common import Common
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.diffusion.api import Diffuser, Samples, load, save_samples
from lbdl_apps.diffusion.data import load_diffusion_data, to_unit
from lbdl_apps.diffusion.metrics import ClassifierFeatures, class_accuracy, distribution_scores


@dataclass
class EvalResult:
    scores: dict[str, float]  # fd, kid, kid_std, and mean_class_acc for class models
    per_class: dict[str, float]  # classifier accuracy on the samples of each class
    samples: int
    real: int
    folder: Path
    seconds: float


def real_images(diffuser: Diffuser, data: str | None, count: int, seed: int) -> tuple[Any, str]:
    """Up to `count` real images in [0, 1], batched: the test split of --data (or all of it),
    or, without --data, the checkpoint's own data (fresh scenes for the built-in data)."""
    meta, (channels, size, _) = diffuser.meta, diffuser.shape
    source = data if data is not None else meta.get("data")
    builtin_seed = meta.get("seed", 0) + 1 if source is None else seed  # unseen scenes
    loaded = load_diffusion_data(
        source,
        size,
        channels,
        builtin_seed,
        builtin_count=count,
        scene_label=meta.get("scene_label", "color-shape"),
    )
    dataset = loaded.real if loaded.real is not None else loaded.train
    if len(dataset) == 0:
        raise LbdlError(f"{source}: no real images to compare with")
    picks = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:count])
    loader = DataLoader(Subset(dataset, picks.tolist()), batch_size=256)
    described = f"{source or 'built-in scenes'}" + (" (test split)" if loaded.real else "")
    return (to_unit(batch[0]) for batch in loader), f"{described}, {len(picks)} images"


def run_evaluation(
    checkpoint: Path,
    classifier_checkpoint: Path,
    data: str | None,
    out: Path | None,
    common: Common,
    n: int = 500,
    n_real: int = 2000,
    classes: list[str] | None = None,
    prompts: list[str] | None = None,
    steps: int = 50,
    sampler: str = "ddpm",
    guidance: float | None = None,
    batch_size: int = 100,
) -> EvalResult:
    """Sample `n` images (spread evenly over the requested classes), then score them."""
    from lbdl_apps.classify.api import load as load_classifier

    if n < 2 or n_real < 2:
        raise LbdlError(f"--n {n} / --n-real {n_real}: the statistics need at least 2 images")
    diffuser = load(checkpoint, common.torch_device())
    classifier = load_classifier(classifier_checkpoint, common.torch_device())
    features = ClassifierFeatures(classifier)
    wanted: torch.Tensor | None = None
    if diffuser.condition == "class":
        classes = classes or list(diffuser.labels)
        names = [c.lower() for c in classifier.labels]
        missing = [c for c in classes if c.lower() not in names]
        if missing:
            known = ", ".join(classifier.labels[:10])
            raise LbdlError(
                f"--classifier {classifier_checkpoint}: has no class {missing[0]!r} of the "
                f"diffusion model (its classes: {known})"
            )
        n = math.ceil(n / len(classes)) * len(classes)
    t0 = time.perf_counter()
    samples = diffuser.sample(
        n,
        prompts=prompts,
        classes=classes,
        steps=steps,
        sampler=sampler,
        guidance=guidance,
        seed=common.seed,
        batch_size=batch_size,
        quiet=common.quiet,
    )
    seconds = time.perf_counter() - t0
    real, described = real_images(diffuser, data, n_real, common.seed)
    fake = samples.images.split(256)
    scores = distribution_scores(features, real, fake)
    per_class: dict[str, float] = {}
    if diffuser.condition == "class":
        wanted = torch.tensor([names.index(c.lower()) for c in samples.conditions])
        hits = class_accuracy(features, samples.images, wanted)
        for name in classes:  # type: ignore[union-attr]
            chosen = torch.tensor([c == name for c in samples.conditions])
            per_class[name] = float(hits[chosen].mean())
        scores["mean_class_acc"] = float(np.mean(list(per_class.values())))
    folder = out or Path(checkpoint).resolve().parent / "evaluate"
    _write(
        folder,
        samples,
        scores,
        per_class,
        checkpoint,
        classifier_checkpoint,
        described,
        steps,
        sampler,
        guidance,
        seconds,
        common.seed,
    )
    return EvalResult(scores, per_class, n, n_real, folder, seconds)


def _write(
    folder: Path,
    samples: Samples,
    scores: dict,
    per_class: dict,
    checkpoint: Path,
    classifier: Path,
    real: str,
    steps: int,
    sampler: str,
    guidance: float | None,
    seconds: float,
    seed: int,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shown = Samples(samples.images[:100], samples.conditions[:100])
    save_samples(shown, folder / "samples")
    summary = {
        "checkpoint": str(checkpoint),
        "classifier": str(classifier),
        "real": real,
        "samples": len(samples.images),
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "sampling_seconds": round(seconds, 2),
        **scores,
        "per_class_acc": per_class,
    }
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
