"""The SSD model (book 6.3): maps down to 1x1, outputs per default box, the pretrained
backbone path with a frozen first phase, and learning on the built-in scenes (export:
test_export.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from lbdl_apps.core.options import Common
from lbdl_apps.detect.api import load
from lbdl_apps.detect.cli import TrainArgs
from lbdl_apps.detect.data import eval_collate, load_detect_data
from lbdl_apps.detect.metrics import evaluate_detector
from lbdl_apps.detect.model import build_model, default_config
from lbdl_apps.detect.task import train as run_training

QUIET = Common(quiet=True, threads=1)


def test_maps_go_down_to_one_and_heads_cover_every_default_box() -> None:
    model = build_model(default_config(3, "resnet-small", 96))
    assert model.feature_sizes == [24, 12, 6, 3, 1]
    offsets, logits = model(torch.zeros(2, 3, 96, 96))
    assert offsets.shape == (2, len(model.priors), 4)
    assert logits.shape == (2, len(model.priors), 4)  # 3 classes + "no object"
    assert len(model.priors) == sum(f * f for f in model.feature_sizes) * 4
    big = build_model(replace(default_config(2, "resnet18", 300), aspect_ratios=[2.0, 3.0]))
    assert big.feature_sizes == [38, 19, 10, 5, 3, 1]  # as SSD300's maps
    assert len(big.priors) == sum(f * f for f in big.feature_sizes) * 6


def test_frozen_backbone_neither_learns_nor_updates_its_statistics() -> None:
    model = build_model(default_config(2, "resnet-small", 64))
    model.freeze_backbone()
    model.train()
    assert not model.backbone.training and model.extras.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    offsets, logits = model(torch.randn(4, 3, 64, 64))
    (offsets.sum() + logits.sum()).backward()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.freeze_backbone(False)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())


def test_pretrained_weights_from_a_file_and_the_frozen_phase(tmp_path: Path) -> None:
    torch.manual_seed(1)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    args = TrainArgs(
        backbone="resnet18",
        pretrained=str(weights),
        image_size=64,
        epochs=2,
        freeze_epochs=1,
        scenes=16,
        batch_size=8,
        run_dir=tmp_path / "run",
    )
    run_training(args, QUIET)
    reference = torchvision.models.resnet18().state_dict()
    reference = torch.load(weights, weights_only=True)
    frozen = load_file(tmp_path / "run" / "frozen" / "last.safetensors")
    for key in ("conv1.weight", "layer4.1.bn2.running_mean", "layer2.0.conv1.weight"):
        assert torch.equal(frozen[f"backbone.{key}"], reference[key]), key
    final = load_file(tmp_path / "run" / "model.safetensors")
    assert not torch.equal(final["backbone.conv1.weight"], reference["conv1.weight"])
    assert (tmp_path / "run" / "frozen" / "metrics.csv").is_file()


def test_short_training_beats_an_untrained_model_on_held_out_scenes(
    scenes_detector: Path,
) -> None:
    data = load_detect_data(None, scenes=256, seed=0)
    held_out = DataLoader(data.val_set(64), batch_size=32, collate_fn=eval_collate)
    device = torch.device("cpu")
    trained = evaluate_detector(load(scenes_detector).model, held_out, device)["map_50"]
    torch.manual_seed(0)
    untrained_model = build_model(load(scenes_detector).meta["config"])
    untrained = evaluate_detector(untrained_model, held_out, device)["map_50"]
    # 64 steps of 16 scenes: far from converged (the benchmark trains longer), yet more than
    # ten times the mAP of the same network untrained
    assert trained > 0.06 and trained > 10 * untrained, (trained, untrained)
