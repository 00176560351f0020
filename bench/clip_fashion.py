"""Fashion-MNIST with `lbdl clip train`: zero-shot accuracy from class-name prompts alone,
and retrieval recall@1, of a CLIP trained on captions made from class names and templates.

The model is trained by the CLI's code path (`lbdl_apps.clip.task.train`) on the 60k training images
(10% held out to pick the best epoch); each image is paired with a caption drawn from five
templates ("a photo of a {label}.", ...). On the 10k test images the classifier is built from
prompts of the class names only (no image label is used): the five templates averaged
(prompt ensembling) and a single template. Goal: zero-shot accuracy >= 85%. CPU time (user +
system, all threads) and wall time are recorded with the thread count and load average.

    python bench/clip_fashion.py --quick              # ~2 minutes: a sliver, 1 epoch
    python bench/clip_fashion.py --threads 1          # writes bench/results/clip_fashion.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lbdl_apps.clip.api import ClipModel, load
from lbdl_apps.clip.cli import TrainArgs
from lbdl_apps.clip.data import (
    CLASS_TEMPLATES,
    FASHION_MNIST_LABELS,
    PairDataset,
    PairSet,
    load_clip_data,
    pair_tokens,
    prompt_tokens,
)
from lbdl_apps.clip.metrics import (
    class_embeddings,
    embed_pairs,
    retrieval_recalls,
    zero_shot_predictions,
)
from lbdl_apps.clip.task import train
from lbdl_apps.core.options import Common

try:  # `python bench/x.py` puts bench/ first on sys.path; `python -m bench.x` does not
    from common import environment, write_result
except ImportError:
    from bench.common import environment, write_result

NAME = "clip_fashion"
REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/fashion-mnist"
GOAL = 0.85
# width 96, depth 3, patch 7 (16 tokens), 16-token context: ~850 pairs/s of CPU time per
# training step on one thread (a width-128, depth-4 model runs ~400 pairs/s)
SETTINGS = {"model": "small", "width": 96, "depth": 3, "patch_size": 7, "context_length": 16,
            "batch_size": 128, "lr": 1.5e-3, "warmup": 1.0}  # fmt: skip
QUICK = {"fraction": 0.01, "val_fraction": 0.02}


def test_scores(clip: ClipModel, pairs: PairSet) -> dict[str, float]:
    """Recall@1 both ways and zero-shot accuracy with three kinds of class-name prompts,
    from one pass over the test images."""
    dataset = PairDataset(pairs, pair_tokens(pairs, clip.tokenizer), clip.preprocessing)
    loader = DataLoader(dataset, batch_size=256)
    images, texts = embed_pairs(clip.model, loader, clip.device)
    recalls = retrieval_recalls(images, texts, pairs.image_keys, pairs.first_captions())
    scores = {"i2t_r1": recalls["i2t_r1"], "t2i_r1": recalls["t2i_r1"]}
    labels = torch.tensor(pairs.labels)
    names = FASHION_MNIST_LABELS
    prompts = {"ensemble": CLASS_TEMPLATES, "single_template": ["a photo of a {}."],
               "bare_class_name": ["{}"]}  # fmt: skip
    for kind, templates in prompts.items():
        tokens = prompt_tokens(clip.tokenizer, names, templates)
        classes = class_embeddings(clip.model, tokens, len(names))
        predicted = zero_shot_predictions(images, classes)
        scores[f"zero_shot_acc_{kind}"] = (predicted == labels).float().mean().item()
    return {k: round(v, 4) for k, v in scores.items()} | {"test_pairs": len(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check that it runs")
    parser.add_argument("--data", default=None, help=f"idx folder (default {DATA})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    data = cli.data or str(REPO / DATA)
    if not Path(data).is_dir():
        parser.error(f"--data {data}: no such folder")
    run_dir = Path(tempfile.mkdtemp(prefix="lbdl-bench-clip-")) / "run"
    epochs = 1 if cli.quick else cli.epochs
    args = TrainArgs(data=data, epochs=epochs, run_dir=run_dir, **SETTINGS,
                     **(QUICK if cli.quick else {}))  # fmt: skip
    common = Common(device="cpu", threads=cli.threads, seed=cli.seed, quiet=True)
    env = environment()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    train(args, common)
    train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    clip = load(run_dir / "model.safetensors")
    scores = test_scores(clip, load_clip_data(data).test)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    result = {
        **scores,
        "goal_zero_shot_acc": GOAL,
        "goal_met": scores["zero_shot_acc_ensemble"] >= GOAL,
        "train_cpu_s": round(train_cpu, 1),
        "train_wall_s": round(train_wall, 1),
        "epochs": epochs,
        "val_zero_shot_acc_per_epoch": [round(r["val_zero_shot_acc"], 4) for r in rows],
        "samples_per_s_per_epoch": [r["samples_per_s"] for r in rows],
        "settings": SETTINGS,
        "quick": cli.quick,
        "loadavg_after": os.getloadavg(),
        **env,
    }
    print(json.dumps(result, indent=1))
    if not cli.quick:
        print(f"wrote {write_result(NAME, result)}")
    shutil.rmtree(run_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
