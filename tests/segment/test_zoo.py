"""torchvision's VOC segmentation models by name (issue 26): each converter against
torchvision's own model built with random weights (the same logits within 1e-4, the same
masks), torchvision's preprocessing (short side to 520), the CLI by name with torchvision's
file in $LBDL_HOME/downloads, fine-tuning from a name with a new last layer, the models of
segment/model.py trained from scratch, a local torchvision file recognised by its contents,
and the one-line refusals."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tv
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2

from lbdl_apps.core import zoo
from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.segment import load
from lbdl_apps.segment import zoo as segment_zoo
from lbdl_apps.segment.masks import VOC_CLASSES, voc_palette
from lbdl_apps.segment.model import build_model, default_config, with_backbone
from tests.cli_helpers import assert_user_error, lbdl

BUILDERS = {  # our name -> torchvision's builder, its weights, our converter
    "voc:fcn_resnet50": (tv.fcn_resnet50, tv.FCN_ResNet50_Weights, "convert_fcn"),
    "voc:deeplabv3": (tv.deeplabv3_resnet50, tv.DeepLabV3_ResNet50_Weights, "convert_deeplabv3"),
    "voc:lraspp": (tv.lraspp_mobilenet_v3_large, tv.LRASPP_MobileNet_V3_Large_Weights,
                   "convert_lraspp"),
}  # fmt: skip


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random batch-norm statistics and affine parameters (at 0 / 1 they would hide a wrong
    mapping), and random biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1, generator=generator)
    return model.eval()


def publisher_model(name: str, num_classes: int = 21) -> torch.nn.Module:
    """torchvision's model as its published file holds it (the FCN and DeepLabV3 files have
    their auxiliary classifier)."""
    torch.manual_seed(0)
    aux = {} if name == "voc:lraspp" else {"aux_loss": True}
    builder = BUILDERS[name][0]
    return randomized(builder(weights=None, weights_backbone=None, num_classes=num_classes, **aux))


def publisher_file(name: str, folder: Path) -> Path:
    file = zoo.REGISTRY[name].sources[0].file
    torch.save(publisher_model(name).state_dict(), folder / file)
    return folder / file


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$LBDL_HOME in a tmp folder, no network, and runs written under tmp_path."""
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(zoo.urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "downloads").mkdir(parents=True)
    return tmp_path / "home"


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A smooth random RGB picture (width, height)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def converted(name: str, folder: Path, num_classes: int = 21):
    """(torchvision's model, ours loaded through segment.load from the converted file)."""
    theirs = publisher_model(name, num_classes)
    torch.save(theirs.state_dict(), folder / "weights.pth")
    state, meta = getattr(segment_zoo, BUILDERS[name][2])([folder / "weights.pth"])
    save_checkpoint(folder / "ours.safetensors", state, meta)
    return theirs, load(folder / "ours.safetensors")


def test_the_names_are_torchvisions_files() -> None:
    for name, (_, weights, _) in BUILDERS.items():
        source = zoo.find(name, "segment").sources[0]
        assert source.url == weights.COCO_WITH_VOC_LABELS_V1.url
        assert source.sha256 and source.sha256 in source.file  # torch.hub's sha256 prefix
        categories = weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
        assert categories[1:] == VOC_CLASSES[1:] and categories[0] == "__background__"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_the_converter_gives_torchvisions_logits(name: str, tmp_path: Path) -> None:
    theirs, ours = converted(name, tmp_path)
    images = torch.randn(2, 3, 67, 83, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(images)["out"]
        got = ours.model(images)
    assert (got - expected).abs().max() < 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert ours.labels == VOC_CLASSES and ours.palette == [list(c) for c in voc_palette(21)]
    pre = ours.preprocessing
    assert (pre["resize"], pre["mask_mode"]) == (520, "voc")
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert not any(k.startswith("aux") for k in ours.model.state_dict())  # dropped


def test_torchvisions_preprocessing_then_back_to_the_image(tmp_path: Path, monkeypatch) -> None:
    """The short side resized (here to 40 instead of 520, for time), the whole image through
    the model, the logits resized back to the image: torchvision's SemanticSegmentation
    transform on the same picture, then its model, gives the same logits."""
    monkeypatch.setattr(segment_zoo, "RESIZE", 40)
    theirs, ours = converted("voc:lraspp", tmp_path)
    image = Image.open(photo(tmp_path / "p.png", (75, 61)))
    tensor = v2.functional.to_dtype(v2.functional.pil_to_tensor(image), torch.float32, True)
    transform = tv.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.transforms()
    transform.resize_size = [40]
    with torch.no_grad():
        out = theirs(transform(tensor)[None])["out"]
    expected = F.interpolate(out, size=(61, 75), mode="bilinear", align_corners=False)[0]
    normalized = v2.functional.normalize(tensor, ours.preprocessing["mean"],
                                         ours.preprocessing["std"])  # fmt: skip
    assert (ours.logits(normalized) - expected).abs().max() < 1e-4
    assert transform(tensor).shape[-2:] == (40, 49)  # 40 * 75 / 61, rounded down


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_predict_by_name_end_to_end(name: str, home: Path, tmp_path: Path, monkeypatch) -> None:
    """`lbdl segment predict NAME photo` with torchvision's file in the downloads: the raw
    mask is torchvision's argmax (the photo's short side is RESIZE, here 48 for time)."""
    monkeypatch.setattr(segment_zoo, "RESIZE", 48)
    publisher_file(name, home / "downloads")
    image = photo(tmp_path / "photo.png", (64, 48))
    result = lbdl("segment", "predict", name, image, "--raw", "--out", "out")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_raw.png"))
    transform = BUILDERS[name][1].COCO_WITH_VOC_LABELS_V1.transforms()
    transform.resize_size = [48]
    with torch.no_grad():
        expected = publisher_model(name)(transform(Image.open(image))[None])["out"][0]
    assert np.array_equal(mask, expected.argmax(0).numpy())
    assert (tmp_path / "out" / "photo_overlay.png").is_file()


def test_fine_tuning_from_a_name(home: Path, tmp_path: Path, monkeypatch) -> None:
    """--init keeps every weight but the last layer, new for the data's 2 classes; the
    normalization is the pretrained model's (lr 0: nothing moves)."""
    monkeypatch.setattr(segment_zoo, "RESIZE", 48)
    publisher_file("voc:fcn_resnet50", home / "downloads")
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for i in range(4):
        photo(tmp_path / "data" / "images" / f"{i}.png", (40, 40), seed=i)
        mask = np.zeros((40, 40), np.uint8)
        mask[10 + i : 30, 5:25] = 255
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{i}.png")
    result = lbdl("segment", "train", "--init", "voc:fcn_resnet50", "--data", "data",
                  "--epochs", "1", "--lr", "0", "--batch-size", "3", "--image-size", "32",
                  "--run-dir", "run", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned = load(tmp_path / "run")
    start = load_file(zoo.converted_path(zoo.REGISTRY["voc:fcn_resnet50"]))
    weights = tuned.model.state_dict()
    assert tuned.labels == ["background", "foreground"] and weights["head.4.weight"].shape[0] == 2
    assert all(torch.equal(weights[k], start[k]) for k in start if "conv" in k)
    assert tuned.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert "resize" not in tuned.preprocessing  # trained at the data's own scale
    assert tuned.meta["init"] == "voc:fcn_resnet50"
    assert_user_error(lbdl("segment", "train", "--init", "voc:fcn_resnet50", "--width", "8"),
                      "--width", "not with --init")  # fmt: skip


@pytest.mark.parametrize("name", ["fcn", "deeplabv3", "lraspp"])
def test_the_torchvision_heads_train_from_scratch(name: str) -> None:
    """The heads are models of their own (--model NAME), on any backbone of the list; the
    image-level branch of ASPP takes a batch of one in training."""
    config = with_backbone(default_config(name, 4, 3), "resnet-small")
    model = build_model(config).train()
    loss = model(torch.randn(1, 3, 40, 48)).square().mean()
    loss.backward()
    assert model(torch.randn(2, 3, 40, 48)).shape == (2, 4, 40, 48)


def test_a_local_torchvision_file_is_recognised(tmp_path: Path) -> None:
    """Recognised by its keys and shapes, whatever its name, with its own class count."""
    torch.save(publisher_model("voc:lraspp", num_classes=3).state_dict(), tmp_path / "seg.bin")
    image = photo(tmp_path / "p.png", (40, 30))
    result = lbdl("segment", "predict", "seg.bin", image, "--raw", "--out", "out")
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "out" / "p_raw.png")).max() <= 2


def test_bad_files_are_refused_in_one_line(tmp_path: Path, home: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"backbone.conv1.weight": Payload()}, tmp_path / "evil.pth")
    image = photo(tmp_path / "p.png", (40, 30))
    line = assert_user_error(lbdl("segment", "predict", "evil.pth", image), "evil.pth",
                             "never loads")  # fmt: skip
    assert "weights_only" not in line
    torch.save({"conv1.weight": torch.zeros(3), "fc.weight": torch.zeros(3)}, "resnet.pth")
    assert_user_error(lbdl("segment", "predict", "resnet.pth", image), "resnet.pth",
                      "not a torchvision fcn, deeplabv3 or lraspp")  # fmt: skip
    assert_user_error(
        lbdl("segment", "predict", "voc:deeplabv3", image), "voc:deeplabv3",
        "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth",
        str(home / "downloads"),
    )  # fmt: skip
    torch.save(publisher_model("voc:lraspp").state_dict(),
               home / "downloads" / "fcn_resnet50_coco-1167a1af.pth")  # fmt: skip
    assert_user_error(lbdl("segment", "predict", "voc:fcn_resnet50", image),
                      "not a torchvision fcn", "a torchvision lraspp")  # fmt: skip
    publisher_file("voc:lraspp", home / "downloads")
    assert_user_error(lbdl("segment", "evaluate", "voc:lraspp"), "voc:lraspp", "give --data")
