"""torchvision's ImageNet classifiers by name (issue 26): each converter against
torchvision's own model built with random weights (the same logits within 1e-4), the CLI by
name with torchvision's file in $LBDL_HOME/downloads, fine-tuning from a name, --pretrained
through the registry, a local torchvision file recognised by its contents, evaluation on
ImageNet-style WordNet-ID folders, and the one-line refusals."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from lbdl_apps.classify import load
from lbdl_apps.classify import zoo as classify_zoo
from lbdl_apps.classify.imagenet import WNIDS
from lbdl_apps.core import zoo
from lbdl_apps.core.backbones.resnet import load_pretrained, resnet18
from lbdl_apps.core.errors import LbdlError
from tests.cli_helpers import assert_user_error, lbdl

WEIGHTS = {  # our name -> torchvision's builder and weights
    "imagenet:resnet18": ("resnet18", torchvision.models.ResNet18_Weights),
    "imagenet:resnet34": ("resnet34", torchvision.models.ResNet34_Weights),
    "imagenet:resnet50": ("resnet50", torchvision.models.ResNet50_Weights),
    "imagenet:vit_b_16": ("vit_b_16", torchvision.models.ViT_B_16_Weights),
    "imagenet:mobilenet_v3_large": (
        "mobilenet_v3_large", torchvision.models.MobileNet_V3_Large_Weights,
    ),
}  # fmt: skip


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """torchvision's model with random weights everywhere, batch-norm statistics and
    affine parameters too (left at their initial 0 / 1 they would hide a wrong mapping)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
        for name, param in model.named_parameters():
            if "bn" not in name and param.dim() == 1:  # biases, LayerNorms, ViT's tokens
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval()


def publisher_model(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    builder = getattr(torchvision.models, WEIGHTS[name][0])
    return randomized(builder(weights=None, **kwargs))


def publisher_file(name: str, folder: Path) -> Path:
    """torchvision's file of `name` as it publishes it: a torch.save'd state dict."""
    file = zoo.REGISTRY[name].sources[0].file
    torch.save(publisher_model(name).state_dict(), folder / file)
    return folder / file


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$LBDL_HOME in a tmp folder, no network, and runs written under tmp_path."""
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # torch's cache: ~/.cache/torch/hub

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(zoo.urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "downloads").mkdir(parents=True)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publisher_file("imagenet:resnet18", tmp_path_factory.mktemp("torchvision"))


def photo(path: Path, size: tuple[int, int] = (256, 256), seed: int = 0) -> Path:
    """A smooth random RGB picture (width, height): 256 x 256 needs no resize before the
    224 crop, so that torchvision's PIL resize and ours cannot differ."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def test_the_names_are_torchvisions_files() -> None:
    for name, (_, weights) in WEIGHTS.items():
        entry = zoo.find(name, "classify")
        source = entry.sources[0]
        assert source.url == weights.IMAGENET1K_V1.url
        assert source.sha256 and source.sha256 in source.file  # torch.hub's sha256 prefix
        assert entry.look_in == ("~/.cache/torch/hub/checkpoints",)
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(WNIDS)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_the_converter_gives_torchvisions_logits(name: str, tmp_path: Path) -> None:
    theirs = publisher_model(name)
    path = tmp_path / "weights.pth"
    torch.save(theirs.state_dict(), path)
    arch = classify_zoo.MODELS[name][0]
    state, meta = getattr(classify_zoo, f"convert_{arch}")([path])
    ckpt = tmp_path / "ours.safetensors"
    from lbdl_apps.core.checkpoint import save_checkpoint

    save_checkpoint(ckpt, state, meta)
    ours = load(ckpt)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(images)
        got = ours.model(images)
    assert (got - expected).abs().max() < 1e-4
    assert ours.labels == WEIGHTS[name][1].IMAGENET1K_V1.meta["categories"]
    pre = ours.preprocessing
    assert (pre["resize"], pre["image_size"], pre["interpolation"]) == (256, 224, "bilinear")
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]


def test_a_file_without_batch_counts_converts(tmp_path: Path) -> None:
    """Files saved before BatchNorm counted its batches lack num_batches_tracked."""
    state = {k: v for k, v in publisher_model("imagenet:resnet18").state_dict().items()
             if not k.endswith("num_batches_tracked")}  # fmt: skip
    torch.save(state, tmp_path / "old.pth")
    ours, _ = classify_zoo.convert_resnet18([tmp_path / "old.pth"])
    assert torch.equal(ours["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


@pytest.mark.parametrize(
    "name", ["imagenet:resnet18", "imagenet:vit_b_16", "imagenet:mobilenet_v3_large"]
)
def test_predict_by_name_end_to_end(name: str, home: Path, tmp_path: Path) -> None:
    publisher_file(name, home / "downloads")
    image = photo(tmp_path / "photo.png")
    result = lbdl("classify", "predict", name, image, "--out", "out", "--top-k", "3")
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    weights = WEIGHTS[name][1].IMAGENET1K_V1
    with torch.no_grad():  # torchvision's own preprocessing and model
        logits = publisher_model(name)(weights.transforms()(Image.open(image))[None])
    top = logits.softmax(1)[0].topk(3)
    assert found["labels"] == [weights.meta["categories"][i] for i in top.indices]
    np.testing.assert_allclose(found["probabilities"], top.values.numpy(), atol=1e-5)
    assert zoo.is_cached(zoo.REGISTRY[name])


def test_a_file_in_torchs_cache_is_used(tmp_path: Path, resnet18_file: Path) -> None:
    hub = tmp_path / "user" / ".cache" / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / resnet18_file.name).symlink_to(resnet18_file)
    result = lbdl("classify", "predict", "imagenet:resnet18", photo(tmp_path / "p.png"),
                  "--out", "out")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_fine_tuning_from_a_name(home: Path, tmp_path: Path, resnet18_file: Path) -> None:
    """--init keeps every weight but the classifier, which is new for the data's classes;
    the input size and normalization are the pretrained model's (lr 0: nothing moves)."""
    (home / "downloads" / resnet18_file.name).symlink_to(resnet18_file)
    for label, seed in (("cats", 1), ("dogs", 2)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            photo(tmp_path / "data" / label / f"{i}.png", (40, 32), seed * 10 + i)
    result = lbdl("classify", "train", "--init", "imagenet:resnet18", "--data", "data",
                  "--epochs", "1", "--lr", "0", "--batch-size", "6", "--run-dir", "run",
                  "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned = load(tmp_path / "run")
    start = load_file(zoo.converted_path(zoo.REGISTRY["imagenet:resnet18"]))
    weights = tuned.model.state_dict()
    assert tuned.labels == ["cats", "dogs"] and weights["fc.weight"].shape == (2, 512)
    assert all(torch.equal(weights[k], start[k]) for k in start if "conv" in k)
    assert tuned.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert tuned.meta["init"] == "imagenet:resnet18"
    assert_user_error(
        lbdl("classify", "train", "--init", "imagenet:resnet18", "--width", "8"),
        "--width",
        "not with --init",
    )


def test_pretrained_resolves_through_the_registry(home: Path, resnet18_file: Path) -> None:
    with pytest.raises(LbdlError, match=r"resnet18-f37072fd\.pth") as error:
        load_pretrained(resnet18(num_classes=3), "DEFAULT", "resnet18")
    assert "download.pytorch.org" in str(error.value)  # offline: where to put it by hand
    (home / "downloads" / resnet18_file.name).symlink_to(resnet18_file)
    for given in ("DEFAULT", "resnet18", "imagenet:resnet18"):
        model = load_pretrained(resnet18(num_classes=3), given, "resnet18")
        expected = torch.load(resnet18_file, weights_only=True)["layer4.1.conv2.weight"]
        assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], expected)
    with pytest.raises(LbdlError, match="--pretrained nope: neither a file"):
        load_pretrained(resnet18(), "nope", "resnet18")


def test_a_local_torchvision_file_is_recognised(tmp_path: Path) -> None:
    """Recognised by its keys and shapes, whatever its name, with its own class count."""
    theirs = publisher_model("imagenet:resnet18", num_classes=7)
    torch.save(theirs.state_dict(), tmp_path / "my weights.bin")
    result = lbdl("classify", "predict", "my weights.bin", photo(tmp_path / "p.png"),
                  "--out", "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    assert set(found["labels"]) <= {f"class{i}" for i in range(7)}


def test_evaluate_on_wordnet_id_folders(home: Path, tmp_path: Path, resnet18_file: Path) -> None:
    """ImageNet's (and Imagenette's) class folders are WordNet IDs, some classes suffice."""
    (home / "downloads" / resnet18_file.name).symlink_to(resnet18_file)
    for index in (0, 7):
        (tmp_path / "val" / WNIDS[index]).mkdir(parents=True)
        for i in range(2):
            photo(tmp_path / "val" / WNIDS[index] / f"{i}.png", seed=index + i)
    result = lbdl("classify", "evaluate", "imagenet:resnet18", "--data", "val", "--out", "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    model = publisher_model("imagenet:resnet18")
    transform = WEIGHTS["imagenet:resnet18"][1].IMAGENET1K_V1.transforms()
    right = 0
    for index in (0, 7):
        for i in range(2):
            image = Image.open(tmp_path / "val" / WNIDS[index] / f"{i}.png")
            with torch.no_grad():
                right += int(model(transform(image)[None]).argmax()) == index
    assert metrics["images"] == 4 and metrics["acc"] == pytest.approx(right / 4)
    assert_user_error(lbdl("classify", "evaluate", "imagenet:resnet18"), "give --data")


def test_bad_files_are_refused_in_one_line(tmp_path: Path, home: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    image = photo(tmp_path / "p.png")
    line = assert_user_error(lbdl("classify", "predict", "evil.pth", image), "evil.pth",
                             "never loads")  # fmt: skip
    assert "weights_only" not in line
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    assert_user_error(lbdl("classify", "predict", "other.pth", image), "other.pth",
                      "not a torchvision", "none of them")  # fmt: skip
    assert_user_error(
        lbdl("classify", "predict", "imagenet:resnet50", image), "imagenet:resnet50",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth", str(home / "downloads"),
    )  # fmt: skip
    torch.save(publisher_model("imagenet:resnet34").state_dict(),
               home / "downloads" / "resnet18-f37072fd.pth")  # fmt: skip
    assert_user_error(lbdl("classify", "predict", "imagenet:resnet18", image),
                      "not a torchvision resnet18", "a torchvision resnet34")  # fmt: skip
