"""`lbdl classify`: train, evaluate and predict image classifiers (book 6.2). Each verb's
options are the fields of its dataclass below."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from lbdl_apps.core import options
from lbdl_apps.core.options import Common, option
from lbdl_apps.core.verbs import verb

app = typer.Typer(help="Image classification (book 6.2): ResNet, ViT, MobileNetV3 or a small CNN.")
PER_CLASS_SHOWN = 50  # rows of evaluate's per-class table (all are in metrics.json)


@dataclass(kw_only=True)
class TrainArgs(options.TrainArgs):
    """Everything `lbdl classify train` was asked for; saved as the run's config.json."""

    model: str = "resnet-small"
    """cnn, resnet-small, resnet18, resnet34, resnet50, vit or mobilenet_v3_large."""
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    image_size: int | None = option(None, min=8)
    """Input size (default: the data's own, or 224)."""
    width: int | None = option(None, min=1)
    """Base width (ViT: embedding dim)."""
    depth: int | None = option(None, min=1)
    """Stages (CNN/ResNet) or blocks (ViT)."""
    patch_size: int | None = option(None, min=1)
    """ViT patch size."""
    conv_stem: int | None = option(None, min=0)
    """ViT: channels of two 3x3 convolutions before the patches."""
    pretrained: str | None = None
    """ResNet18/34/50 ImageNet weights: 'DEFAULT' (the model's, imagenet:resnet18 ...), a
    model name or a .pth file."""
    init: str | None = None
    """Fine-tune this model (imagenet:resnet50, a classify checkpoint or a torchvision file):
    all its weights but a new classifier for the data's classes (--model, the input size and
    the normalization are its own)."""
    augment: str = "basic"
    """basic, trivial (TrivialAugment), randaugment or none."""
    mixup: float = option(0.0, min=0.0)
    """MixUp alpha (0: off)."""
    cutmix: float = option(0.0, min=0.0)
    """CutMix alpha (0: off)."""
    label_smoothing: float = option(0.0, min=0.0, max=0.5)
    """Label smoothing of the cross-entropy."""
    fraction: float = option(1.0, min=0.0, max=1.0)
    """Train on this fraction of the training set."""
    download: bool = False
    """Download a named dataset (mnist, fashion-mnist, cifar10) if missing."""
    skip_bad: bool = False
    """Warn about bad images and train on the rest."""


@dataclass(kw_only=True)
class EvaluateArgs(options.Inference, options.EvaluateArgs):
    """The options of `lbdl classify evaluate`."""

    batch_size: int = option(256, min=1)
    """Batch size."""


@dataclass(kw_only=True)
class PredictArgs(options.Inference, options.PredictArgs):
    """The options of `lbdl classify predict`."""

    top_k: int = option(5, min=1)
    """Labels per image."""
    batch_size: int = option(64, min=1)
    """Batch size."""


@verb(app)
def train(args: TrainArgs, common: Common) -> None:
    """Train a classifier on an image folder, idx files, a CSV or the built-in shapes."""
    from lbdl_apps.classify.task import train as run

    run(args, common)


@verb(app)
def evaluate(args: EvaluateArgs, common: Common) -> None:
    """Top-1/top-5 accuracy, per-class precision/recall/F1 and a confusion matrix."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.classify.task import evaluate as run

    result = run(args, common)
    table = Table("class", "precision", "recall", "f1", "support", title="per class")
    for label, row in list(result.per_class.items())[:PER_CLASS_SHOWN]:
        cells = (f"{row[k]:.3f}" for k in ("precision", "recall", "f1"))
        table.add_row(label, *cells, str(row["support"]))
    console = Console(quiet=common.quiet)
    console.print(table)
    if len(result.per_class) > PER_CLASS_SHOWN:
        more = len(result.per_class) - PER_CLASS_SHOWN
        console.print(f"... {more} more classes in {result.folder / 'metrics.json'}")
    print(" ".join(f"{k} {v:.4f}" for k, v in result.scores.items()))
    print(f"results: {result.folder}")


@verb(app)
def predict(args: PredictArgs, common: Common) -> int:
    """Top-k labels of image files; writes predictions.csv and predictions.json."""
    from rich.console import Console
    from rich.table import Table

    from lbdl_apps.classify.api import load
    from lbdl_apps.core.batch import BatchReport
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.outputs import batch_folder

    folder = batch_folder("classify", "predict", args.out, args.exist_ok)
    classifier = load(args.checkpoint, common.torch_device(), args)
    paths = expand_inputs(args.inputs)
    report = BatchReport(strict=args.strict)
    predictions = classifier.predict(paths, args.top_k, args.batch_size, report)
    report.ok(len(predictions))
    write_predictions(predictions, folder)
    table = Table("file", "label", "probability", "runner-up")
    for p in predictions[:50]:
        runner_up = f"{p.labels[1]} {p.probabilities[1]:.3f}" if len(p.labels) > 1 else ""
        table.add_row(Path(p.path).name, p.labels[0], f"{p.probabilities[0]:.3f}", runner_up)
    console = Console(quiet=common.quiet)
    console.print(table)
    if len(predictions) > 50:
        console.print(f"... {len(predictions) - 50} more in {folder / 'predictions.csv'}")
    return report.finish("images", folder)


@verb(app)
def export(args: options.ExportArgs, common: Common) -> None:
    """Export the classifier to ONNX (int8 with --quantize), TorchScript or an
    ExportedProgram, checked against PyTorch, with model.json beside it."""
    from lbdl_apps.classify.api import load
    from lbdl_apps.classify.export import deployment
    from lbdl_apps.core.export import run_export

    run_export(args, lambda checkpoint: deployment(load(checkpoint)))


def write_predictions(predictions: list[Any], folder: Path) -> None:
    """predictions.csv (path, top-1, probability, top-k) and predictions.json, atomically."""
    from lbdl_apps.core.outputs import atomic_path, json_text

    with atomic_path(folder / "predictions.json") as tmp:
        tmp.write_text(json_text([asdict(p) for p in predictions], indent=1))
    with atomic_path(folder / "predictions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "probability", "top_k_labels", "top_k_probabilities"])
        for p in predictions:
            writer.writerow(
                [
                    p.path,
                    p.labels[0],
                    p.probabilities[0],
                    "|".join(p.labels),
                    "|".join(f"{q:.6f}" for q in p.probabilities),
                ]
            )
