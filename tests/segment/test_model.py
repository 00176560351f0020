"""Segmentation models, loss and metrics: shapes, PSPNet's output stride, loss values by hand,
sliding-window inference, and a short training that beats a constant predictor."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lbdl_apps.core.options import Common
from lbdl_apps.segment.api import load
from lbdl_apps.segment.builtin import make_scenes
from lbdl_apps.segment.cli import TrainArgs
from lbdl_apps.segment.loss import (
    inverse_frequency,
    parse_class_weights,
    segmentation_loss,
    soft_dice_loss,
)
from lbdl_apps.segment.metrics import evaluate_segmenter, scores_from_confusion, sliding_logits
from lbdl_apps.segment.model import build_model, default_config
from lbdl_apps.segment.task import train as run_training


def tiny(name: str, classes: int = 3, channels: int = 3, **overrides: object) -> torch.nn.Module:
    config = default_config(name, classes, channels)
    small = {"width": 8, "depth": 3, "blocks": 1} if "unet" in name else {"width": 16}
    config = replace(config, **small)
    if name == "pspnet":
        config = replace(config, backbone="resnet-small")
    config = replace(config, **overrides)
    torch.manual_seed(0)
    return build_model(config).eval()


@pytest.mark.parametrize("name", ["unet", "unet-res", "pspnet"])
def test_output_is_input_size_with_one_map_per_class(name: str) -> None:
    model = tiny(name, classes=5, channels=1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 48, 64)).shape == (2, 5, 48, 64)


@pytest.mark.parametrize("backbone", ["resnet-small", "resnet18", "resnet50"])
def test_pspnet_dilated_backbone_has_output_stride_8(backbone: str) -> None:
    model = tiny("pspnet", backbone=backbone)
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 64, 96))
    assert features.shape[-2:] == (8, 12)
    for stage, dilation in ((model.backbone.layer3, 2), (model.backbone.layer4, 4)):
        convs = [m for m in stage.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.stride == (1, 1) for c in convs)  # dilated instead of strided
        assert max(c.dilation[0] for c in convs) == dilation


def test_cross_entropy_with_ignore_index_and_weights_by_hand() -> None:
    # 1 image, 2 classes, 1x3 pixels; the middle pixel is ignored
    logits = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 5.0, 1.0]]]])
    target = torch.tensor([[[0, 255, 1]]])
    p0 = math.exp(2) / (math.exp(2) + 1)  # pixel 0, class 0
    p2 = math.exp(1) / (math.exp(1) + math.exp(-1))  # pixel 2, class 1
    plain = (-math.log(p0) - math.log(p2)) / 2
    assert segmentation_loss(logits, target).item() == pytest.approx(plain, rel=1e-6)
    weights = torch.tensor([1.0, 3.0])
    weighted = (-math.log(p0) * 1 - math.log(p2) * 3) / (1 + 3)
    assert segmentation_loss(logits, target, weights).item() == pytest.approx(weighted, rel=1e-6)


def test_soft_dice_by_hand_ignores_ignored_pixels() -> None:
    logits = torch.tensor([[[[0.0, 0.0, 9.0]], [[0.0, 0.0, 0.0]]]])
    target = torch.tensor([[[0, 1, 255]]])
    # probabilities of the two valid pixels: (0.5, 0.5) each; ignored pixel dropped
    # class 0: intersection 0.5, sum p 1.0, sum y 1 -> (2*0.5 + 1) / (1 + 1 + 1) = 2/3
    # class 1: the same -> dice loss = 1 - 2/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 / 3, rel=1e-6)
    ce = math.log(2)
    total = segmentation_loss(logits, target, dice=0.5).item()
    assert total == pytest.approx(ce + 0.5 / 3, rel=1e-6)


def test_perfect_prediction_has_small_dice_loss() -> None:
    target = torch.tensor([[[0, 1], [1, 2]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_class_weights() -> None:
    assert inverse_frequency([30, 10, 0]) == pytest.approx([40 / 90, 40 / 30, 0.0])
    assert parse_class_weights("1,2.5", [5, 5]) == [1.0, 2.5]
    assert parse_class_weights(None, [5, 5]) is None
    with pytest.raises(Exception, match="needs 2"):
        parse_class_weights("1,2,3", [5, 5])


def test_scores_from_confusion() -> None:
    confusion = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 appears nowhere
    scores, iou = scores_from_confusion(confusion)
    assert iou[0] == pytest.approx(8 / 11) and iou[1] == pytest.approx(3 / 6)
    assert math.isnan(iou[2])
    assert scores["miou"] == pytest.approx((8 / 11 + 3 / 6) / 2)
    assert scores["pixel_acc"] == pytest.approx(11 / 14)
    assert scores["constant_miou"] == pytest.approx(10 / 14 / 2)


def test_sliding_window_matches_whole_image_away_from_borders() -> None:
    """A purely local model (receptive field 7 px): tiles overlapping by 16 px give the
    whole-image logits exactly, except within the receptive field of the image border."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 3, 3, padding=1),
    ).eval()
    image = torch.randn(3, 80, 112)
    with torch.no_grad():
        whole = model(image[None])[0]
    tiled = sliding_logits(model, image, torch.device("cpu"), tile=48, multiple=4, overlap=16)
    assert tiled.shape == (3, 80, 112)
    torch.testing.assert_close(tiled[:, 4:-4, 4:-4], whole[:, 4:-4, 4:-4], atol=1e-4, rtol=1e-4)
    # images that fit in one tile are processed whole (padded to the size multiple)
    small = sliding_logits(model, image[:, :30, :30], torch.device("cpu"), 48, 8)
    assert small.shape == (3, 30, 30)


def test_flip_averaging_is_the_mean_of_the_four_flips_and_flip_equivariant() -> None:
    """Test-time augmentation: the logits are the mean over the flipped images (flipped back),
    so the prediction of a flipped image is exactly the flipped prediction."""
    model = tiny("unet", classes=2, channels=1)
    image = torch.randn(1, 40, 48)
    cpu = torch.device("cpu")
    tta = sliding_logits(model, image, cpu, tile=64, multiple=8, flips=True)
    with torch.no_grad():
        views = [[], [-1], [-2], [-2, -1]]
        outs = [model(image[None].flip(d)[:, :, :, :]).flip(d)[0] for d in views]
    plain = sliding_logits(model, image, cpu, tile=64, multiple=8)
    torch.testing.assert_close(plain, outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tta, torch.stack(outs).mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tta, plain, atol=1e-3)
    mirrored = sliding_logits(model, image.flip(-1), cpu, tile=64, multiple=8, flips=True)
    torch.testing.assert_close(mirrored, tta.flip(-1), atol=1e-5, rtol=1e-5)


def test_short_training_beats_a_constant_predictor(tmp_path: Path) -> None:
    """~15 s on one thread; measured here: held-out mIoU ~0.40 vs constant ~0.21."""
    args = TrainArgs(
        width=16,
        depth=3,
        blocks=1,
        epochs=4,
        scenes=200,
        batch_size=8,
        lr=1e-2,
        warmup=0.3,
        run_dir=tmp_path / "run",
    )
    run_training(args, Common(threads=1, quiet=True))
    segmenter = load(tmp_path / "run")
    images, masks = make_scenes(24, 64, seed=999)  # held out: a seed never trained on
    items = [
        (segmenter_input, torch.from_numpy(mask).long())
        for segmenter_input, mask in zip(
            (
                torch.from_numpy((img / 255.0 - 0.5) / 0.25).permute(2, 0, 1).float()
                for img in images
            ),
            masks,
            strict=True,
        )
    ]
    scores, iou, _ = evaluate_segmenter(segmenter.model, items, segmenter.device, 4, 64, 4)
    assert scores["miou"] > scores["constant_miou"] + 0.1, scores
    assert iou[0] > 0.85  # the background is found
    # segment() on an array gives the same masks as the evaluation path
    mask = segmenter.segment(images[0])
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    np.testing.assert_array_equal(
        mask,
        sliding_logits(segmenter.model, items[0][0], segmenter.device, 64, 4).argmax(0).numpy(),
    )
    # a scene twice the training size: the sliding window agrees with whole-image inference
    # away from the tile borders
    big_image, _ = make_scenes(1, 128, seed=5)
    tiled = segmenter.segment(big_image[0])
    whole = segmenter.segment(big_image[0], tile=128)
    assert tiled.shape == (128, 128)
    assert (tiled == whole)[8:-8, 8:-8].mean() > 0.98


def test_pretrained_backbone_weights_from_a_pth_file(tmp_path: Path) -> None:
    """--pretrained FILE.pth loads a torchvision ResNet state dict into PSPNet's backbone."""
    import torchvision

    from lbdl_apps.segment.task import SegmentTask

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = tiny("pspnet", backbone="resnet18")
    args = TrainArgs(model="pspnet", backbone="resnet18", pretrained=str(tmp_path / "r18.pth"))
    SegmentTask().initialize(model, args, None)  # type: ignore[arg-type]  # no data needed
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
