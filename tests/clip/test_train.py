"""A short training on the built-in scenes learns (book 6.6): the loss falls, retrieval beats
chance, and zero-shot prompts name the color of shapes in color-shape pairs never seen in
training well above chance."""

import json
import math
from pathlib import Path

import torch

from lbdl_apps.clip.cli import TrainArgs
from lbdl_apps.clip.metrics import retrieval_recalls
from lbdl_apps.clip.task import train
from lbdl_apps.core.options import Common


def test_recall_counts_relevant_items() -> None:
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    scores = retrieval_recalls(images, texts, ["a", "b", "c"], ["x", "y", "z"])
    assert abs(scores["i2t_r1"] - 1 / 3) < 1e-6 and scores["i2t_r5"] == 1.0
    same_caption = retrieval_recalls(images, texts, ["a", "b", "c"], ["x", "y", "y"])
    assert same_caption["i2t_r1"] == 1.0  # image 1's best text is a copy of its caption


def test_short_training_zero_shot_beats_chance_on_unseen_pairs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = TrainArgs(model="tiny", patch_size=8, epochs=3, scenes=1500, batch_size=32, lr=2e-3,
                     warmup=0.3,
                     run_dir=tmp_path / "run")  # fmt: skip
    scores = train(args, Common(quiet=True))
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < 0.8 * math.log(32)  # chance: log(batch size)
    assert scores["test_zero_shot_color_acc"] > 0.5  # chance 1/8, on pairs never seen
    assert scores["test_zero_shot_acc"] > 3 / 48  # chance 1/48 over every color-shape pair
    assert scores["test_i2t_r10"] > 0.3 and scores["test_t2i_r10"] > 0.3  # ~10/120 by chance
