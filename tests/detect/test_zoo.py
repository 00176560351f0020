"""torchvision's COCO SSDs in lbdl's SSD (issue 26): the converted detectors give
torchvision's boxes, scores and labels after the same post-processing, with random weights;
a torchvision state dict is recognised by its contents; `coco:ssd300` runs end to end from
a file put in $LBDL_HOME/downloads; `train --init` keeps the backbone and extra layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.models.detection import (
    SSD300_VGG16_Weights,
    SSDLite320_MobileNet_V3_Large_Weights,
    ssd300_vgg16,
    ssdlite320_mobilenet_v3_large,
)

from lbdl_apps.core import zoo as core_zoo
from lbdl_apps.core.checkpoint import read_checkpoint
from lbdl_apps.detect import load
from lbdl_apps.detect import zoo as detect_zoo
from lbdl_apps.detect.scenes import SCENE_CLASSES
from tests.cli_helpers import assert_user_error, lbdl
from tests.detect.conftest import scenes, write_voc

BUILDERS = {"ssd300": ssd300_vgg16, "ssdlite": ssdlite320_mobilenet_v3_large}
WEIGHTS = {"ssd300": SSD300_VGG16_Weights.COCO_V1,
           "ssdlite": SSDLite320_MobileNet_V3_Large_Weights.COCO_V1}  # fmt: skip
NAMES = {"ssd300": "coco:ssd300", "ssdlite": "coco:ssdlite320"}
CONF = {"ssd300": 0.3, "ssdlite": 0.3}  # thresholds that keep tens of detections


def torchvision_ssd(kind: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's detector with random weights (weights=None, weights_backbone=None), its
    convolutions He-initialised and its batch norms given statistics, so that the maps
    differ from place to place (its own small initialisation makes them nearly constant,
    and the scores ties); each head's last layer is scaled so that its outputs on a photo
    have a standard deviation of 1.5 (class logits) or 0.5 (box offsets): scores spread
    between 0 and 1, boxes near their default boxes."""
    torch.manual_seed(seed)
    model = BUILDERS[kind](weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        image = torch.from_numpy(PHOTO.copy()).permute(2, 0, 1).float() / 255
        maps = list(model.backbone(model.transform([image])[0].tensors).values())
        heads = model.head.classification_head, model.head.regression_head
        for head, spread in zip(heads, (1.5, 0.5), strict=True):
            for layer, z in zip(head.module_list, maps, strict=True):
                last = layer if isinstance(layer, torch.nn.Conv2d) else layer[-1]
                last.weight.mul_(spread / layer(z).std())
    return model


def photo_array(seed: int = 0, size: tuple[int, int] = (240, 180)) -> np.ndarray:
    """A smooth random RGB picture (H, W, 3), not square: both resize it to their input."""
    rng = np.random.default_rng(seed)
    small = (rng.random((size[1] // 20, size[0] // 20, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


PHOTO = photo_array()


def photo(path: Path, seed: int = 0) -> Path:
    Image.fromarray(photo_array(seed)).save(path)
    return path


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LBDL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def as_lbdl(theirs: dict[str, torch.Tensor], width: int, height: int) -> tuple:
    """torchvision's detections with lbdl's class indices (0 to 79), without those of the
    ten COCO ids nobody uses ("N/A": lbdl folds them into "no object")."""
    categories = detect_zoo.coco_categories()
    names, _ = detect_zoo.head_labels(categories)
    keep = [categories[i] != "N/A" for i in theirs["labels"].tolist()]
    labels = np.array([names.index(categories[i]) for i, k in zip(theirs["labels"].tolist(),
                      keep, strict=True) if k])  # fmt: skip
    scale = np.array([width, height, width, height], np.float32)
    return theirs["boxes"].numpy()[keep] / scale, theirs["scores"].numpy()[keep], labels


@pytest.mark.parametrize("kind", ["ssd300", "ssdlite"])
def test_converted_ssd_gives_torchvisions_detections(kind: str, tmp_path: Path) -> None:
    """The state dict as a local file is recognised, converted and loaded; on a
    240x180 photo, lbdl's preprocessing, network and post-processing (score threshold,
    candidates per class, NMS) give torchvision's boxes (as fractions of the image), scores
    and labels within 1e-4."""
    model = torchvision_ssd(kind)
    if kind == "ssd300":  # the names say nothing: a torch file, and a safetensors one
        torch.save(model.state_dict(), tmp_path / "weights.bin")
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp_path / "weights.bin"))  # fmt: skip
    detector = load(tmp_path / "weights.bin")
    assert detector.meta["postprocessing"]["per_class"] and len(detector.labels) == 80
    image = np.array(Image.open(photo(tmp_path / "photo.png", seed=1)))
    model.score_thresh, model.detections_per_img = CONF[kind], 1000  # no cut after NMS
    with torch.no_grad():
        theirs = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    boxes, scores, labels = detector.detect_arrays([image], CONF[kind], model.nms_thresh, 1000)[0]
    want_boxes, want_scores, want_labels = as_lbdl(theirs, 240, 180)
    assert 20 <= len(labels) < 1000
    assert len(labels) == len(want_labels)
    ours, want = np.lexsort((-scores, labels)), np.lexsort((-want_scores, want_labels))
    assert (labels[ours] == want_labels[want]).all()
    np.testing.assert_allclose(scores[ours], want_scores[want], atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes[ours] / [240, 180, 240, 180], want_boxes[want], atol=1e-4)


@pytest.mark.parametrize("kind", ["ssd300", "ssdlite"])
def test_the_registry_says_what_torchvision_says(kind: str) -> None:
    """URL, file, hash prefix, classes, preprocessing and post-processing as torchvision's
    weights and model have them."""
    entry = core_zoo.find(NAMES[kind], "detect")
    weights = WEIGHTS[kind]
    source = entry.sources[0]
    assert source.url == weights.url and source.url.endswith("/" + source.file)
    assert f"-{source.sha256}." in source.file
    assert entry.task == "detect" and "~/.cache/torch/hub/checkpoints" in entry.look_in
    model = BUILDERS[kind](weights=None, weights_backbone=None)
    pre, post = detect_zoo.PREPROCESSING[kind], detect_zoo.POSTPROCESSING[kind]
    assert (pre["mean"], pre["std"]) == (model.transform.image_mean, model.transform.image_std)
    assert pre["image_size"] == model.transform.fixed_size[0] == model.transform.fixed_size[1]
    assert (post["conf"], post["iou"]) == (model.score_thresh, model.nms_thresh)
    assert (post["max_det"], post["pre_nms"]) == (model.detections_per_img, model.topk_candidates)
    names, labels = detect_zoo.head_labels(weights.meta["categories"])
    assert len(names) == 80 and names[0] == "person" and len(labels) == 91


def test_predict_coco_ssd300_end_to_end(tmp_path: Path, _home: Path) -> None:
    """`lbdl detect predict coco:ssd300 photo.jpg` with torchvision's file (random weights)
    put by hand under its own name: converted once, cached, drawn with COCO's names."""
    (_home / "downloads").mkdir(parents=True)
    torch.save(torchvision_ssd("ssd300").state_dict(),
               _home / "downloads" / "ssd300_vgg16_coco-b556d3b4.pth")  # fmt: skip
    photo(tmp_path / "photo.jpg")
    result = lbdl("detect", "predict", "coco:ssd300", "photo.jpg", "--out", "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "photo.jpg").is_file()
    index = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [c["name"] for c in index["categories"]][:3] == ["person", "bicycle", "car"]
    assert len(index["categories"]) == 80
    found = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert found and all(0 <= row["category_id"] < 80 for row in found)
    cached = _home / "models" / "coco--ssd300.safetensors"
    _, meta = read_checkpoint(cached, "detect")
    assert (meta["source"], meta["license"]) == ("coco:ssd300", "BSD-3-Clause")
    assert meta["config"]["backbone"] == "vgg16" and meta["preprocessing"]["image_size"] == 300


def write_coco_val(root: Path, n: int = 2) -> Path:
    """A tiny COCO instances file with COCO's 80 categories and ids, and n photos."""
    names, labels = detect_zoo.head_labels(detect_zoo.coco_categories())
    ids = [i for i, label in enumerate(labels) if label]
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        photo(root / "images" / f"{i}.jpg", seed=i)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 240, "height": 180})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": ids[i],
                            "bbox": [20, 30, 100, 90], "iscrowd": 0, "area": 9000})  # fmt: skip
    categories = [{"id": ids[k], "name": name} for k, name in enumerate(names)]
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return root


def test_evaluate_coco_ssdlite320_on_coco_data(tmp_path: Path, _home: Path) -> None:
    """The reproduction command of docs/detect.md, on two photos: COCO's categories match
    the model's, mAP is written; without --data it is one line asking for it."""
    (_home / "downloads").mkdir(parents=True)
    torch.save(torchvision_ssd("ssdlite").state_dict(),
               _home / "downloads" / detect_zoo.SSDLITE_FILE)  # fmt: skip
    write_coco_val(tmp_path / "coco")
    result = lbdl("detect", "evaluate", "coco:ssdlite320", "--data", "coco", "--out", "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 2 and "map" in metrics and metrics["split"] == "all"
    assert_user_error(lbdl("detect", "evaluate", "coco:ssdlite320"), "give --data")


def test_train_init_keeps_backbone_and_extras(tmp_path: Path, _home: Path) -> None:
    """`train --init coco:ssdlite320` on a tiny VOC folder: new heads for its 3 classes,
    the layout and preprocessing of the init; the first phase leaves the backbone and extra
    layers (weights and batch-norm statistics) as they were."""
    (_home / "downloads").mkdir(parents=True)
    torch.save(torchvision_ssd("ssdlite").state_dict(),
               _home / "downloads" / detect_zoo.SSDLITE_FILE)  # fmt: skip
    write_voc(tmp_path / "voc", scenes(6, size=96))
    result = lbdl(
        "detect", "train", "--init", "coco:ssdlite320", "--data", "voc", "--epochs", "2",
        "--batch-size", "4", "--run-dir", "run", "--threads", "1", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    init, _ = read_checkpoint(_home / "models" / "coco--ssdlite320.safetensors", "detect")
    frozen = load_file(tmp_path / "run" / "frozen" / "model.safetensors")
    kept = [k for k in init if k.startswith(("backbone.", "extras."))]
    assert kept and all(torch.equal(frozen[k], init[k]) for k in kept)
    detector = load(tmp_path / "run")
    assert detector.labels == list(SCENE_CLASSES) and detector.config.head_labels is None
    assert detector.config.backbone == "mobilenet_v3_large" and detector.image_size == 320
    assert detector.preprocessing.mean == (0.5, 0.5, 0.5)
    assert detector.model.cls_heads[0][1].out_channels == 6 * (len(SCENE_CLASSES) + 1)


@pytest.mark.slow
def test_train_init_coco_ssd300_one_epoch(tmp_path: Path, _home: Path) -> None:
    """The command of the issue, one short epoch: a VGG-16 SSD300 for the data's classes."""
    (_home / "downloads").mkdir(parents=True)
    torch.save(torchvision_ssd("ssd300").state_dict(),
               _home / "downloads" / detect_zoo.SSD300_FILE)  # fmt: skip
    write_voc(tmp_path / "voc", scenes(3, size=64))
    result = lbdl(
        "detect", "train", "--init", "coco:ssd300", "--data", "voc", "--epochs", "1",
        "--batch-size", "2", "--val-fraction", "0.34", "--run-dir", "run", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    detector = load(tmp_path / "run")
    assert detector.config.backbone == "vgg16" and len(detector.labels) == len(SCENE_CLASSES)
    assert detector.preprocessing.resize == "bilinear"
    assert detector.detect(tmp_path / "voc" / "images" / "s0.png", conf=0.0).boxes.ndim == 2


def test_init_refuses_architecture_options(tmp_path: Path) -> None:
    assert_user_error(
        lbdl("detect", "train", "--init", "coco:ssd300", "--backbone", "resnet18"),
        "--init coco:ssd300", "--backbone",
    )  # fmt: skip
    assert_user_error(
        lbdl("detect", "train", "--init", "coco:ssd300", "--image-size", "128"), "--image-size"
    )


def test_a_torch_file_of_another_model_is_not_taken_for_an_ssd(tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "other.pth")
    photo(tmp_path / "p.jpg")
    result = lbdl("detect", "predict", "other.pth", "p.jpg")
    assert_user_error(result, "other.pth")


def test_train_init_from_an_lbdl_checkpoint(tmp_path: Path) -> None:
    """--init takes any detect checkpoint: a run of other classes gives its backbone and
    extra layers to a run on two of them, with new heads."""
    write_voc(tmp_path / "voc", scenes(8, size=48))
    tiny = ["--epochs", "2", "--batch-size", "4", "--threads", "1", "--quiet"]
    first = lbdl("detect", "train", "--data", "voc", "--width", "4", "--image-size", "32",
                 "--run-dir", "first", *tiny)  # fmt: skip
    assert first.exit_code == 0, first.output
    second = lbdl("detect", "train", "--init", "first", "--data", "voc", "--classes",
                  "circle,square", "--skip-bad", "--run-dir", "second", *tiny)  # fmt: skip
    assert second.exit_code == 0, second.output
    start = load_file(tmp_path / "first" / "model.safetensors")
    frozen = load_file(tmp_path / "second" / "frozen" / "model.safetensors")
    assert all(torch.equal(frozen[k], v) for k, v in start.items() if k.startswith("backbone."))
    detector = load(tmp_path / "second")
    assert detector.labels == ["circle", "square"] and detector.image_size == 32
    assert detector.config.width == 4 and detector.meta["init"] == "first"


def test_crowd_regions_are_ignored_as_coco_does(tmp_path: Path) -> None:
    """A COCO iscrowd region is read, never trained on, and a detection that falls on it is
    neither a hit nor a false positive: one object found exactly gives AP 1."""
    from lbdl_apps.detect.formats import read_coco
    from lbdl_apps.detect.metrics import ground_truth, new_metric

    root = write_coco_val(tmp_path / "coco", n=1)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 1,
                                "bbox": [150, 20, 80, 100], "area": 8000})  # fmt: skip
    path.write_text(json.dumps(data))
    record = read_coco(path, None).records[0]
    assert record.labels.tolist() == [0] and record.crowd_labels.tolist() == [0]
    np.testing.assert_allclose(record.crowd_boxes, [[150, 20, 230, 120]])
    scale = torch.tensor([240.0, 180.0] * 2)
    target = {"boxes": torch.tensor([[20.0, 30, 120, 120]]) / scale, "labels": torch.tensor([0]),
              "crowd_boxes": torch.tensor(record.crowd_boxes) / scale,
              "crowd_labels": torch.tensor([0])}  # fmt: skip
    found = {"boxes": torch.tensor([[150.0, 20, 230, 120], [20, 30, 120, 120]]),
             "scores": torch.tensor([0.95, 0.9]), "labels": torch.tensor([0, 0])}  # fmt: skip
    metric = new_metric()
    metric.update([found], [ground_truth(target, scale)])
    assert float(metric.compute()["map_50"]) == pytest.approx(1.0)
