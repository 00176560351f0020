"""classify/model.py and metrics.py: every model name builds and gives logits, configs are
checked, a checkpoint rebuilds the same model, and the loss is the book's cross-entropy."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from lbdl_apps.classify import load
from lbdl_apps.classify.cli import TrainArgs
from lbdl_apps.classify.loss import classification_loss
from lbdl_apps.classify.model import MODELS, ClassifierConfig, build_model, default_config
from lbdl_apps.classify.task import ClassifyTask
from lbdl_apps.core.errors import LbdlError


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_every_model_gives_logits(name: str, channels: int, size: int) -> None:
    config = default_config(name, 7, channels, size)
    assert config.name == name and config.num_classes == 7
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1])  # the output depends on the input


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(LbdlError, match="banana") as error:
        default_config("banana", 10, 3, 32)
    assert "cnn" in str(error.value)  # the message lists the choices
    with pytest.raises(LbdlError, match="banana"):
        build_model(ClassifierConfig("banana", num_classes=10, in_channels=3, image_size=32))


def test_vit_patch_size_must_divide_the_image() -> None:
    config = default_config("vit", 10, 3, 32)
    with pytest.raises(LbdlError, match=r"--patch-size 5.*32"):
        build_model(replace(config, patch_size=5))
    assert build_model(replace(config, patch_size=8))(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_model_options_apply_to_their_models_only() -> None:
    data = SimpleNamespace(labels=list("abcdefghij"), in_channels=1, image_size=28)

    def model_config(args: TrainArgs) -> ClassifierConfig:
        return ClassifyTask().model_config(args, data)

    config = model_config(TrainArgs(model="vit", conv_stem=16, patch_size=7))
    vit = build_model(config)
    assert vit.stem is not None and vit.patch_embed.in_channels == 16
    assert vit(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(LbdlError, match="--conv-stem: not an option of --model cnn"):
        model_config(TrainArgs(model="cnn", conv_stem=16))


@pytest.mark.parametrize("name", ["cnn", "resnet-small", "vit"])
def test_checkpoint_round_trip(make_checkpoint, name: str, tmp_path: Path) -> None:
    extra = {"width": 32, "depth": 2} if name == "vit" else {}
    path, model = make_checkpoint(name, in_channels=1, image_size=16, **extra)
    images = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        expected = model(images)
    classifier = load(path)
    assert classifier.labels == ["circle", "square", "triangle"]
    assert classifier.meta["config"].name == name
    assert not classifier.model.training
    assert torch.allclose(classifier.model(images), expected, atol=1e-6)
    # A run folder is accepted for its model.safetensors.
    run = tmp_path / "run"
    run.mkdir()
    path.rename(run / "model.safetensors")
    assert torch.allclose(load(run).probabilities(images), expected.softmax(1), atol=1e-6)


class FixedLogits(nn.Module):
    """A 'model' that returns the same known logits whatever the input."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits


LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]


def _log_softmax(row: list[float]) -> list[float]:
    total = math.log(sum(math.exp(v) for v in row))
    return [v - total for v in row]


def _cross_entropy(targets: list[list[float]]) -> float:
    """Mean over rows of -sum_k q_k log p_k, by hand."""
    losses = [
        -sum(q * lp for q, lp in zip(target, _log_softmax(row), strict=True))
        for row, target in zip(LOGITS, targets, strict=True)
    ]
    return sum(losses) / len(losses)


def test_classification_loss_is_cross_entropy() -> None:
    model = FixedLogits(LOGITS)
    images = torch.zeros(2, 3, 4, 4)
    loss, metrics = classification_loss(model, (images, torch.tensor([0, 1])))
    # -log p(0 | row 0) and -log p(1 | row 1)
    expected = -(_log_softmax(LOGITS[0])[0] + _log_softmax(LOGITS[1])[1]) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(_cross_entropy([[1, 0, 0], [0, 1, 0]]))
    assert metrics["acc"] == pytest.approx(0.5)  # row 0 right, row 1 predicts class 2


def test_label_smoothing() -> None:
    model = FixedLogits(LOGITS)
    eps, k = 0.2, 3
    loss, _ = classification_loss(
        model, (torch.zeros(2, 1), torch.tensor([0, 1])), label_smoothing=eps
    )
    smoothed = [
        [(1 - eps) * (i == j) + eps / k for j in range(k)] for i in (0, 1)
    ]  # one-hot mixed with the uniform distribution
    assert loss.item() == pytest.approx(_cross_entropy(smoothed), rel=1e-6)
    plain, _ = classification_loss(model, (torch.zeros(2, 1), torch.tensor([0, 1])))
    assert loss.item() != pytest.approx(plain.item())


def test_soft_targets() -> None:
    """MixUp/CutMix targets: rows of probabilities."""
    model = FixedLogits(LOGITS)
    soft = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]
    loss, metrics = classification_loss(model, (torch.zeros(2, 1), torch.tensor(soft)))
    assert loss.item() == pytest.approx(_cross_entropy(soft), rel=1e-6)
    assert metrics["acc"] == pytest.approx(1.0)  # argmax of each target: 0 and 2
