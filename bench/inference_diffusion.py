"""bench/inference_speed.py's diffusion case: a class-conditional U-Net (width 32, one block a
level; bench/diffusion_fashion.py's settings) trained one epoch on a fifth of
../shared/data/fashion-mnist (about 3 minutes at 2 threads), judged by a `lbdl classify` CNN
trained one epoch on a quarter of it: the judge's accuracy on the samples of each class, their
mean, through `lbdl diffusion evaluate` (200 samples, DDPM 20 steps, guidance 3; the Fréchet
distance printed beside it) in each variant (--checkpoints DIR: the newest model under
DIR/diffusion, the judge under DIR/diffusion-judge). --quick: an 8-pixel U-Net on 512 built-in
scenes (a class per color) and a tiny judge, seconds. Static int8 is calibrated on the
model's own training data (its default); timed on a batch of 32 denoiser rows (16 samples
under guidance: conditional rows and null rows)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from inference_common import Case, found_or_trained
from PIL import Image

from lbdl_apps.classify.cli import TrainArgs as ClassifyArgs
from lbdl_apps.classify.task import train as train_classifier
from lbdl_apps.clip.api import make_scenes
from lbdl_apps.core.options import Common, Inference
from lbdl_apps.diffusion.api import load
from lbdl_apps.diffusion.cli import EvaluateArgs, TrainArgs
from lbdl_apps.diffusion.evaluate import evaluate
from lbdl_apps.diffusion.export import deployment
from lbdl_apps.diffusion.task import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
SHARED = {"width": 32, "blocks": 1, "epochs": 1, "batch_size": 64, "lr": 2e-3, "warmup": 0.1,
          "fraction": 0.2}  # fmt: skip
QUICK = {"image_size": 8, "width": 8, "blocks": 1, "timesteps": 50, "builtin_count": 512,
         "epochs": 3, "batch_size": 32, "lr": 3e-3, "scene_label": "color"}  # fmt: skip
JUDGE = {"model": "cnn", "width": 16, "depth": 3, "epochs": 1, "batch_size": 128, "lr": 3e-3,
         "augment": "none", "fraction": 0.25}  # fmt: skip
QUICK_JUDGE = {"model": "cnn", "width": 4, "depth": 1, "epochs": 1, "augment": "none"}
SAMPLING = {"n": 200, "n_real": 1000, "steps": 20, "guidance": 3.0, "batch_size": 100}
QUICK_SAMPLING = {"n": 64, "n_real": 200, "steps": 10, "batch_size": 64}


def case(workdir: Path, quick: bool, checkpoints: Path | None) -> Case:
    common = Common(device="cpu", quiet=True, seed=0)
    shared = DATA.is_dir() and not quick
    data = str(DATA) if shared else None

    def train_here(folder: Path) -> Path:
        train(TrainArgs(data=data, preview=0, run_dir=folder / "run",
                        **(SHARED if shared else QUICK)), common)  # type: ignore[arg-type] # fmt: skip
        return folder / "run" / "model.safetensors"

    def judge_here(folder: Path) -> Path:
        judged = data if shared else str(scene_colors(folder / "colors"))
        train_classifier(ClassifyArgs(data=judged, run_dir=folder / "run",
                                      **(JUDGE if shared else QUICK_JUDGE)), common)  # fmt: skip
        return folder / "run" / "model.safetensors"

    checkpoint = found_or_trained("diffusion", checkpoints, train_here, workdir)
    judge = found_or_trained("diffusion-judge", checkpoints, judge_here, workdir / "judge")
    sampling = SAMPLING if shared else QUICK_SAMPLING

    def accuracy(inference: Inference) -> float:
        args = EvaluateArgs(checkpoint=str(checkpoint), classifier=str(judge), data=data,
                            out=workdir / "evaluate", exist_ok=True, **sampling,
                            **asdict(inference))  # fmt: skip
        scores = evaluate(args, common).scores
        print(f"    Fréchet distance {scores['fd']:.4g}, KID {scores['kid']:.4g}", flush=True)
        return scores["mean_class_acc"]

    return Case(
        "diffusion", checkpoint,
        "Fashion-MNIST class accuracy of samples" if shared else "built-in scenes' color "
        "accuracy of samples (a tiny judge: near chance)",
        lambda: deployment(load(checkpoint)), accuracy, batch=32, tolerance=0.01,
        notes={"judge": str(judge), "sampling": {**sampling, "sampler": "ddpm"}},
    )  # fmt: skip


def scene_colors(root: Path) -> Path:
    """--quick's judge data: 40 built-in scenes of 8 px in a folder per color."""
    scenes = make_scenes(40, 8, seed=3)
    for i, (image, attributes) in enumerate(zip(scenes.images, scenes.attributes, strict=True)):
        folder = root / attributes["color"]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root
