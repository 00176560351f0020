"""Class-conditional diffusion on Fashion-MNIST with `lbdl diffusion train`: a `lbdl classify`
model judges the samples (its accuracy on the samples of each class, and their mean; goal:
mean >= 85%, the classifier's own test accuracy beside it) and gives the features of the
Fréchet distance and KID to the test set. CPU time of each stage is recorded.

Same code paths as the CLI: `lbdl classify train` for the judge, `lbdl diffusion train` and
`lbdl diffusion evaluate` for the model; DDPM sampling (respaced) with classifier-free
guidance.

    python bench/diffusion_fashion.py --quick --threads 1   # ~2 minutes, a smoke test
    python bench/diffusion_fashion.py --threads 1           # bench/results/diffusion_fashion.json

The sample grid is copied to bench/results/diffusion_fashion_grid.png.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lbdl_apps.classify.cli import EvaluateArgs as ClassifyEvaluateArgs
from lbdl_apps.classify.cli import TrainArgs as ClassifyArgs
from lbdl_apps.classify.task import evaluate as classify_evaluate
from lbdl_apps.classify.task import train as classify_training
from lbdl_apps.core.options import Common
from lbdl_apps.diffusion.cli import EvaluateArgs, TrainArgs
from lbdl_apps.diffusion.evaluate import evaluate
from lbdl_apps.diffusion.task import train

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import RESULTS_DIR, environment, write_result
except ImportError:
    from bench.common import RESULTS_DIR, environment, write_result

NAME = "diffusion_fashion"
REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/fashion-mnist"  # relative to the repository root
GOAL = 0.85  # mean classifier accuracy on the samples


def cpu_seconds() -> float:
    return time.process_time()


def stage(fn, *args: Any) -> tuple[Any, dict[str, float]]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    return result, {
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(cpu_seconds() - cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A smoke test (~2 minutes).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--epochs", type=int, default=2, help="Diffusion training epochs.")
    parser.add_argument("--fraction", type=float, default=1.0, help="Of the training images.")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--samples", type=int, default=500, help="Samples (over 10 classes).")
    parser.add_argument("--steps", type=int, default=25, help="Sampling steps.")
    parser.add_argument("--sampler", default="ddpm", help="ddpm or ddim.")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--classifier", type=Path, help="Use this classify checkpoint.")
    parser.add_argument("--init", help="Continue from this diffusion checkpoint.")
    parser.add_argument("--keep", type=Path, help="Keep the run folders here.")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    data = (
        str((REPO / options.data).resolve())
        if not Path(options.data).is_absolute()
        else options.data
    )
    if not Path(data).is_dir():
        raise SystemExit(f"{data}: not found (Fashion-MNIST idx files)")
    work = options.keep or Path(tempfile.mkdtemp(prefix="diffusion_fashion_"))
    common = Common(threads=options.threads, seed=0, quiet=True)
    quick = options.quick
    record: dict[str, Any] = {"quick": quick, "environment_start": environment()}

    classifier = options.classifier
    if classifier is None:
        judge = ClassifyArgs(
            data=data,
            model="cnn",
            width=16,
            depth=3,
            epochs=1,
            batch_size=128,
            lr=3e-3,
            augment="none",
            fraction=0.05 if quick else 1.0,
            run_dir=work / "classifier",
            exist_ok=True,
        )
        _, record["classifier_time"] = stage(classify_training, judge, common)
        classifier = work / "classifier" / "model.safetensors"
        record["classifier_command"] = (
            f"lbdl classify train --data {options.data} --model cnn "
            "--width 16 --depth 3 --epochs 1 --batch-size 128 "
            "--lr 0.003 --augment none"
        )
    judged = ClassifyEvaluateArgs(
        checkpoint=str(classifier), data=data, split="test", out=work / "classifier_eval"
    )
    record["classifier_test_acc"] = classify_evaluate(judged, common).scores["acc"]

    args = TrainArgs(
        data=data,
        epochs=1 if quick else options.epochs,
        width=options.width,
        blocks=options.blocks,
        batch_size=64,
        lr=2e-3,
        warmup=0.1,
        fraction=0.02 if quick else options.fraction,
        preview=0,
        init=options.init,
        run_dir=work / "diffusion",
        exist_ok=True,
    )
    init = f"--init {options.init} " if options.init else ""
    record["diffusion_command"] = (
        f"lbdl diffusion train --data {options.data} --epochs {args.epochs} --width {args.width} "
        f"--blocks {args.blocks} --batch-size 64 --lr 0.002 --warmup 0.1 --preview 0 "
        f"--fraction {args.fraction} {init}--threads {options.threads}"
    )
    last, record["diffusion_time"] = stage(train, args, common)
    record["final_train_loss"] = last.get("train_loss")
    n = 50 if quick else options.samples
    checkpoint = work / "diffusion" / "model.safetensors"
    evaluation = EvaluateArgs(
        checkpoint=str(checkpoint),
        classifier=str(classifier),
        data=data,
        out=work / "evaluate",
        n=n,
        n_real=200 if quick else 2000,
        steps=options.steps,
        sampler=options.sampler,
        guidance=options.guidance,
    )
    result, record["evaluation_time"] = stage(evaluate, evaluation, common)
    record["evaluate_command"] = (
        f"lbdl diffusion evaluate RUN/model.safetensors --classifier CLASSIFIER --data "
        f"{options.data} --n {n} --n-real {result.real} --steps {options.steps} "
        f"--sampler {options.sampler} "
        f"--guidance {options.guidance}"
    )
    record.update(
        samples=result.samples,
        real_images=result.real,
        sampler=f"{options.sampler}, {options.steps} steps, guidance {options.guidance}",
        per_class_acc={k: round(v, 4) for k, v in result.per_class.items()},
        mean_class_acc=round(result.scores["mean_class_acc"], 4),
        goal_mean_class_acc=GOAL,
        goal_met=result.scores["mean_class_acc"] >= GOAL,
        frechet_distance=round(result.scores["fd"], 4),
        kid=round(result.scores["kid"], 5),
        kid_std=round(result.scores["kid_std"], 5),
        sampling_seconds=round(result.seconds, 1),
        environment_end=environment(),
    )
    for key, value in record.items():
        print(f"{key}: {value}")
    if not quick:
        shutil.copyfile(result.folder / "samples" / "grid.png", RESULTS_DIR / f"{NAME}_grid.png")
        print(f"wrote {write_result(NAME, record)}")
    if options.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
