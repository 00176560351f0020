"""`lbdl classify`: train, evaluate and predict image classifiers (book 6.2)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lbdl_apps.core.cli_common import (
    AmpOption,
    BatchSizeOption,
    Common,
    CompileOption,
    ConfigOption,
    DataOption,
    EmaOption,
    EpochsOption,
    ExistOkOption,
    LrOption,
    NameOption,
    OutOption,
    PatienceOption,
    ResumeOption,
    RunDirOption,
    SavePeriodOption,
    StrictOption,
    ValFractionOption,
    WarmupOption,
    WeightDecayOption,
    WorkersOption,
    from_options,
    verb,
)

app = typer.Typer(help="Image classification (book 6.2): ResNet, ViT or a small CNN.")
TASK = "classify"


@verb(app)
def train(
    data: DataOption = None,
    model: Annotated[
        str, typer.Option(help="cnn, resnet-small, resnet18, resnet34, resnet50 or vit.")
    ] = "resnet-small",
    epochs: EpochsOption = 10,
    batch_size: BatchSizeOption = 128,
    lr: LrOption = 2e-3,
    name: NameOption = None,
    run_dir: RunDirOption = None,
    exist_ok: ExistOkOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    workers: WorkersOption = 0,
    patience: PatienceOption = None,
    image_size: Annotated[
        int | None, typer.Option(min=8, help="Input size (default: the data's own, or 224).")
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="Base width (ViT: embedding dim).")
    ] = None,
    depth: Annotated[
        int | None, typer.Option(min=1, help="Stages (CNN/ResNet) or blocks (ViT).")
    ] = None,
    patch_size: Annotated[int | None, typer.Option(min=1, help="ViT patch size.")] = None,
    conv_stem: Annotated[
        int | None,
        typer.Option(min=0, help="ViT: channels of two 3x3 convolutions before the patches."),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(help="ResNet18/34/50 ImageNet weights: 'DEFAULT' (download) or a .pth file."),
    ] = None,
    augment: Annotated[
        str, typer.Option(help="basic, trivial (TrivialAugment), randaugment or none.")
    ] = "basic",
    mixup: Annotated[float, typer.Option(min=0.0, help="MixUp alpha (0: off).")] = 0.0,
    cutmix: Annotated[float, typer.Option(min=0.0, help="CutMix alpha (0: off).")] = 0.0,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.0,
    weight_decay: WeightDecayOption = 0.05,
    warmup: WarmupOption = 1.0,
    ema: EmaOption = None,
    val_fraction: ValFractionOption = 0.1,
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Train on this fraction of the training set.")
    ] = 1.0,
    amp: AmpOption = True,
    compile: CompileOption = False,
    save_period: SavePeriodOption = None,
    download: Annotated[bool, typer.Option(help="Download a named dataset if missing.")] = False,
    skip_bad: Annotated[
        bool, typer.Option(help="Warn about bad images and train on the rest.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Train a classifier on an image folder, idx files, a CSV or the built-in shapes."""
    from lbdl_apps.classify.train import TrainArgs, run_training

    args = from_options(TrainArgs, locals())
    run_training(args, common)


@verb(app)
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A classify .safetensors file.")],
    data: DataOption = None,
    out: OutOption = None,
    batch_size: BatchSizeOption = 256,
    split: Annotated[str, typer.Option(help="test or val split of the data.")] = "test",
    *,
    common: Common,
) -> None:
    """Top-1/top-5 accuracy, per-class precision/recall/F1 and a confusion matrix."""
    from lbdl_apps.classify.train import run_evaluation

    scores, per_class, labels, folder = run_evaluation(
        checkpoint, data, out, batch_size, split, common
    )
    console = Console(quiet=common.quiet)
    table = Table("class", "precision", "recall", "f1", "support", title="per class")
    for i, label in enumerate(labels):
        table.add_row(
            label,
            f"{per_class['precision'][i]:.3f}",
            f"{per_class['recall'][i]:.3f}",
            f"{per_class['f1'][i]:.3f}",
            str(int(per_class["confusion"][i].sum())),
        )
    console.print(table)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    console.print(f"results: {folder}")


@verb(app)
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A classify .safetensors file.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: OutOption = None,
    top_k: Annotated[int, typer.Option(min=1, help="Labels per image.")] = 5,
    batch_size: BatchSizeOption = 64,
    strict: StrictOption = False,
    *,
    common: Common,
) -> None:
    """Top-k labels of image files; writes predictions.csv and predictions.json."""
    from lbdl_apps.classify.api import load
    from lbdl_apps.core.data import expand_inputs
    from lbdl_apps.core.errors import BatchReport

    classifier = load(checkpoint, common.torch_device())
    paths = expand_inputs(inputs)
    report = BatchReport(strict=strict)
    predictions = classifier.predict(paths, top_k=top_k, batch_size=batch_size, report=report)
    report.ok(len(predictions))
    folder = out or Path("runs") / TASK / "predict"
    folder.mkdir(parents=True, exist_ok=True)
    write_predictions(predictions, folder)
    console = Console(quiet=common.quiet)
    table = Table("file", "label", "probability", "runner-up")
    for p in predictions[:50]:
        runner_up = f"{p.labels[1]} {p.probabilities[1]:.3f}" if len(p.labels) > 1 else ""
        table.add_row(Path(p.path).name, p.labels[0], f"{p.probabilities[0]:.3f}", runner_up)
    console.print(table)
    if len(predictions) > 50:
        console.print(f"... {len(predictions) - 50} more in {folder / 'predictions.csv'}")
    print(f"{report.summary('images')}; results: {folder}")
    raise typer.Exit(report.exit_code)


def write_predictions(predictions: list[Any], folder: Path) -> None:
    """predictions.csv (path, top-1, probability, top-k) and predictions.json, atomically."""
    from lbdl_apps.core.checkpoint import atomic_path

    with atomic_path(folder / "predictions.json") as tmp:
        tmp.write_text(json.dumps([asdict(p) for p in predictions], indent=1))
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
