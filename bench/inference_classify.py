"""bench/inference_speed.py's classify case: a ResNet (resnet-small, width 16: the settings
of bench/classify_fashion.py, ~65 s an epoch at 2 threads there) trained two epochs on
../shared/data/fashion-mnist (about 3 minutes; --quick: a tiny CNN, seconds on the built-in
shapes written as class folders), scored by its accuracy on the 10k test images (--quick: the
folders' test split), static int8 calibrated on its own training images (--calibrate),
timed on a batch of 64."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from inference_common import Case, found_or_trained
from PIL import Image

from lbdl_apps.classify.api import load
from lbdl_apps.classify.builtin import make_shapes
from lbdl_apps.classify.cli import EvaluateArgs, TrainArgs
from lbdl_apps.classify.export import deployment
from lbdl_apps.classify.task import evaluate, train
from lbdl_apps.core.options import Common, Inference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
SHARED = {"model": "resnet-small", "width": 16, "batch_size": 128, "lr": 3e-3,
          "augment": "none", "label_smoothing": 0.1, "warmup": 0.3, "epochs": 2}  # fmt: skip
QUICK = {"model": "cnn", "width": 8, "depth": 2, "batch_size": 32, "lr": 3e-3,
         "warmup": 0.2, "epochs": 1}  # fmt: skip
QUICK_IMAGES = {"train": 400, "test": 200}  # built-in shapes of 32 px per split


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)
    shared = DATA.is_dir() and not quick
    data = str(DATA) if shared else str(write_shapes(workdir / "shapes"))

    def train_here(folder: Path) -> Path:
        train(TrainArgs(data=data, run_dir=folder / "run", **(SHARED if shared else QUICK)),
              common)  # type: ignore[arg-type] # fmt: skip
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("classify", checkpoints, train_here, workdir)

    def accuracy(inference: Inference) -> float:
        calibrated = replace(inference, calibrate=data) if inference.quantize else inference
        args = EvaluateArgs(checkpoint=str(checkpoint), data=data, exist_ok=True,
                            out=workdir / "evaluate", **asdict(calibrated))  # fmt: skip
        return evaluate(args, common).scores["acc"]

    return Case(
        "classify", checkpoint,
        "Fashion-MNIST test accuracy" if shared else "built-in shapes test accuracy",
        lambda: deployment(load(checkpoint)), accuracy, batch=64, tolerance=0.01,
        notes={"calibration": data},
    )  # fmt: skip


def write_shapes(root: Path) -> Path:
    """--quick's data: built-in shapes as train/ and test/ class folders (made in a second,
    where the built-in data itself makes 8000 images for each evaluation)."""
    for seed, (split, count) in enumerate(QUICK_IMAGES.items()):
        images, labels, names = make_shapes(count, 32, seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")
    return root
