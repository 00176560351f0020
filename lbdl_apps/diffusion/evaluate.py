"""`lbdl diffusion evaluate`: generate samples and compare them with real images on the
features of a `lbdl classify` model (Fréchet distance, KID); for a class-conditional model,
also that classifier's accuracy on the samples of each requested class."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from lbdl_apps.classify.api import Classifier
from lbdl_apps.classify.api import load as load_classifier
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.core.evaluation import split_label, split_names
from lbdl_apps.core.options import Common
from lbdl_apps.core.outputs import output_folder, write_json
from lbdl_apps.diffusion.api import Diffuser, Samples, load, save_samples
from lbdl_apps.diffusion.cli import EvaluateArgs
from lbdl_apps.diffusion.data import builtin_scenes, load_diffusion_data, to_unit
from lbdl_apps.diffusion.metrics import ClassifierFeatures, class_accuracy, distribution_scores


@dataclass
class Evaluation:
    """What `evaluate` measured and where it wrote it."""

    scores: dict[str, float]  # fd, kid, kid_std, and mean_class_acc for class models
    per_class: dict[str, float]  # classifier accuracy on the samples of each class
    samples: int
    real: int
    folder: Path
    seconds: float


@dataclass
class RealImages:
    """The real images compared with the samples: batches in [0, 1], and what they are."""

    batches: Iterator[Tensor]
    count: int
    split: str  # split_label of the splits they come from
    described: str


def real_images(diffuser: Diffuser, args: EvaluateArgs, seed: int) -> RealImages:
    """Up to --n-real real images of the splits --split names (core.evaluation.split_names).

    The model trained on all of its data (nothing was held out), so its own data, like any
    --data, is read whole: no --split is the test split if the data has one, else its val
    split, else all of it. The built-in scenes have two splits: `train`, the scenes the
    model was trained on (made again from its seed and --builtin-count), and `test`, fresh
    scenes of another seed (the default)."""
    meta, (channels, size, _) = diffuser.meta, diffuser.shape
    source = args.data if args.data is not None else meta.get("data")
    if source is None:
        count = meta.get("builtin_count", 6000)
        splits: dict[str, Sized | None] = {"train": range(count), "test": range(args.n_real)}
        names = split_names(args.split, True, splits, "the built-in scenes")
        label, base = meta.get("scene_label", "color-shape"), meta.get("seed", 0)
        made = {"train": (count, base), "test": (args.n_real, base + 1)}  # (scenes, seed)
        parts = [builtin_scenes(made[n][0], size, made[n][1], False, label).train for n in names]
    else:
        found = load_diffusion_data(source, size, channels, seed).splits()
        splits = dict(found)
        names = split_names(args.split, True, splits, source)
        parts = [found[name] for name in names]  # type: ignore[misc]
    dataset: Dataset = ConcatDataset(parts)
    picks = np.sort(np.random.default_rng(seed).permutation(len(dataset))[: args.n_real])
    loader = DataLoader(Subset(dataset, picks.tolist()), batch_size=256)
    described = f"{source or 'built-in scenes'} ({'+'.join(names)}), {len(picks)} images"
    batches = (to_unit(batch[0]) for batch in loader)
    return RealImages(batches, len(picks), split_label(names, splits), described)


def sampled_classes(diffuser: Diffuser, classifier: Classifier, args: EvaluateArgs) -> list[str]:
    """The classes of a class model's samples (--class, else all), each a classifier's."""
    classes = args.classes or list(diffuser.labels)
    names = [c.lower() for c in classifier.labels]
    missing = [c for c in classes if c.lower() not in names]
    if missing:
        known = ", ".join(classifier.labels[:10])
        raise LbdlError(
            f"--classifier {args.classifier}: has no class {missing[0]!r} of the "
            f"diffusion model (its classes: {known})"
        )
    return classes


def evaluate(args: EvaluateArgs, common: Common) -> Evaluation:
    """Sample --n images (spread evenly over the requested classes), then score them against
    real images on the classifier's features; write metrics.json (with the split) and a grid
    of the samples to --out.

    --split picks the real images with core.evaluation.split_names, reading the model's own
    data like any --data (it trained on all of it, nothing was held out): the test split if
    the data has one, else its val split, else all of it. The built-in scenes' splits are
    `test`, fresh scenes of another seed (the default), and `train`, the scenes trained on."""
    if args.n < 2:
        raise LbdlError(f"--n {args.n}: the statistics need at least 2 images")
    device = common.torch_device()
    folder = output_folder(args.checkpoint, args.out, exist_ok=args.exist_ok)
    diffuser = load(args.checkpoint, device, args)
    classifier = load_classifier(args.classifier, device)
    features = ClassifierFeatures(classifier)
    classes, n = args.classes, args.n
    if diffuser.condition == "class":
        classes = sampled_classes(diffuser, classifier, args)
        n = math.ceil(n / len(classes)) * len(classes)
    real = real_images(diffuser, args, common.seed)
    t0 = time.perf_counter()
    samples = diffuser.sample(
        n, args.prompt, classes, args.steps, args.sampler, args.guidance, seed=common.seed,
        batch_size=args.batch_size, quiet=common.quiet,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    scores = distribution_scores(features, real.batches, samples.images.split(256))
    per_class: dict[str, float] = {}
    if diffuser.condition == "class":
        names = [c.lower() for c in classifier.labels]
        wanted = torch.tensor([names.index(c.lower()) for c in samples.conditions])
        hits = class_accuracy(features, samples.images, wanted)
        for name in classes:  # type: ignore[union-attr]
            chosen = torch.tensor([c == name for c in samples.conditions])
            per_class[name] = float(hits[chosen].mean())
        scores["mean_class_acc"] = float(np.mean(list(per_class.values())))
    shown = Samples(samples.images[:100], samples.conditions[:100])
    save_samples(shown, folder / "samples")
    summary = {"checkpoint": str(args.checkpoint), "classifier": str(args.classifier),
               "real": real.described, "split": real.split, "samples": n,
               "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
               "seed": common.seed, "sampling_seconds": round(seconds, 2), **scores,
               "per_class_acc": per_class}  # fmt: skip
    write_json(folder / "metrics.json", summary)
    return Evaluation(scores, per_class, n, real.count, folder, seconds)
