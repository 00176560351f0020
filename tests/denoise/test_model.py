"""denoise/model.py and api.py: shapes, residual learning (an untrained model is the identity),
gray and color, checkpoint round trip, and tiled inference equal to whole-image inference."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lbdl_apps.core.checkpoint import save_checkpoint
from lbdl_apps.core.errors import LbdlError
from lbdl_apps.denoise import load
from lbdl_apps.denoise.model import MODELS, build_model, default_config

SMALL = {"unet": {"width": 8, "depth": 3}, "dncnn": {"width": 8, "depth": 5}}


def small_model(name: str, channels: int, perturb: bool = True) -> torch.nn.Module:
    config = replace(default_config(name, channels), **SMALL[name])
    torch.manual_seed(0)
    model = build_model(config).eval()
    if perturb:  # give the zero-initialised last layer weights, as training would
        last = model.net.out[-1] if name == "unet" else model.net[-1]
        torch.nn.init.normal_(last.weight, std=0.05)
    model.config = config  # type: ignore[assignment]
    return model


def write_checkpoint(path: Path, model: torch.nn.Module, specs=("gaussian:25",)) -> Path:
    meta = {"task": "denoise", "config": asdict(model.config), "degradations": list(specs),
            "data": None, "seed": 0, "val_fraction": 0.1}  # fmt: skip
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_models_keep_the_shape_and_start_as_the_identity(name: str, channels: int) -> None:
    model = small_model(name, channels, perturb=False)
    x = torch.rand(2, channels, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), x)  # zero last layer: residual learning starts at 0
    model = small_model(name, channels)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, x)


def test_default_unet_is_the_books_design() -> None:
    config = default_config("unet", 3)
    assert (config.width, config.depth) == (32, 3)
    model = build_model(config)
    assert model.factor == 4
    assert model.net.down[2].attn is not None  # self-attention at the lowest resolution
    assert model.net.down[0].attn is None
    dncnn = build_model(default_config("dncnn", 1))
    convs = [m for m in dncnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 17


def test_unknown_model_and_bad_depth_are_user_errors() -> None:
    with pytest.raises(LbdlError, match=r"banana.*unet"):
        default_config("banana", 1)
    with pytest.raises(LbdlError, match="--depth 2"):
        build_model(replace(default_config("dncnn", 1), depth=2))


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    model = small_model(name, 3)
    path = write_checkpoint(tmp_path / "m.safetensors", model)
    restorer = load(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(restorer.model(x), model(x), atol=1e-6)
    assert [d.spec for d in restorer.degradations] == ["gaussian:25"]
    image = Image.fromarray((np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8))
    out = restorer.restore(image)
    assert out.size == (53, 37) and out.mode == "RGB"
    (tmp_path / "run").mkdir()
    path.rename(tmp_path / "run" / "model.safetensors")
    assert load(tmp_path / "run").channels == 3  # a run folder works too


def test_gray_model_restores_a_color_file_as_gray(tmp_path: Path) -> None:
    restorer = load(write_checkpoint(tmp_path / "g.safetensors", small_model("dncnn", 1)))
    Image.new("RGB", (20, 12), (200, 10, 10)).save(tmp_path / "red.png")
    out = restorer.restore(tmp_path / "red.png")
    assert out.mode == "L" and out.size == (20, 12)


@pytest.mark.parametrize("name", MODELS)
def test_tiled_equals_whole_image_when_it_fits_one_tile(tmp_path: Path, name: str) -> None:
    restorer = load(write_checkpoint(tmp_path / "m.safetensors", small_model(name, 1)))
    image = torch.rand(1, 64, 96)
    with torch.no_grad():
        whole = restorer.model(image[None])[0].clamp(0, 1)
    tiled = restorer.restore_tensor(image, tile=128, overlap=16)
    assert torch.allclose(tiled, whole, atol=1e-5)
    odd = torch.rand(1, 61, 70)  # not a multiple of the U-Net's factor: padded, then cropped
    assert restorer.restore_tensor(odd, tile=128).shape == odd.shape


def test_tiles_of_a_large_image_match_whole_image_inference(tmp_path: Path) -> None:
    """DnCNN (local receptive field, batch norm in eval mode): blended tiles give the
    whole-image output away from the image borders. (A U-Net's attention and group norm see
    the whole input, so its tiles only approximate it; the single-tile test covers it.)"""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 150, 230), dtype=np.float32))
    restorer = load(write_checkpoint(tmp_path / "d.safetensors", small_model("dncnn", 3)))
    with torch.no_grad():
        whole = restorer.model(image[None])[0].clamp(0, 1)
    tiled = restorer.restore_tensor(image, tile=64, overlap=24)
    assert tiled.shape == image.shape
    inner = (slice(None), slice(16, -16), slice(16, -16))
    assert (tiled - whole)[inner].abs().max() < 1e-4
    assert (whole - image)[inner].abs().mean() > 1e-3  # the model does change the image
